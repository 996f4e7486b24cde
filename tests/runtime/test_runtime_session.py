import numpy as np
import onnxruntime as ort
import pytest
from conftest import reference_relevance

from lrpgraph.errors import LrpgraphError, NotConvertedError
from lrpgraph.runtime.session import ExplainSession


def images(n, seed=1, shape=(3, 6, 5)):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype(np.float32)


def plain_run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("mode", ["top", "index", "seed", "all"])
def test_outputs_equal_plain_onnxruntime_bit_exactly(make_model, save_model, mode):
    model, _, _ = make_model(mode)
    x = images(7)
    feeds, target = {"x": x}, None
    if mode == "index":
        target = np.array([0, 1, 2, 3, 0, 1, 2])
        feeds["target"] = target
    if mode == "seed":
        target = np.random.default_rng(2).normal(size=(7, 4)).astype(np.float32)
        feeds["relevance_seed"] = target
    want_logits, want_relevance = plain_run(model, feeds)
    session = ExplainSession(save_model(model), provider="cpu")
    logits, relevance = session.explain(x, target)
    assert logits.dtype == np.float32 and relevance.dtype == np.float32
    assert np.array_equal(logits, want_logits) and np.array_equal(relevance, want_relevance)
    chunked = session.explain(x, target, batch_size=3)
    assert np.array_equal(chunked[0], want_logits) and np.array_equal(chunked[1], want_relevance)


def test_session_properties(make_model, save_model):
    labels = ["cat", "dog", "fox", "owl"]
    preprocess = {"resize": 8, "crop": [6, 5]}
    session = ExplainSession(save_model(make_model("index", labels=labels, preprocess=preprocess)[0]), threads=1)
    assert session.providers[0] == "CPUExecutionProvider" and session.device == "cpu"
    assert session.input_shape == (3, 6, 5) and session.num_classes == 4
    assert session.labels == labels and session.preprocess == preprocess
    assert session.config["target"] == "index" and session.target_input == "target"


def test_index_model_without_target_explains_the_predicted_class(make_model):
    model, weight, _ = make_model("index")
    x = images(16, seed=3)
    session = ExplainSession(model, batch_size=5)
    logits, relevance, explained = session.explain(x, return_targets=True)
    predicted = logits.argmax(axis=1)
    assert (predicted == 0).any() and (predicted != 0).any()  # both the kept and the re-run rows are covered
    assert np.array_equal(explained, predicted)
    np.testing.assert_allclose(relevance, reference_relevance(x, weight, predicted), rtol=1e-6, atol=1e-6)


def test_int_and_sequence_targets(make_model):
    model, weight, _ = make_model("index")
    x = images(3)
    session = ExplainSession(model)
    _, relevance, explained = session.explain(x, 2, return_targets=True)
    assert explained.tolist() == [2, 2, 2]
    np.testing.assert_allclose(relevance, reference_relevance(x, weight, [2, 2, 2]), rtol=1e-6, atol=1e-6)
    _, relevance = session.explain(x, [3, 0, 1])
    np.testing.assert_allclose(relevance, reference_relevance(x, weight, [3, 0, 1]), rtol=1e-6, atol=1e-6)


def test_seed_model_with_gradient_composite_takes_class_indices_as_one_hot_seeds(make_model):
    model, weight, _ = make_model("seed", composite="flex")
    x = images(4)
    session = ExplainSession(model)
    _, relevance, explained = session.explain(x, [1, 2, 3, 0], return_targets=True)
    np.testing.assert_allclose(relevance, reference_relevance(x, weight, [1, 2, 3, 0]), rtol=1e-6, atol=1e-6)
    assert explained.tolist() == [1, 2, 3, 0]
    logits, _, explained = session.explain(x, return_targets=True)
    assert np.array_equal(explained, logits.argmax(axis=1))


@pytest.mark.parametrize("target", [None, [1, 2, 3, 0, 2, 1]])
def test_seed_model_with_lrp_composite_seeds_logit_times_one_hot(make_model, target):
    model, _, _ = make_model("seed", composite="epsilon-plus")
    x = images(6, seed=7)
    logits = plain_run(model, {"x": x, "relevance_seed": np.zeros((6, 4), np.float32)})[0]
    classes = logits.argmax(axis=1) if target is None else np.array(target)
    seed = (np.eye(4, dtype=np.float32)[classes] * logits).astype(np.float32)
    want = plain_run(model, {"x": x, "relevance_seed": seed})[1]
    _, relevance, explained = ExplainSession(model, batch_size=4).explain(x, target, return_targets=True)
    assert np.array_equal(explained, classes)
    np.testing.assert_allclose(relevance, want, rtol=1e-5, atol=1e-6)


def test_seed_model_with_probabilities_needs_an_explicit_seed(make_model):
    session = ExplainSession(make_model("seed", probabilities=True)[0])
    with pytest.raises(LrpgraphError, match="pass the seed itself"):
        session.explain(images(2), 1)
    probabilities, _ = session.explain(images(2), np.ones(4, dtype=np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_top_model_reports_the_predicted_class(make_model):
    session = ExplainSession(make_model("top")[0])
    logits, _, explained = session.explain(images(5), return_targets=True)
    assert np.array_equal(explained, logits.argmax(axis=1))


@pytest.mark.parametrize(
    "mode, target, message",
    [
        ("index", 4, "out of range"),
        ("index", -1, "out of range"),
        ("index", [0, 1], "2 class indices for a batch of 3"),
        ("index", 1.5, "integers"),
        ("index", [0.0, 1.0, 2.0], "integers"),
        ("top", 1, "convert it with target 'index'"),
        ("all", 0, "has no target input"),
        ("seed", np.zeros((3, 5), dtype=np.float32), "expected [3, 4]"),
        ("seed", 7, "out of range"),
        ("seed", [0, 1, 4], "out of range"),
    ],
)
def test_target_validation(make_model, mode, target, message):
    session = ExplainSession(make_model(mode)[0])
    with pytest.raises(LrpgraphError, match=message.replace("[", r"\[").replace("]", r"\]")):
        session.explain(images(3), target)


def test_not_converted_model_is_refused(make_model, save_model):
    path = save_model(make_model("top", converted=False)[0], "plain.onnx")
    with pytest.raises(NotConvertedError, match="lrpgraph convert"):
        ExplainSession(path)


def test_missing_or_broken_model_file(tmp_path):
    with pytest.raises(LrpgraphError, match="does not exist"):
        ExplainSession(tmp_path / "nope.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(LrpgraphError, match="cannot load"):
        ExplainSession(broken)


def test_metadata_naming_a_missing_tensor(make_model):
    from lrpgraph import metadata

    model = make_model("top")[0]
    config = metadata.read(model)[metadata.CONFIG]
    metadata.write(model, metadata.CONFIG, dict(config, logits_output="nowhere"))
    with pytest.raises(LrpgraphError, match="'nowhere' as the logits output"):
        ExplainSession(model)


def test_provider_choice(make_model):
    model = make_model("top")[0]
    with pytest.raises(LrpgraphError, match="unknown provider"):
        ExplainSession(model, provider="tpu")
    with pytest.raises(LrpgraphError, match="unknown optimization"):
        ExplainSession(model, optimization="max")
    assert ExplainSession(model, provider="cpu").device == "cpu"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda = ExplainSession(model)  # the default picks CUDA when this onnxruntime has it
        assert cuda.device == "cuda" and cuda.providers[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(LrpgraphError, match="no CUDAExecutionProvider"):
            ExplainSession(model, provider="cuda")
        assert ExplainSession(model).device == "cpu"


CUDA_NO_TF32 = ("CUDAExecutionProvider", {"use_tf32": "0", "device_id": "0"})  # TF32 off unless asked for


@pytest.mark.parametrize("available, provider, expected", [
    (["CPUExecutionProvider"], None, ["CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], None, [CUDA_NO_TF32, "CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu", ["CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", [CUDA_NO_TF32, "CPUExecutionProvider"]),
    (["CPUExecutionProvider"], "cuda", "no CUDAExecutionProvider"),
])
def test_provider_list_for_each_installation(monkeypatch, available, provider, expected):
    """Both branches on every machine: what the session asks onnxruntime for, with and without CUDA."""
    from lrpgraph.runtime import providers, session

    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: list(available))
    if isinstance(expected, str):
        with pytest.raises(LrpgraphError, match=expected):
            session.choose_providers(provider)
    else:
        assert session.choose_providers(provider) == expected


def test_wrong_batch_shape(make_model):
    session = ExplainSession(make_model("top")[0])
    with pytest.raises(LrpgraphError, match=r"expects \[N, 3, 6, 5\]"):
        session.explain(images(2, shape=(3, 5, 5)))
    with pytest.raises(LrpgraphError, match="expects"):
        session.explain(images(2)[0])


def test_empty_batch(make_model):
    logits, relevance = ExplainSession(make_model("index")[0]).explain(np.zeros((0, 3, 6, 5), np.float32), 1)
    assert logits.shape == (0, 4) and relevance.shape == (0, 3, 6, 5)


@pytest.mark.parametrize("mode, target", [("index", None), ("index", [1, 0, 3, 2, 1]), ("seed", None), ("top", None)])
def test_torch_cpu_tensors(make_model, mode, target):
    torch = pytest.importorskip("torch")
    x = images(5, seed=4)
    session = ExplainSession(make_model(mode)[0], batch_size=2)
    want_logits, want_relevance, want_explained = session.explain(x, target, return_targets=True)
    logits, relevance, explained = session.explain(torch.from_numpy(x.astype(np.float64)), target, return_targets=True)
    assert isinstance(logits, torch.Tensor) and isinstance(relevance, torch.Tensor)
    assert np.array_equal(logits.numpy(), want_logits) and np.array_equal(relevance.numpy(), want_relevance)
    assert np.array_equal(explained, want_explained)
    if target is not None:
        _, again = session.explain(torch.from_numpy(x), torch.tensor(target))
        assert np.array_equal(again.numpy(), want_relevance)


def test_class_count_unknown_until_run(make_model):
    torch = pytest.importorskip("torch")
    session = ExplainSession(make_model("index")[0])
    session.num_classes = None  # as for a model whose logits are [N, K] with K symbolic and no labels
    x = images(3)
    logits, relevance = session.explain(x, [0, 3, 1])
    torch_logits, torch_relevance = session.explain(torch.from_numpy(x), [0, 3, 1])  # ORT allocates the logits
    assert np.array_equal(torch_logits.numpy(), logits) and np.array_equal(torch_relevance.numpy(), relevance)
    with pytest.raises(LrpgraphError, match="onnxruntime failed .*out of"):  # ORT's Gather refuses it
        session.explain(x, 4)


def test_runtime_works_without_torch(make_model, save_model, tmp_path):
    import subprocess
    import sys

    path = save_model(make_model("seed")[0])
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import numpy as np\n"
        "from lrpgraph.runtime.session import ExplainSession\n"
        "from lrpgraph.runtime import explain, images, render\n"
        f"s = ExplainSession({str(path)!r})\n"
        "logits, relevance = s.explain(np.ones((2, 3, 6, 5), np.float32), 1)\n"
        "print(relevance.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 3, 6, 5)"
