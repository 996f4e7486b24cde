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
def seeds(tmp_path_factory):
    return fuzz.seed_models(tmp_path_factory.mktemp("fuzz"))


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
