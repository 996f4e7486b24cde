"""The op catalog (lrpgraph/catalog/) is the one description of an op, and the converters attach their
emitting functions to its records (lrpgraph/converters/registry.py): every record relevance crosses has its
converter, and no converter lacks a record. Registering a new element-wise activation = one record and one
function (its derivative), in one registration, and every part of the converter (canonicalize's kinds, the
composites' rules, the gradient methods) handles it.

The new op is Softsign, y = x / (1 + |x|), which lrpgraph does not otherwise support; the references are
float64 torch (autograd through F.softsign, torch's own derivative, and zennit-style rule transcriptions
from ops_helpers), sharing no code with the converter."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ops_helpers import Net, assert_l1, eps_rule, head_seed, inputs, run, stab, t64, zplus_rule

import lrpgraph
from lrpgraph import graph
from lrpgraph.canonicalize import canonicalize
from lrpgraph.catalog import RECORDS, UNEXPLAINED, RegistryError
from lrpgraph.converters import registry
from lrpgraph.converters.activations import activation_op
from lrpgraph.converters.registry import EMITTERS
from lrpgraph.errors import UnsupportedModelError

TOL = 1e-5


def softsign_derivative(ctx, unit, x, y):
    """d/dx x / (1 + |x|) = 1 / (1 + |x|)^2."""
    b = ctx.b
    d = b.add(b.const(1.0), b.op("Abs", [x], "abs"))
    return b.div(b.const(1.0), b.mul(d, d))


@pytest.fixture
def softsign():
    """Softsign registered for the test: the one record (activation_op) on the one function (derivative)."""
    removed = registry.remove("Softsign")
    activation_op("Softsign")(softsign_derivative)
    yield RECORDS["Softsign"]
    registry.restore(removed)


def model_and_reference(seed=70):
    """x -> Conv 3x3 (pad 1, bias) -> Softsign -> Flatten -> Gemm: the ONNX model and float64 torch pieces."""
    net = Net([3, 8, 8], seed=seed)
    h, conv, w, b = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    logits, head = net.head(net.op("Softsign", [h]), 4 * 64)
    return net.model(logits), conv, head, net.t(w), net.t(b)


def test_unregistered_softsign_is_refused():
    if "Softsign" in RECORDS:
        pytest.skip("Softsign is registered by the package itself")
    with pytest.raises(UnsupportedModelError, match="Softsign"):
        lrpgraph.convert(model_and_reference()[0])


def test_the_record_gives_the_kind(softsign):
    assert softsign.kind == "activation" and EMITTERS["Softsign"].derivative is softsign_derivative
    canon = canonicalize(graph.load(model_and_reference()[0]))
    unit = next(u for u in canon.units if u.op == "Softsign")
    assert (unit.kind, unit.keys) == ("activation", ("activation",))


def test_epsilon_plus_passes_relevance(softsign):
    """epsilon-plus: zplus at the Conv (first layer), pass at Softsign, epsilon at the dense head."""
    model, conv, head, W, B = model_and_reference()
    x = inputs([3, 8, 8], seed=71)
    y, relevance = run(model, x, composite="epsilon-plus")
    x64 = t64(x)
    h = F.softsign(conv(x64))
    _, seed = head_seed(head, h, y)
    r_h = eps_rule(head, h, seed.detach())  # relevance at the Softsign output, passed to its input
    reference = zplus_rule(lambda t, w, b: F.conv2d(t, w, b, padding=1), x64, W, B, r_h)
    assert_l1(relevance, reference.numpy(), TOL)


def test_gradient_uses_the_registered_derivative(softsign):
    """The gradient method: d logit_top / dx, against torch autograd through F.softsign."""
    model, conv, head, _, _ = model_and_reference()
    x = inputs([3, 8, 8], seed=72)
    y, relevance = run(model, x, method="gradient")
    x64 = t64(x).requires_grad_(True)
    logits = head(F.softsign(conv(x64)))
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(len(x)), torch.as_tensor(y.argmax(1))] = 1.0
    (grad,) = torch.autograd.grad(logits, x64, onehot)
    assert_l1(relevance, grad.numpy(), TOL)


def test_flex_uses_the_registered_derivative(softsign):
    """LRP-Flex: zbox(0, 1) at the first layer on z * g, g the plain gradient through Softsign and the head
    (no ReLU, so no a / (a + eps) factor)."""
    model, conv, head, W, _ = model_and_reference()
    x = inputs([3, 8, 8], seed=73, low=0.0, high=1.0)
    y, relevance = run(model, x, composite="flex")
    z = conv(t64(x)).detach().requires_grad_(True)
    logits = head(F.softsign(z))
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(len(x)), torch.as_tensor(y.argmax(1))] = 1.0
    (g,) = torch.autograd.grad(logits, z, onehot)
    assert_l1(relevance, zbox(t64(x), W, (z * g).detach()).numpy(), TOL)


def zbox(x, w, relevance, low=0.0, high=1.0):
    """zbox through a 3x3 conv with padding 1 (bias left out, as zennit's ZBox): float64 autograd."""
    xx, ll, hh = (t.clone().requires_grad_(True) for t in (x, torch.full_like(x, low), torch.full_like(x, high)))

    def c(t, weight):
        return F.conv2d(t, weight, None, padding=1)

    z = c(xx, w) - c(ll, w.clamp(min=0)) - c(hh, w.clamp(max=0))
    gx, gl, gh = torch.autograd.grad(z, (xx, ll, hh), relevance / stab(z.detach()))
    return (xx * gx + ll * gl + hh * gh).detach()


def test_gradient_matches_finite_differences(softsign):
    """The same gradient against central differences of the float64 forward pass (class 0 explained)."""
    model, conv, head, _, _ = model_and_reference()
    x = inputs([3, 8, 8], seed=74)
    _, relevance = run(model, x, target="index", index=[0, 0], method="gradient")

    def logit(t):
        return head(F.softsign(conv(t64(t))))[:, 0].sum().item()

    x64, step = np.asarray(x, np.float64), 1e-5
    numeric = np.zeros_like(x64)
    for i in np.ndindex(x64.shape):
        e = np.zeros_like(x64)
        e[i] = step
        numeric[i] = (logit(x64 + e) - logit(x64 - e)) / (2 * step)
    assert_l1(relevance, numeric, TOL)


@pytest.fixture
def matmul_linear_only():
    """MatMul as a linear layer only (its 'product' kind, catalog/linear.py and converters/attention.py, taken
    away for the test)."""
    saved, converters = RECORDS["MatMul"], EMITTERS["MatMul"]
    RECORDS["MatMul"] = replace(saved, kinds=("linear",), classify=None,
                                rules={k: v for k, v in saved.rules.items() if k != "product"})
    EMITTERS["MatMul"] = replace(converters, by_kind={"linear": converters.by_kind["linear"]})
    yield
    RECORDS["MatMul"], EMITTERS["MatMul"] = saved, converters


@pytest.fixture
def matmul_product(matmul_linear_only):
    """MatMul given a second kind for the test: 'product' when both operands carry the signal."""
    saved, converters = RECORDS["MatMul"], EMITTERS["MatMul"]

    def halves(ctx, unit, rule, r_outs):  # each operand gets half of the relevance
        half = ctx.b.mul(r_outs[0], ctx.b.const(0.5))
        return [half, half]

    registry.extend("MatMul", "product", halves, rules={"uniform"},  # the LRP composites' rule for products
                    classify=lambda node, dynamic: "product" if all(dynamic[:2]) else "linear")
    yield
    RECORDS["MatMul"], EMITTERS["MatMul"] = saved, replace(converters, by_kind=dict(converters.by_kind))


def product_model():
    """x [N, 4, 4] -> MatMul(x, x) -> Flatten -> Gemm."""
    net = Net([4, 4], seed=80)
    y = net.op("MatMul", ["x", "x"])
    logits, head = net.head(y, 16)
    return net.model(logits), head


def test_a_second_kind_for_a_registered_op(matmul_product):
    """extend: MatMul of two signals becomes a 'product' unit with its own converter and rules; the
    relevance of both halves reaches x (R_x = R_y, y = x @ x), against the epsilon rule at the head."""
    model, head = product_model()
    canon = canonicalize(graph.load(model))
    assert [u.kind for u in canon.units if u.op == "MatMul"] == ["product"]
    x = inputs([4, 4], seed=81)
    y, relevance = run(model, x)
    h = t64(x) @ t64(x)
    _, seed = head_seed(head, h, y)
    assert_l1(relevance, eps_rule(head, h, seed.detach()).numpy(), TOL)


def test_without_the_second_kind_a_product_is_refused(matmul_linear_only):
    with pytest.raises(UnsupportedModelError, match="both operands depend on the image"):
        lrpgraph.convert(product_model()[0])


@pytest.mark.parametrize("bad, message", [
    (dict(), "kind None"),
    (dict(kind="elementwise"), "kind 'elementwise'"),
    (dict(kind="activation", rules={"pass", "no-such-rule"}), "no-such-rule"),
    (dict(kind="activation", no_such_flag=True), "no_such_flag"),
    (dict(kind="linear"), "needs its LinearOp"),
])
def test_a_record_without_a_valid_kind_rule_or_flag_is_an_error(bad, message):
    with pytest.raises((RegistryError, TypeError), match=message):
        registry.register("FakeOp", **bad)(lambda ctx, unit, rule, r_outs: r_outs)
    assert "FakeOp" not in RECORDS and "FakeOp" not in EMITTERS


def test_registering_an_op_twice_is_an_error():
    with pytest.raises(RegistryError, match="twice"):
        registry.register("Relu", kind="activation")(lambda ctx, unit, rule, r_outs: r_outs)
    assert EMITTERS["Relu"].derivative is not None and EMITTERS["Relu"].by_kind["activation"] is not None


def test_every_record_relevance_crosses_has_its_converters():
    """Each kind of each record that relevance crosses has a converter; an activation has its derivative, a
    linear op its reader (in the catalog) and its forward and adjoint passes."""
    missing = []
    for op, known in RECORDS.items():
        emitters = EMITTERS.get(op, registry.Emitters())
        missing += [f"{op}: no converter for kind {kind}" for kind in known.kinds
                    if kind not in UNEXPLAINED and kind not in emitters.by_kind]
        if "activation" in known.kinds and emitters.derivative is None:
            missing.append(f"{op}: no derivative")
        if "linear" in known.kinds and (known.linear is None or emitters.forward is None or emitters.adjoint is None):
            missing.append(f"{op}: no reader, forward or adjoint")
    assert not missing, "\n".join(missing)
    assert {"Relu", "Conv", "Gather", "Softmax", "MatMul"} <= set(EMITTERS)


def test_no_converter_lacks_a_record():
    """Every op type the converters attach to has a record, and only the kinds its record lists."""
    stray = [f"{op}: {sorted(emitters.by_kind)}" for op, emitters in EMITTERS.items()
             if op not in RECORDS or not set(emitters.by_kind) <= set(RECORDS[op].kinds) - UNEXPLAINED]
    assert not stray, "\n".join(stray)


@pytest.mark.parametrize("op, kind, message", [
    ("FakeOp", None, "no record"),
    ("Relu", "sum", "no explained kind 'sum'"),
    ("Shape", None, "no explained kind 'shape'"),
])
def test_attaching_without_a_record_or_kind_is_an_error(op, kind, message):
    with pytest.raises(RegistryError, match=message):
        registry.converts(op, kind=kind)(lambda ctx, unit, rule, r_outs: r_outs)
    assert "FakeOp" not in EMITTERS and "sum" not in EMITTERS["Relu"].by_kind and "Shape" not in EMITTERS
