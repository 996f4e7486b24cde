"""lrpgraph.metrics against direct loop-based numpy transcriptions of the metrics of docs/methods.md (written here,
independently), a sanity check on the pretrained digit CNN, and the `lrpgraph evaluate` command."""

import csv
import io
import math

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from zennit_ref import digit_model, real_digits

import lrpgraph
from lrpgraph import metrics
from lrpgraph.cli import main
from lrpgraph.runtime.evaluate import evaluate

BLACK = (0.0 - 0.1307) / 0.3081


# ---- a small model with a numpy forward ----------------------------------------------------------

def mlp(channels=3, side=10, hidden=16, classes=5, seed=0):
    """(onnx model x [N, C, side, side] -> Flatten -> Gemm -> Relu -> Gemm -> logits, numpy forward)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(channels * side * side, hidden)).astype(np.float32) * 0.3
    b1 = rng.normal(size=hidden).astype(np.float32) * 0.1
    w2 = rng.normal(size=(hidden, classes)).astype(np.float32)
    b2 = rng.normal(size=classes).astype(np.float32) * 0.1
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           ["N", channels, side, side])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                                          (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def forward(image):  # one image [C, H, W] -> logits [classes], float64
        h = np.maximum(image.reshape(-1).astype(np.float64) @ w1 + b1, 0)
        return h @ w2 + b2

    return model, forward


# ---- loop-based references -------------------------------------------------------------------------

def ref_softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def ref_blur(image, size=11, sigma=5.0):
    """Per channel, per output pixel: the kernel-weighted sum over the window, zero outside the image."""
    c, h, w = image.shape
    half = size // 2
    weights = {(dy, dx): math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
               for dy in range(-half, half + 1) for dx in range(-half, half + 1)}
    norm = sum(weights.values())
    out = np.zeros_like(image, dtype=np.float64)
    for k in range(c):
        for y in range(h):
            for x in range(w):
                out[k, y, x] = sum(wt * image[k, y + dy, x + dx] for (dy, dx), wt in weights.items()
                                   if 0 <= y + dy < h and 0 <= x + dx < w) / norm
    return out


def ref_curve(forward, start, finish, relevance, cls, step):
    """RISE's loop: probability now, then move the next `step` pixels (most relevant first) start -> finish."""
    _, h, w = start.shape
    heat = relevance.sum(axis=0)
    ranked = sorted(range(h * w), key=lambda p: (-heat[p // w, p % w], p))
    current = start.astype(np.float64).copy()
    fractions, probabilities = [], []
    done = 0
    while True:
        fractions.append(done / (h * w))
        probabilities.append(ref_softmax(list(forward(current.astype(np.float32))))[cls])
        if done == h * w:
            break
        for p in ranked[done:done + step]:
            current[:, p // w, p % w] = finish[:, p // w, p % w]
        done = min(done + step, h * w)
    area = sum((fractions[i + 1] - fractions[i]) * (probabilities[i] + probabilities[i + 1]) / 2
               for i in range(len(fractions) - 1))
    return fractions, probabilities, area


@pytest.fixture(scope="module")
def small():
    model, forward = mlp()
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 3, 10, 10)).astype(np.float32)
    relevance = rng.normal(size=images.shape).astype(np.float32)
    relevance[0, :, :2, :2] = 0  # ties: the lower flat index goes first
    return model, forward, images, relevance


def test_blur_matches_loops(small):
    _, _, images, _ = small
    np.testing.assert_allclose(metrics.blur(images[:1])[0], ref_blur(images[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step", [None, 7, 100])  # None: round(100 / 100) = 1 pixel; 7 leaves a short last step
@pytest.mark.parametrize("kind", ["deletion", "insertion"])
def test_curves_match_loops(small, kind, step):
    model, forward, images, relevance = small
    classifier = metrics.Classifier(model)
    classes = np.array([0, 3, 4])  # not only the predicted class
    fill = np.array([-1.0, 0.5, 2.0], np.float32).reshape(3, 1, 1)
    if kind == "deletion":
        curves = metrics.deletion(classifier, images, relevance, classes, step=step, fill=fill)
    else:
        curves = metrics.insertion(classifier, images, relevance, classes, step=step)
    for i in range(len(images)):
        if kind == "deletion":
            start, finish = images[i], np.broadcast_to(fill, images[i].shape)
        else:
            start, finish = ref_blur(images[i]), images[i]
        fractions, probabilities, area = ref_curve(forward, start, finish, relevance[i], classes[i], step or 1)
        np.testing.assert_allclose(curves.fractions, fractions, rtol=0, atol=1e-12)
        np.testing.assert_allclose(curves.probabilities[i], probabilities, rtol=1e-4, atol=1e-6)
        assert abs(curves.auc[i] - area) < 1e-5
    assert classifier.calls <= len(images) * 2  # batched: all steps of an image in one or two calls


def test_default_class_is_the_predicted_one(small):
    model, forward, images, relevance = small
    classifier = metrics.Classifier(model)
    curves = metrics.deletion(classifier, images, relevance, step=20)
    predicted = [int(np.argmax(forward(image))) for image in images]
    assert list(curves.classes) == predicted


def test_plain_part_of_a_converted_model(small):
    """Classifier on a converted model runs only the nodes its logits need and gives the same logits."""
    model, forward, images, _ = small
    converted = lrpgraph.convert(model, explain={"lrp": "epsilon", "ig": "ig"}, steps=4)
    plain = metrics.plain_model(converted)
    assert len(plain.graph.node) == len(model.graph.node) and [i.name for i in plain.graph.input] == ["x"]
    logits = metrics.Classifier(converted).logits(images)
    np.testing.assert_allclose(logits, np.stack([forward(im) for im in images]), rtol=1e-5, atol=1e-5)


def test_softmax_output_models_are_tracked_before_the_softmax(small):
    model, forward, images, _ = small
    with_softmax = onnx.ModelProto()
    with_softmax.CopyFrom(model)
    with_softmax.graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    with_softmax.graph.output[0].name = "probabilities"
    probabilities = metrics.Classifier(with_softmax).probabilities(images)
    ref = np.array([ref_softmax(list(forward(im))) for im in images])
    np.testing.assert_allclose(probabilities, ref, rtol=1e-5, atol=1e-7)


# ---- mask metrics and conservation ---------------------------------------------------------------

def test_mask_metrics_and_conservation():
    rng = np.random.default_rng(2)
    relevance = rng.normal(size=(4, 2, 5, 6))
    masks = rng.random((4, 5, 6)) > 0.6
    relevance[1, 0, 3, 4] = 50.0  # a clear peak, inside or outside the mask
    masks[1, 3, 4] = True
    relevance[2, 1, 0, 0] = 50.0
    masks[2, 0, 0] = False
    for i in range(4):
        absolute = outside = 0.0
        for y in range(5):
            for x in range(6):
                a = abs(relevance[i, 0, y, x]) + abs(relevance[i, 1, y, x])
                absolute += a
                outside += a * (0 if masks[i, y, x] else 1)
        assert abs(metrics.background_fraction(relevance, masks)[i] - outside / absolute) < 1e-12
        heat = relevance[i].sum(0)
        y, x = max(((y, x) for y in range(5) for x in range(6)), key=lambda p: heat[p])
        assert metrics.pointing_game(relevance, masks)[i] == masks[i, y, x]
    assert metrics.pointing_game(relevance, masks)[1] and not metrics.pointing_game(relevance, masks)[2]
    seeds = np.array([2.0, -1.0, 0.5, 3.0])
    expected = [abs(relevance[i].sum() - seeds[i]) / abs(seeds[i]) for i in range(4)]
    np.testing.assert_allclose(metrics.conservation_error(relevance, seeds), expected, rtol=1e-12)
    assert np.isnan(metrics.background_fraction(np.zeros((1, 1, 5, 6)), masks[:1]))[0]


# ---- the pretrained digit model: a real heatmap beats a random one -------------------------------

def export_onnx(model, x):
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def digit_onnx():
    x, _ = real_digits(2)
    return export_onnx(digit_model(), x)


def test_deletion_prefers_the_real_heatmap(digit_onnx):
    x, _ = real_digits(32)
    converted = lrpgraph.convert(digit_onnx, composite="epsilon-plus")
    session = onnx_session(converted)
    _, relevance = session.run(["logits", "relevance"], {"x": x.numpy()})
    classifier = metrics.Classifier(converted)
    noise = np.random.default_rng(0).normal(size=relevance.shape)
    real = metrics.deletion(classifier, x.numpy(), relevance, fill=BLACK, step=16)
    random = metrics.deletion(classifier, x.numpy(), noise, fill=BLACK, step=16)
    print(f"deletion AUC: epsilon-plus {real.auc.mean():.3f}, random {random.auc.mean():.3f}")
    assert real.auc.mean() < random.auc.mean() - 0.2
    assert (real.auc < random.auc).mean() > 0.8
    inserted = metrics.insertion(classifier, x.numpy(), relevance, step=16)
    inserted_random = metrics.insertion(classifier, x.numpy(), noise, step=16)
    print(f"insertion AUC: epsilon-plus {inserted.auc.mean():.3f}, random {inserted_random.auc.mean():.3f}")
    assert inserted.auc.mean() > inserted_random.auc.mean()


def onnx_session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# ---- lrpgraph evaluate ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluation_data(tmp_path_factory, digit_onnx):
    """A converted digit model with two heatmaps, 5 digit PNGs (one in a subfolder) and their masks."""
    root = tmp_path_factory.mktemp("evaluate")
    converted = lrpgraph.convert(digit_onnx, explain={"lrp": "epsilon-plus", "grad": "gradient"},
                                 preprocess={"mode": "L", "mean": [0.1307], "std": [0.3081]})
    model = root / "digits.lrp.onnx"
    onnx.save(converted, model)
    x, _ = real_digits(5)
    pixels = np.clip(np.rint((x.numpy()[:, 0] * 0.3081 + 0.1307) * 255), 0, 255).astype(np.uint8)
    for i, image in enumerate(pixels):
        folder = "images/sub" if i == 4 else "images"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder.replace("images", "masks")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / folder / f"digit{i}.png")
        Image.fromarray(((image > 40) * 255).astype(np.uint8)).save(root / folder.replace("images", "masks")
                                                                      / f"digit{i}.png")
    return root, model


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_evaluate_command(evaluation_data, tmp_path):
    root, model = evaluation_data
    out = tmp_path / "eval"
    code, output = run_cli("evaluate", model, root / "images", "--masks", root / "masks", "--metrics",
                           "deletion,insertion,background,pointing,conservation", "--out", out, "--step", "16")
    assert code == 0, output
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("| output"))
    for name in ("deletion_auc", "insertion_auc", "background_fraction", "pointing_hit", "conservation_error"):
        assert name in header
    assert any(line.startswith("| relevance_lrp |") for line in lines)
    assert any(line.startswith("| relevance_grad |") for line in lines)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and {r["output"] for r in rows} == {"relevance_lrp", "relevance_grad"}
    assert {r["conservation_error"] for r in rows if r["output"] == "relevance_grad"} == {"nan"}
    assert all(0 <= float(r["background_fraction"]) <= 1 for r in rows)
    plots = sorted(p.relative_to(out / "curves").as_posix() for p in (out / "curves").rglob("*.png"))
    assert plots == [f"digit{i}.curves.png" for i in range(4)] + ["sub/digit4.curves.png"]
    # the table's means are the CSV's
    lrp = [r for r in rows if r["output"] == "relevance_lrp"]
    mean = np.mean([float(r["deletion_auc"]) for r in lrp])
    row = next(line for line in lines if line.startswith("| relevance_lrp |")).split("|")
    assert abs(float(row[header.split("|").index(" deletion_auc ")]) - mean) < 1e-4


def test_evaluate_matches_the_library(evaluation_data, tmp_path):
    """The command's deletion AUC per image is the library's on the same (loaded) images and heatmaps."""
    root, model = evaluation_data
    result = evaluate(model, [root / "images" / "digit0.png"], metrics=["deletion"], step=16, out_dir=tmp_path,
                      plots=False)
    pixels = np.asarray(Image.open(root / "images" / "digit0.png"), dtype=np.float32)
    x = ((pixels / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081))[None, None]
    session = onnx_session(onnx.load(model))
    _, relevance = session.run(["logits", "relevance_lrp"], {"x": x})
    direct = metrics.deletion(metrics.Classifier(str(model)), x, relevance, step=16, fill=BLACK)
    row = next(r for r in result["rows"] if r["output"] == "relevance_lrp")
    assert abs(row["deletion_auc"] - direct.auc[0]) < 1e-6


@pytest.mark.parametrize("args, needle", [
    (["--metrics", "deletion,bogus"], "unknown metric bogus"),
    (["--metrics", "background"], "need --masks"),
    (["--metrics", "pointing", "--masks", "nowhere"], "not a folder"),
    (["--step", "0"], "step must be a positive"),
    (["--fill", "grey"], "'black' or a number"),
])
def test_evaluate_bad_arguments(evaluation_data, tmp_path, args, needle):
    root, model = evaluation_data
    code, output = run_cli("evaluate", model, root / "images", "--out", tmp_path / "e", *args)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lrpgraph: error:") and needle in lines[0], output


def test_evaluate_needs_a_converted_model_and_masks(evaluation_data, digit_onnx, tmp_path):
    root, _ = evaluation_data
    plain = tmp_path / "plain.onnx"
    onnx.save(digit_onnx, plain)
    code, output = run_cli("evaluate", plain, root / "images", "--out", tmp_path / "e")
    assert code == 2 and "converted" in output and len(output.strip().splitlines()) == 1, output
    masks = tmp_path / "few_masks"
    masks.mkdir()
    code, output = run_cli("evaluate", evaluation_data[1], root / "images", "--metrics", "pointing", "--masks", masks,
                           "--out", tmp_path / "e")
    assert code == 2 and "no mask for digit0.png" in output, output
