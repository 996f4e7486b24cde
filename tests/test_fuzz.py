"""The fuzzer of benchmarks/fuzz.py in CI (issue 25): 100 mutated real models (the bundled Fashion-MNIST CNN, a
torchvision ResNet and VisionTransformer export; drop or rewire a node, change a dtype, a shape, an attribute,
the op type, the opset, truncate the file), drawn by hypothesis. convert either refuses with one LrpgraphError
line (the CLI's exit 2) or writes a model that passes onnx.checker's full check and runs in onnxruntime; a
converted model corrupted once more is refused by ExplainSession in one line or explained. The benchmark
runs 10,000 cases in worker processes and counts crashes and hangs too (docs/robustness.md)."""

import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402

pytest.importorskip("torchvision")
ACCEPTED = {"refused", "converted", "converted-structural", "source-fails-ort", "explain-refused", "explain-ran"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def seeds(cache):
    return fuzz.seed_models(cache)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(data=st.data())
def test_convert_and_explain_on_mutated_models(seeds, data):
    draw = fuzz.Draw(lambda lo, hi: data.draw(st.integers(lo, hi)))
    name = draw.choice(sorted(seeds))
    model, done = fuzz.mutate(seeds[name], draw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome, converted = fuzz.convert_case(model)
        outcomes = [outcome] + ([fuzz.explain_case(converted, draw)] if converted is not None else [])
    assert set(outcomes) <= ACCEPTED, (name, done, outcomes)


def test_the_benchmark_counts_crashes_and_hangs(cache, seeds, monkeypatch):
    """benchmarks/fuzz.py's supervisor: a worker that dies during a case counts one crash, one silent past the
    limit one hang, and the cases after either still run."""
    monkeypatch.setenv("LRPGRAPH_FUZZ_CRASH", "1")
    monkeypatch.setenv("LRPGRAPH_FUZZ_HANG", "3")
    counts = fuzz.run(5, workers=1, hang_s=8, cache=cache)
    assert counts["crash"] == 1 and counts["hang"] == 1 and sum(counts.values()) == 5, counts


def test_case_7041_batch_taken_from_a_constant_is_refused_in_one_line(seeds):
    """The 10,000-case run's one bad output (docs/robustness.md): the ResNet whose first block's Relu reads a weight
    [128, 64, 1, 1], so the residual Add broadcasts the image's rows against 128; it passed the checker and failed
    in onnxruntime. convert now refuses it, naming the batch the graph fixes."""
    import random

    import lrpgraph
    from lrpgraph.errors import LrpgraphError

    draw = fuzz.Draw(random.Random(7041).randint)
    name = draw.choice(sorted(seeds))
    model, done = fuzz.mutate(seeds[name], draw)
    assert (name, done) == ("resnet", ["rewire"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(LrpgraphError, match="has a symbolic batch, but the graph fixes it to 128") as refused:
            lrpgraph.convert(model)
        assert "\n" not in str(refused.value)
        assert fuzz.run_case(seeds, 7041) == ["refused"]
