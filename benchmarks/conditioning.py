"""Float32 conditioning: the cases the test suite leaves out because float32 itself cannot meet a fixed bound.

Two families, each compared with a float64 reference computed by an independent implementation:
  relevance  the epsilon rule at eps = 1e-6 on every layer of a deep random net (vgg16_bn, densenet121), and
             densenet121's signed average pooling under the norm rule at stabilizer 1e-6:
             lrpgraph (onnxruntime, float32) and zennit in float32, each against zennit in float64;
  gradient   IG on vgg16_bn (narrow head) at 32 x 32 for a few inputs and the gradient of the unmodified
             vgg16_bn at 224 x 224: lrpgraph (float32) and torch autograd in float32, each against torch
             autograd in float64. ReLU kinks and max-pooling
             near-ties decided differently by float32 rounding move the gradient of whole receptive fields.
If lrpgraph's error is of the size of the other float32 implementation's, the difference is rounding, not a
rule error (a wrong rule gives 1e-2 and more). Each row prints both numbers.

    python benchmarks/conditioning.py                       # both families (a few minutes on 2 cores)
    python benchmarks/conditioning.py --family relevance --side 64
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared references (zennit_ref)

import lrpgraph  # noqa: E402
from zennit_ref import (convert_bytes, export, l1, run_onnx, torchvision_model, vgg16_bn_small_head,  # noqa: E402
                        zennit_composite, zennit_relevance)


RELEVANCE_CASES = [("vgg16_bn", "epsilon", 1e-6), ("densenet121", "epsilon", 1e-6), ("densenet121", "epsilon", 0.01),
                   ("densenet121", "epsilon-plus", 1e-6)]


def relevance_rows(side):
    for name, composite, eps in RELEVANCE_CASES:
        model, canonizers = vgg16_bn_small_head() if name == "vgg16_bn" else torchvision_model(name)
        x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
        converted = convert_bytes(export(model, x), composite=composite, epsilon=eps, stabilizer=eps)
        y, ours = run_onnx(converted, x.numpy())
        refs = [zennit_relevance(model, x, zennit_composite(composite, eps, eps, canonizers=canonizers),
                                 dtype=dtype)[1] for dtype in (torch.float32, torch.float64)]
        yield f"{name} {side} px, {composite} eps {eps:g}", l1(ours, refs[1]), l1(refs[0], refs[1])


def class_gradient(model, points, classes):
    points = points.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(points)[torch.arange(len(points)), classes].sum(), points)
    return grad


def integrated(model, x, classes, steps):
    """IG with zero baseline, Riemann right sum: x * mean_k grad(k/steps x)."""
    grads = [class_gradient(model, (k / steps) * x, classes) for k in range(1, steps + 1)]
    return (x * torch.stack(grads).mean(0)).numpy()


def gradient_rows():
    for seed in range(1, 5):  # vgg16_bn with a narrow head at 32 px, IG (3 steps), as tests/test_methods.py would
        model = vgg16_bn_small_head()[0]
        model64 = copy.deepcopy(model).double()
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        classes = model64(x.double()).argmax(1)
        converted = lrpgraph.convert(export(model, x), method="ig", steps=3, quadrature="riemann")
        exact = integrated(model64, x.double(), classes, 3)
        yield f"vgg16_bn 32 px (narrow head), IG 3 steps, input seed {seed}", \
            l1(run_outputs(converted, x)["relevance"], exact), l1(integrated(model, x, classes, 3), exact)
    model, _ = torchvision_model("vgg16_bn")
    model64 = copy.deepcopy(model).double()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    classes = model64(x.double()).argmax(1)
    converted = lrpgraph.convert(export(model, x), explain={"g": "gradient"})
    exact = class_gradient(model64, x.double(), classes).numpy()
    yield "vgg16_bn 224 px, gradient", l1(run_outputs(converted, x)["relevance_g"], exact), \
        l1(class_gradient(model, x, classes).numpy(), exact)


def run_outputs(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["relevance", "gradient", "both"], default="both")
    parser.add_argument("--side", type=int, default=64, help="image side for the relevance family")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    if args.family in ("relevance", "both"):
        rows += relevance_rows(args.side)
    if args.family in ("gradient", "both"):
        rows += gradient_rows()
    print("| case | lrpgraph float32 vs float64 (L1) | reference float32 vs float64 (L1) |")
    print("| --- | --- | --- |")
    for what, ours, theirs in rows:
        print(f"| {what} | {ours:.2e} | {theirs:.2e} |")


if __name__ == "__main__":
    main()
