"""Einsum layers with the constant as the FIRST operand, as torch.einsum("oi,bi->bo", W, x) exports them
(dynamo and legacy both write one Einsum node [W, x]): explained as the dense layer x @ W^T (or x @ W) they are.
Against torch autograd in float64 (gradient, IG; attn-lrp as LXT's rules: linear layers LRP-0, GELU identity),
against the same model written with activation-first layers (MatMul) under the LRP composites, in the torch
importer as in onnxruntime; an Einsum with a constant that is no dense layer is refused in one line."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import lrpgraph
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.train.importer import import_onnx
from transformer_models import export_either

N, L, D, H, C = 3, 5, 8, 6, 4
# (hidden layer, head): W^T layout (nn.Linear's [out, in]) or W layout ([in, out]), '...' too
FORMS = {"linear-layout": ("hd,bnd->bnh", "oi,bi->bo"), "matmul-layout": ("dh,bnd->bnh", "io,bi->bo"),
         "ellipsis": ("hd,...d->...h", "io,bi->bo")}


def _layout(eq):
    """True where the constant of eq is [in, out] (its first letter is the one summed over), else [out, in]."""
    weight, x = eq.split("->")[0].split(",")
    return weight[0] == x[-1]


class ConstantFirst(torch.nn.Module):
    """Einsum(W1, x) + b1, GELU, mean over tokens, Einsum(W2, .) + b2; or (activation_first) the same map with
    x @ W (MatMul), the form lrpgraph explained before. identity: GELU's identity rule for the reference (its
    gradient times gelu(r) / r, held constant)."""

    def __init__(self, form, activation_first=False, head=None):
        super().__init__()
        self.hidden, self.head = FORMS[form] if head is None else (FORMS[form][0], head)
        self.activation_first, self.identity = activation_first, False
        gen = torch.Generator().manual_seed(0)
        shape = lambda eq, m, k: (k, m) if _layout(eq) else (m, k)  # noqa: E731
        self.w1 = torch.nn.Parameter(torch.randn(shape(self.hidden, H, D), generator=gen) / D ** 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(shape(self.head, C, H), generator=gen) / H ** 0.5)
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(H, generator=gen))
        self.b2 = torch.nn.Parameter(0.1 * torch.randn(C, generator=gen))

    def layer(self, w, eq, x):
        if self.activation_first:
            return x @ (w if _layout(eq) else w.T)
        out = torch.einsum(eq, w, x)
        return out.T if eq.endswith("->ob") else out

    def forward(self, x):
        r = self.layer(self.w1, self.hidden, x) + self.b1
        h = r * (torch.nn.functional.gelu(r) / r).detach() if self.identity else torch.nn.functional.gelu(r)
        return self.layer(self.w2, self.head, h.mean(1)) + self.b2


def ort_run(converted, x):
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))


def l1(a, b):
    return float(np.abs(a - b).sum() / np.abs(b).sum())


@pytest.fixture(scope="module")
def x():
    return torch.randn(N, L, D, generator=torch.Generator().manual_seed(1))


def grad_at(model, points, classes, identity=False):
    """d y_c / d points in float64."""
    double = copy.deepcopy(model).double()
    double.identity = identity
    points = points.double().clone().requires_grad_(True)
    y = double(points)
    (g,) = torch.autograd.grad(y[torch.arange(len(points)), classes].sum(), points)
    return g


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_constant_first_einsum_matches_autograd(x, form, dynamo):
    """The export keeps Einsum(W, x); gradient, IG (4 steps, zero baseline) and attn-lrp equal torch in float64,
    and the torch importer runs the converted model as onnxruntime does."""
    model = ConstantFirst(form)
    exported = export_either(model, x, dynamo)
    einsums = [n for n in exported.graph.node if n.op_type == "Einsum"]
    assert len(einsums) == 2 and all(n.input[0] in {i.name for i in exported.graph.initializer} for n in einsums)
    classes = copy.deepcopy(model).double()(x.double()).argmax(1)

    steps = 4
    out = ort_run(lrpgraph.convert(exported, explain={"g": "gradient", "ig": "ig"}, steps=steps), x.numpy())
    grad = grad_at(model, x, classes)
    ig = x.double() * sum(grad_at(model, x * k / steps, classes) for k in range(1, steps + 1)) / steps
    assert l1(out["relevance_g"], grad.numpy()) <= 1e-5
    assert l1(out["relevance_ig"], ig.numpy()) <= 1e-5

    converted = lrpgraph.convert(exported, composite="attn-lrp")
    out = ort_run(converted, x.numpy())
    ref = (x.double() * grad_at(model, x, classes, identity=True)).numpy()
    assert l1(out["relevance"], ref) <= 1e-5
    with torch.no_grad():
        again = import_onnx(converted).run({converted.graph.input[0].name: x.numpy()})
    assert l1(again["relevance"].numpy(), out["relevance"]) <= 1e-5


_EXPORTS = {}


def exported(form, activation_first, x):
    """The dynamo export of ConstantFirst(form, activation_first), made once per module (ONNX bytes)."""
    key = (form, activation_first)
    if key not in _EXPORTS:
        _EXPORTS[key] = export_either(ConstantFirst(form, activation_first), x, True).SerializeToString()
    return _EXPORTS[key]


@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-alpha2-beta1", "flex", "cp-lrp"])
@pytest.mark.parametrize("form", ["linear-layout", "matmul-layout"])
def test_constant_first_einsum_explains_as_matmul(x, form, composite):
    """Under the LRP rule sets the Einsum(W, x) model gives the heatmap of the same model written x @ W (whose
    dense layers tests/converters check against zennit), up to the rounding of the two kernels."""
    heat = [ort_run(lrpgraph.convert(exported(form, first, x), composite=composite), x.numpy())["relevance"]
            for first in (False, True)]
    assert np.abs(heat[1]).max() > 0 and l1(heat[0], heat[1]) <= 1e-5


def test_einsum_with_a_constant_that_is_no_dense_layer_is_refused(x, tmp_path):
    """'oi,bi->ob' (the layer's output transposed) is not x @ W: refused in one line naming the node and the
    equation, from the API and from the command line (exit 2, nothing written)."""
    from click.testing import CliRunner

    from lrpgraph.cli import main

    exported = export_either(ConstantFirst("linear-layout", head="oi,bi->ob"), x, True)
    node = next(n for n in exported.graph.node if n.op_type == "Einsum" and b"->ob" in n.attribute[0].s)
    with pytest.raises(UnsupportedModelError, match=f"node '{node.name}' \\(Einsum 'oi,bi->ob'\\)") as info:
        lrpgraph.convert(exported, composite="attn-lrp")
    assert "\n" not in str(info.value)
    onnx.save(exported, str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "m.onnx"), "--composite", "attn-lrp"])
    assert result.exit_code == 2 and "oi,bi->ob" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.lrp.onnx").exists()
