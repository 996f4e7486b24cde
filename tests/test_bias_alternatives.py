"""benchmarks/bias_alternatives.py against independent references: RRR's compiled input gradient and its loss
against torch autograd on the plain forward, the segmenter pipeline's ONNX graph against the torch U-Net and the
classifier run on their own, and the shared training loop's data order against the trainer's."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import torch

import lrpgraph
from lrpgraph import datasets, targets
from lrpgraph.metadata import Record

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bias_alternatives as alt  # noqa: E402
from fashion_data import tiny_cnn  # noqa: E402

SIZE = 36


def images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(0, 1, (n, 1, SIZE, SIZE)).astype(np.float32))


def test_rrr_seed_is_the_gradient_of_the_summed_log_probabilities():
    y = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    reference, = torch.autograd.grad(torch.log_softmax(y, 1).sum(), y)
    assert torch.allclose(alt.rrr_seed(y.detach()), reference)


def test_rrr_penalty_uses_the_autograd_input_gradient_and_is_differentiable():
    """The compiled gradient fed with rrr_seed equals d(sum_k log p_k)/dx by autograd on the plain forward, and its
    squared background sum has the weight gradient autograd's double backward gives."""
    from lrpgraph.train import import_onnx

    plain = tiny_cnn(4, 1, SIZE, (8, 16), seed=3)
    explained = lrpgraph.convert(plain, method="gradient", target="seed")
    record = Record.from_model(explained)
    module = import_onnx(explained)
    x, masks = images(), (images(seed=1) > 0.5).float()
    out = module.run({record.image_input: x}, [record.logits, record.relevance_outputs[0]],
                     derived={targets.SEED_INPUT: (record.logits, alt.rrr_seed)})
    mine = ((1 - masks) * out[record.relevance_outputs[0]]).pow(2).sum()
    reference_module = import_onnx(plain)  # the plain graph: no compiled backward pass
    xr = x.clone().requires_grad_(True)
    gradient, = torch.autograd.grad(torch.log_softmax(reference_module.logits(xr), 1).sum(), xr, create_graph=True)
    torch.testing.assert_close(out[record.relevance_outputs[0]], gradient, rtol=1e-4, atol=1e-6)
    reference = ((1 - masks) * gradient).pow(2).sum()
    name = "conv1.weight"
    mine_grad, = torch.autograd.grad(mine, module.tensor(name))
    ref_grad, = torch.autograd.grad(reference, reference_module.tensor(name))
    torch.testing.assert_close(mine_grad, ref_grad, rtol=1e-3, atol=1e-7)


def test_segmenter_pipeline_is_the_gate_then_the_classifier(tmp_path):
    torch.manual_seed(0)
    gate = alt.Gate(alt.UNet(4)).eval()
    classifier = tmp_path / "classifier.onnx"
    onnx.save(tiny_cnn(4, 1, SIZE, (8, 16), seed=1), str(classifier))
    alt.pipeline(gate, classifier, SIZE, tmp_path / "pipeline.onnx")
    x = images(3)
    with torch.no_grad():
        masked = (x * torch.sigmoid(gate.unet(x))).numpy()
    expected = ort.InferenceSession(str(classifier)).run(None, {"x": masked})[0]
    session = ort.InferenceSession(str(tmp_path / "pipeline.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    converted = lrpgraph.convert(onnx.load(str(tmp_path / "pipeline.onnx")), composite="flex", target="top")
    assert Record.from_model(converted).relevance_outputs  # the benchmark explains the whole pipeline


def test_fit_draws_the_trainers_data_order():
    """One permutation per epoch from a torch.Generator seeded by the seed, as lrpgraph.train.loop does."""
    data = datasets.BiasedSet(np.zeros((10, 4, 4), np.uint8), np.zeros((10, 4, 4), np.uint8), np.arange(10) % 2,
                              np.full(10, -1), (0, 1))
    seen = []
    weight = torch.nn.Parameter(torch.zeros(1))

    def step(x, m, y):
        seen.append(y.tolist())
        return (weight * 0).sum()

    args = SimpleNamespace(lr=1e-3, isnet_epochs=2, schedule="cosine", batch_size=4)
    alt.fit(step, [weight], data, args, seed=7)
    order = torch.Generator()
    order.manual_seed(7)
    expected = [(torch.randperm(10, generator=order) % 2).split(4) for _ in range(2)]
    assert seen == [b.tolist() for epoch in expected for b in epoch]

