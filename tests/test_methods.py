"""Acceptance of the gradient-family explainers (docs/rules.md, Gradient-family methods) against torch autograd.

Models: torchvision resnet18 with random weights (torchvision_model, BatchNorm statistics randomised, so
folding matters) at 32 x 32, batch 2; the pretrained digit CNN (ReLU + MaxPool) and a small smooth net
(Tanh, Sigmoid) where smoothness matters. vgg16_bn (narrow head) checks that several explanations in one
model equal separate conversions. Its gradient against float64 is not a test: over 13 ReLU layers and 5
max poolings, float32 rounding decides a ReLU kink or a pooling near-tie differently in about one
gradient in ten (torch float32 against float64 alike), moving a whole receptive field's gradient (L1
~3e-3); `python benchmarks/conditioning.py --family gradient` measures it.

References are float64 torch computations written here: autograd gradients at the path points /
noisy points, the Riemann or Gauss-Legendre sums (nodes from scipy), a zero-padded Gaussian blur, and
guided gradients from backward pre-hooks on every ReLU and MaxPool2d that clamp the incoming gradient
at zero. Heatmaps are compared by L1 relative error sum|R - R_ref| / sum|R_ref|.
"""

import copy
import functools
import io

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from scipy.special import roots_legendre
from zennit_ref import (digit_model, export, l1, real_digits, torchvision_model, vgg16_bn_small_head, zennit_composite,
                        zennit_relevance)

import lrpgraph
from lrpgraph.cli import main
from lrpgraph.methods.smooth import noise

TOLERANCE = 1e-5
SIDE = 32
STEPS = 3  # few steps keep the tests fast (parity holds step by step); chunk 2 leaves a remainder chunk
BLACK = (0.0 - 0.1307) / 0.3081  # a black pixel of the digit model's normalised input
RESNET_IG = [  # every pair of (quadrature, baseline, chunk) values appears at least once
    ("riemann", "zero", None), ("riemann", "blur", 2), ("riemann", "input", None),
    ("gauss-legendre", "zero", 2), ("gauss-legendre", "blur", None), ("gauss-legendre", "input", 2),
]
IG_CASES = [("resnet18",) + c for c in RESNET_IG]
GUIDED_CASES = [("resnet18", "riemann", None), ("resnet18", "gauss-legendre", 2)]


# ---- models --------------------------------------------------------------------------------------

def export_onnx(model, x):
    """ONNX bytes with a dynamic batch: the TorchScript exporter (seconds), else zennit_ref.export (dynamo)."""
    buffer = io.BytesIO()
    try:
        torch.onnx.export(model.eval(), (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17)
    except Exception:  # the legacy exporter may be gone in a later torch
        return export(model, x)
    return buffer.getvalue()


def smooth_net():
    torch.manual_seed(2)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                               torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.Sigmoid(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 5)).eval()


class Case:
    """A torch model, its float64 twin, an input batch and the ONNX export; converted models are cached."""

    def __init__(self, name, model, x):
        self.name, self.model, self.x = name, model.eval(), x
        self.model64 = copy.deepcopy(model).double().eval()
        self.onnx = onnx.load_from_string(export_onnx(model, x))
        self._runs = {}

    def run(self, feeds=None, **options):
        """{output name: array} of the converted model (options of lrpgraph.convert) on self.x."""
        key = repr(sorted(options.items()))
        if key not in self._runs:
            self._runs[key] = lrpgraph.convert(self.onnx, **options).SerializeToString()
        session = ort.InferenceSession(self._runs[key], providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        inputs = {"x": self.x.numpy(), **(feeds or {})}
        return dict(zip(names, session.run(None, inputs)))

    def classes(self):
        with torch.no_grad():
            return self.model64(self.x.double()).argmax(1)


@functools.cache
def torchvision_case(name):
    """resnet18 or vgg16_bn (narrow head) with random weights, x: 2 x 3 x 32 x 32 in [0, 1]."""
    model = torchvision_model(name)[0] if name == "resnet18" else vgg16_bn_small_head()[0]
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    return Case(name, model, x)


@pytest.fixture(scope="module")
def digits():
    x, _ = real_digits(4)
    return Case("digits", digit_model(), x)


# ---- torch references (float64) ------------------------------------------------------------------

def class_gradient(model, points, classes):
    """d y_c / d x at each point (a batch [M, ...]) for classes [M]."""
    points = points.detach().clone().requires_grad_(True)
    y = model(points)
    (grad,) = torch.autograd.grad(y[torch.arange(len(points)), classes].sum(), points)
    return grad


def gradients_at(model, points, classes):
    """Gradients at points [m, N, ...] for classes [N], as [m, N, ...]."""
    m, n = points.shape[:2]
    flat = points.reshape(m * n, *points.shape[2:])
    return class_gradient(model, flat, classes.repeat(m)).reshape(points.shape)


def nodes(steps, rule):
    if rule == "riemann":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    t, w = roots_legendre(steps)
    return (t + 1) / 2, w / 2


def torch_blur(x, size=11, sigma=5.0):
    t = torch.arange(size, dtype=x.dtype) - size // 2
    g = torch.exp(-t**2 / (2 * sigma**2))
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    channels = x.shape[1]
    return torch.nn.functional.conv2d(x, kernel.expand(channels, 1, size, size), padding=size // 2, groups=channels)


def torch_ig(model, x, baseline, steps, rule, classes):
    a, w = nodes(steps, rule)
    a = torch.tensor(a, dtype=x.dtype).reshape(-1, *[1] * x.dim())
    w = torch.tensor(w, dtype=x.dtype).reshape(-1, *[1] * x.dim())
    grads = gradients_at(model, baseline + a * (x - baseline), classes)
    return ((x - baseline) * (w * grads).sum(0)).numpy()


class guided:
    """Guided non-linearity by hooks: every ReLU and MaxPool2d sees max(g_out, 0) as its output gradient, so
    ReLU passes 1[x > 0] max(g, 0) and MaxPool routes only positive output gradients to the arg-max."""

    def __init__(self, model):
        self.model, self.handles = model, []

    def __enter__(self):
        for module in self.model.modules():
            if isinstance(module, (torch.nn.ReLU, torch.nn.MaxPool2d)):
                if isinstance(module, torch.nn.ReLU):
                    module.inplace = False  # backward hooks need out-of-place outputs
                self.handles.append(module.register_full_backward_pre_hook(
                    lambda mod, grad_out: (grad_out[0].clamp(min=0),)))
        return self.model

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def baselines(case, kind):
    """(float64 torch baseline, feeds for the converted model)."""
    x = case.x.double()
    if kind == "zero":
        return torch.zeros_like(x), {}
    if kind == "blur":
        return torch_blur(x), {}
    b = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.5
    return b, {"baseline": b.float().numpy()}


# ---- gradient, input x gradient, IG, guided IG ---------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18"])
def test_gradient_and_input_x_gradient(arch):
    case = torchvision_case(arch)
    grad = class_gradient(case.model64, case.x.double(), case.classes()).numpy()
    out = case.run(explain={"g": "gradient", "ixg": "input-x-gradient"})
    assert l1(out["relevance_g"], grad) < TOLERANCE
    assert l1(out["relevance_ixg"], grad * case.x.numpy()) < TOLERANCE


@pytest.mark.parametrize("arch, rule, baseline, chunk", IG_CASES)
def test_integrated_gradients(arch, rule, baseline, chunk):
    case = torchvision_case(arch)
    base, feeds = baselines(case, baseline)
    ref = torch_ig(case.model64, case.x.double(), base, STEPS, rule, case.classes())
    out = case.run(feeds, method="ig", steps=STEPS, quadrature=rule, baseline=baseline, chunk=chunk)
    error = l1(out["relevance"], ref)
    print(f"{arch} IG {rule} {baseline} chunk {chunk}: L1 {error:.2e}")
    assert error < TOLERANCE


@pytest.mark.parametrize("arch, rule, chunk", GUIDED_CASES)
def test_guided_integrated_gradients(arch, rule, chunk):
    case = torchvision_case(arch)
    x = case.x.double()
    with guided(case.model64) as model:
        ref = torch_ig(model, x, torch.zeros_like(x), STEPS, rule, case.classes())
    out = case.run(method="guided-ig", steps=STEPS, quadrature=rule, chunk=chunk)
    error = l1(out["relevance"], ref)
    print(f"{arch} guided IG {rule} chunk {chunk}: L1 {error:.2e}")
    assert error < TOLERANCE
    plain = case.run(method="ig", steps=STEPS, quadrature=rule, baseline="zero", chunk=chunk)["relevance"]
    assert l1(plain, ref) > 0.1  # the guided non-linearity changes the heatmap


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn"])
def test_several_explanations_in_one_model(arch):
    """explain={"lrp": ..., "gig": ...} gives the same heatmaps as two separate conversions."""
    case = torchvision_case(arch)
    both = case.run(explain={"lrp": "epsilon-plus", "gig": "guided-ig"}, steps=STEPS)
    lrp = case.run(composite="epsilon-plus")
    gig = case.run(method="guided-ig", steps=STEPS, quadrature="riemann", chunk=None)
    np.testing.assert_allclose(both["logits"], lrp["logits"], rtol=1e-6, atol=1e-6)
    assert l1(both["relevance_lrp"], lrp["relevance"]) < 1e-6
    assert l1(both["relevance_gig"], gig["relevance"]) < 1e-6


# ---- IG completeness: sum of attributions = f_c(x) - f_c(x') up to the quadrature error ----------

def completeness_errors(case, baseline, feeds, rule, steps):
    with torch.no_grad():
        x, c = case.x.double(), case.classes()
        gap = (case.model64(x)[torch.arange(len(c)), c] - case.model64(baseline)[torch.arange(len(c)), c]).numpy()
    out = case.run(feeds, method="ig", steps=steps, quadrature=rule, baseline="input" if feeds else "zero", chunk=64)
    total = out["relevance"].reshape(len(gap), -1).astype(np.float64).sum(1)
    return np.abs(total - gap) / np.abs(gap)


def test_ig_completeness_digit_model(digits):
    """ReLU + MaxPool: the integrand is piecewise constant along the path, so both rules converge slowly
    (about 1 / steps), Gauss-Legendre ahead. Baseline: a black image."""
    base = torch.full(digits.x.shape, BLACK, dtype=torch.float64)
    feeds = {"baseline": base.float().numpy()}
    errors = {rule: [completeness_errors(digits, base, feeds, rule, s).mean() for s in (4, 16, 64)]
              for rule in ("riemann", "gauss-legendre")}
    print("digit model completeness error (mean relative) at 4, 16, 64 steps:", errors)
    for rule, e in errors.items():
        assert e[0] > e[1] > e[2], (rule, e)
        assert e[2] < 0.02, (rule, e)
    assert errors["gauss-legendre"][2] < errors["riemann"][2]


def test_ig_completeness_smooth_net():
    """A smooth integrand: the Riemann error falls like 1 / steps, Gauss-Legendre's exponentially."""
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(3)) * 2 - 1
    net = Case("smooth", smooth_net(), x)
    errors = {rule: [completeness_errors(net, torch.zeros_like(x, dtype=torch.float64), {}, rule, s).max()
                     for s in (2, 4, 8, 16)] for rule in ("riemann", "gauss-legendre")}
    print("smooth net completeness error (max relative) at 2, 4, 8, 16 steps:", errors)
    riemann, gauss = errors["riemann"], errors["gauss-legendre"]
    assert all(a > b for a, b in zip(riemann, riemann[1:]))
    assert riemann[-1] > 1e-3  # still visible at 16 steps
    assert gauss[2] < 1e-4 and gauss[-1] < 1e-5  # float32 rounding level by 8 to 16 steps
    assert all(g < r for g, r in zip(gauss, riemann))


# ---- SmoothGrad / SmoothTaylor with a given seed ---------------------------------------------------

def torch_smooth(model, x, seed, samples, level, classes, taylor):
    eps = torch.from_numpy(noise(seed, (samples,) + tuple(x.shape))).to(x.dtype)
    spread = x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True)
    points = x + level * spread * eps
    grads = gradients_at(model, points, classes)
    return ((x - points) * grads if taylor else grads).mean(0).numpy()


@pytest.mark.parametrize("method, opset", [("smoothgrad", 17), ("smoothtaylor", 17), ("smoothgrad", 18)])
def test_smooth_methods_match_torch_with_the_same_noise(digits, method, opset):
    """On the pretrained digit CNN the float32 and float64 torch references agree to ~1e-7 (no ReLU kink
    flips at these noisy points); lrpgraph must match float64 within 1e-5. (On a deep random ReLU net such
    as resnet18 the float32 reference itself is ~6e-4 away, so no tight bound can be stated there.)"""
    seed, samples, level = 7, 8, 0.15
    if opset != 17:  # the exporter writes opset 17; ReduceMax takes its axes as an input from opset 18
        digits = copy.copy(digits)
        digits.onnx, digits._runs = onnx.version_converter.convert_version(digits.onnx, opset), {}
    x, c = digits.x, digits.classes()
    ref = torch_smooth(digits.model64, x.double(), seed, samples, level, c, method == "smoothtaylor")
    ref32 = torch_smooth(digits.model, x, seed, samples, level, c, method == "smoothtaylor")
    out = digits.run({"noise_seed": np.array([seed], np.int64)}, method=method, samples=samples, noise_level=level)
    error, instability = l1(out["relevance"], ref), l1(ref32, ref)
    print(f"{method}: L1 {error:.2e} (torch float32 vs float64 {instability:.2e})")
    assert instability < 1e-6
    assert error < TOLERANCE
    other = digits.run({"noise_seed": np.array([seed + 1], np.int64)}, method=method, samples=samples,
                       noise_level=level)
    assert l1(other["relevance"], ref) > 1e-2  # the seed matters


# ---- command line --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def noisy_digits(digits):
    """Digits with a little noise: the digit model's max pools see no ties over the constant background
    (where float32 rounding, not the method, decides which pixel gets the gradient)."""
    noisy = copy.copy(digits)
    noisy.x = digits.x + 0.05 * torch.randn(digits.x.shape, generator=torch.Generator().manual_seed(4))
    return noisy


@pytest.fixture(scope="module")
def digit_onnx(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("cli") / "digits.onnx"
    onnx.save(digits.onnx, path)
    return path


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def run_file(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


def test_cli_ig(noisy_digits, digit_onnx, tmp_path):
    out = tmp_path / "ig.onnx"
    cli("convert", digit_onnx, "-o", out, "--method", "ig", "--steps", "32", "--baseline", "zero")
    result = run_file(out, noisy_digits.x.numpy())
    x = noisy_digits.x.double()
    ref = torch_ig(noisy_digits.model64, x, torch.zeros_like(x), 32, "riemann", noisy_digits.classes())
    assert l1(result["relevance"], ref) < TOLERANCE


def test_cli_several_explanations(noisy_digits, digit_onnx, tmp_path):
    out = tmp_path / "two.onnx"
    text = cli("convert", digit_onnx, "-o", out, "--explain", "lrp=epsilon-plus", "--explain", "gig=guided-ig")
    assert "lrp=epsilon-plus" in text
    result = run_file(out, noisy_digits.x.numpy())
    assert set(result) == {"logits", "relevance_lrp", "relevance_gig"}
    x = noisy_digits.x.double()
    with guided(noisy_digits.model64) as model:
        gig = torch_ig(model, x, torch.zeros_like(x), 32, "riemann", noisy_digits.classes())  # default 32 steps
    assert l1(result["relevance_gig"], gig) < TOLERANCE
    _, lrp = zennit_relevance(copy.deepcopy(noisy_digits.model), noisy_digits.x, zennit_composite("epsilon-plus"),
                              dtype=torch.float64)
    assert l1(result["relevance_lrp"], lrp) < 1e-4  # the parity bound at eps = 1e-6 (README)
