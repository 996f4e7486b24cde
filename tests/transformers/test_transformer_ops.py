"""The transformer ops as other exporters write them, in one attention block built node by node: Einsum of
two activations ('bhqd,bhkd->bhqk' and 'bhqk,bhkd->bhqd', or the scores transposed with the Softmax on
axis 2), Einsum with a constant weight (x @ W 'bld,de->ble', x @ W^T 'bld,ed->ble' and 'bd,cd->bc'), a causal mask
by Where with -inf, RMSNorm (RMSNormalization at opset 23, or written out at opset 17: Pow, ReduceMean,
Add eps, Sqrt, Reciprocal or Div, Mul, Mul weight) and GELU in its tanh form (Gelu approximate='tanh' at
opset 23, or written out as HF's NewGELU). Against torch in float64 with LXT's rules written as detaches
(identity GELU, rms constant, gradients halved at products; CP-LRP: attention probabilities constant) and
against autograd for the gradient; the converted models run in onnxruntime and in the torch importer."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.train.importer import import_onnx
from transformer_models import export_either

L, D, H, C, EPS = 6, 8, 2, 5, 1e-6
DH = D // H


def weights(seed=0):
    rng = np.random.default_rng(seed)
    w = {k: rng.standard_normal((D, D)) / math.sqrt(D) for k in ("w0", "wq", "wk", "wv", "wo")}
    w["scale"] = 1 + 0.1 * rng.standard_normal(D)
    w["wc"] = rng.standard_normal((C, D)) / math.sqrt(D)
    return w


class Graph:
    def __init__(self, w, opset):
        self.nodes, self.opset, self.k = [], opset, 0
        self.inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]

    def const(self, value, dtype=np.float32):
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.k += 1
        out = f"t{self.k}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type.lower()}_{self.k}", **attrs))
        return out

    def mean(self, x, axis, keepdims):
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const([axis], np.int64)], keepdims=keepdims)
        return self.op("ReduceMean", [x], axes=[axis], keepdims=keepdims)

    def model(self, out):
        graph = helper.make_graph(self.nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", L, D])],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", C])], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


def build(w, form, layout):
    """form: 'fused' (RMSNormalization, Gelu tanh; opset 23) or 'reciprocal' / 'div' (written out, opset 17);
    layout: 'last' (scores [q, k], Softmax on the last axis), 'ellipsis' (the same written '...qd,...kd->...qk')
    or 'axis2' (scores [k, q], Softmax on axis 2)."""
    g = Graph(w, 23 if form == "fused" else 17)
    h = g.op("MatMul", ["x", "w0"])
    if form == "fused":
        n = g.op("RMSNormalization", [h, "scale"], epsilon=EPS)
    else:
        rms = g.op("Sqrt", [g.op("Add", [g.mean(g.op("Pow", [h, g.const(2.0)]), -1, 1), g.const(EPS)])])
        n = g.op("Mul", [h, g.op("Reciprocal", [rms])]) if form == "reciprocal" else g.op("Div", [h, rms])
        n = g.op("Mul", ["scale", n])
    heads = lambda t: g.op("Transpose", [g.op("Reshape", [t, g.const([0, 0, H, DH], np.int64)])], perm=[0, 2, 1, 3])  # noqa: E731
    q = heads(g.op("Einsum", [n, "wq"], equation="bld,de->ble"))
    k = heads(g.op("Einsum", [n, g.const(w["wk"].T)], equation="bld,ed->ble"))  # nn.Linear's weight layout
    v = heads(g.op("MatMul", [n, "wv"]))
    causal = np.tril(np.ones((L, L), bool))
    if layout == "last":
        s = g.op("Einsum", [q, k], equation="bhqd,bhkd->bhqk")
        a = g.op("Softmax", [g.op("Where", [g.const(causal, bool), g.op("Mul", [s, g.const(DH ** -0.5)]),
                                            g.const(-np.inf)])], axis=-1)
        o = g.op("Einsum", [a, v], equation="bhqk,bhkd->bhqd")
    elif layout == "ellipsis":
        s = g.op("Einsum", [q, k], equation="...qd,...kd->...qk")
        a = g.op("Softmax", [g.op("Where", [g.const(causal, bool), g.op("Mul", [s, g.const(DH ** -0.5)]),
                                            g.const(-np.inf)])], axis=-1)
        o = g.op("Einsum", [a, v], equation="...qk,...kd->...qd")
    else:
        s = g.op("Einsum", [q, k], equation="bhqd,bhkd->bhkq")
        a = g.op("Softmax", [g.op("Where", [g.const(causal.T, bool), g.op("Mul", [s, g.const(DH ** -0.5)]),
                                            g.const(-np.inf)])], axis=2)
        o = g.op("Einsum", [a, v], equation="bhkq,bhkd->bhqd")
    o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]), g.const([0, 0, D], np.int64)])
    r = g.op("Add", [g.op("MatMul", [o, "wo"]), n])
    if form == "fused":
        act = g.op("Gelu", [r], approximate="tanh")
    else:  # HF's NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
        inner = g.op("Add", [r, g.op("Mul", [g.const(0.044715), g.op("Pow", [r, g.const(3.0)])])])
        tanh = g.op("Tanh", [g.op("Mul", [g.const(math.sqrt(2 / math.pi)), inner])])
        act = g.op("Mul", [g.op("Mul", [g.const(0.5), r]), g.op("Add", [g.const(1.0), tanh])])
    logits = g.op("Einsum", [g.mean(act, 1, 0), "wc"], equation="bd,cd->bc")
    return g.model(logits)


def reference(x, w, mode):
    """The heatmap in float64: 'attn-lrp' and 'cp-lrp' as x * gradient with LXT's detaches, 'gradient' plain."""
    t = {k: torch.tensor(v) for k, v in w.items()}
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    lrp = mode != "gradient"
    half = (lambda u: 0.5 * u + (0.5 * u).detach()) if mode == "attn-lrp" else (lambda u: u)  # gradient halved

    h = x @ t["w0"]
    rms = torch.sqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    n = h / (rms.detach() if lrp else rms) * t["scale"]
    q, k, v = ((n @ t[name]).reshape(len(x), L, H, DH).transpose(1, 2) for name in ("wq", "wk", "wv"))
    s = torch.einsum("bhqd,bhkd->bhqk", half(q), half(k)) * DH ** -0.5
    a = torch.softmax(torch.where(torch.tensor(np.tril(np.ones((L, L), bool))), s, -torch.inf), -1)
    a = a.detach() if mode == "cp-lrp" else half(a)
    o = torch.einsum("bhqk,bhkd->bhqd", a, half(v)).transpose(1, 2).reshape(len(x), L, D)
    r = o @ t["wo"] + n
    act = torch.nn.functional.gelu(r, approximate="tanh")
    if lrp:  # identity rule: R_in = R_out, the gradient times gelu(r) / r
        act = r * (act / r).detach()
    y = act.mean(1) @ t["wc"].T
    (g,) = torch.autograd.grad(y, x, torch.nn.functional.one_hot(y.argmax(1), C).double())
    return (x * g if lrp else g).detach().numpy(), y.detach().numpy()


@pytest.fixture(scope="module")
def data():
    return weights(), np.random.default_rng(1).standard_normal((3, L, D)).astype(np.float32)


def l1(a, b):
    return float(np.abs(a - b).sum() / np.abs(b).sum())


@pytest.mark.parametrize("form", ["fused", "reciprocal", "div"])
@pytest.mark.parametrize("layout", ["last", "axis2", "ellipsis"])
@pytest.mark.parametrize("mode", ["attn-lrp", "cp-lrp", "gradient"])
def test_attention_block_matches_torch(data, form, layout, mode):
    w, x = data
    spec = dict(method="gradient") if mode == "gradient" else dict(composite=mode)
    converted = lrpgraph.convert(build(w, form, layout), **spec)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, relevance = session.run(None, {"x": x})[:2]
    ref, ref_logits = reference(x, w, mode)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert l1(relevance, ref) <= 1e-5
    with torch.no_grad():
        again = import_onnx(converted).run({"x": x})
    assert l1(again["relevance"].numpy(), relevance) <= 1e-5
    assert l1(again[converted.graph.output[0].name].numpy(), logits) <= 1e-6


def test_written_out_ops_become_one_unit_each(data):
    """The written-out RMSNorm and GELU are explained as one unit each, the constant Einsums as linear layers
    (what the rules above rely on; else a Pow or Tanh would be refused and the Einsums taken as products)."""
    from lrpgraph.canonicalize import canonicalize
    from lrpgraph.graph import load

    kinds = {(u.op, u.kind) for u in canonicalize(load(build(data[0], "reciprocal", "last"))).units}
    assert {("RMSNormalization", "normaliser"), ("Gelu", "activation"), ("Einsum", "product"),
            ("MatMul", "linear"), ("Gemm", "linear")} <= kinds
    assert not {op for op, _ in kinds} & {"Pow", "Tanh", "Reciprocal", "Sqrt"}


def test_inspect_marks_the_written_out_ops(data, tmp_path):
    """`lrpgraph inspect` lists the ops inside a fused unit as covered (ok*), and the units with their rules."""
    import onnx
    from click.testing import CliRunner

    from lrpgraph.cli import main

    onnx.save(build(data[0], "reciprocal", "last"), str(tmp_path / "block.onnx"))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "block.onnx"), "--composite", "attn-lrp"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(any(line.split()[:2] == ["ok*", op] for line in lines) for op in ("Pow", "Reciprocal", "Sqrt"))
    assert any(line.split()[1:] == ["RMSNormalization", "identity"] for line in lines)
    assert any(line.split()[1:] == ["Einsum", "uniform"] for line in lines)


def test_einsum_with_a_constant_that_is_no_matmul_is_refused(data):
    model = build(data[0], "fused", "last")
    last = model.graph.node[-1]
    last.attribute[0].s = b"bd,cd->cb"  # the logits transposed: not x @ W or x @ W^T
    with pytest.raises(UnsupportedModelError, match=f"node '{last.name}' \\(Einsum 'bd,cd->cb'\\).*MatMul"):
        lrpgraph.convert(model, composite="attn-lrp")


class _Block(torch.nn.Module):
    """Linear, transformers' LlamaRMSNorm, a tanh GELU (torch's or transformers' NewGELU), mean over tokens,
    Linear: the written-out forms come from the exporters themselves."""

    def __init__(self, act):
        from transformers.activations import NewGELUActivation
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        super().__init__()
        torch.manual_seed(0)
        self.a, self.norm, self.b = torch.nn.Linear(D, D), LlamaRMSNorm(D, eps=EPS), torch.nn.Linear(D, C)
        self.act = NewGELUActivation() if act == "newgelu" else torch.nn.GELU(approximate="tanh")
        with torch.no_grad():
            self.norm.weight.add_(0.1 * torch.randn(D))

    def forward(self, x):
        return self.b(self.act(self.norm(self.a(x))).mean(1))


@pytest.mark.parametrize("act, dynamo", [("newgelu", False), ("newgelu", True), ("torch", True)])
def test_exported_rms_norm_and_tanh_gelu(act, dynamo):
    """As torch.onnx.export writes them (legacy at opset 17: Pow, ReduceMean, Add, Sqrt, Div(1, .), Mul, Casts,
    tanh GELU written out; dynamo: Reciprocal, and Gelu(approximate='tanh') or NewGELU written out): attn-lrp
    equals LXT's rules in float64 (rms constant, identity on GELU)."""
    pytest.importorskip("transformers")
    block = _Block(act).eval()
    x = torch.randn(3, L, D, generator=torch.Generator().manual_seed(1))
    model = export_either(block, x, dynamo)
    converted = lrpgraph.convert(model, composite="attn-lrp")
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    relevance = session.run(None, {session.get_inputs()[0].name: x.numpy()})[1]

    double = block.double()
    x64 = x.double().requires_grad_(True)
    h = double.a(x64)
    rms = torch.sqrt(h.pow(2).mean(-1, keepdim=True) + EPS).detach()
    r = double.norm.weight * (h / rms)
    y = double.b((r * (double.act(r) / r).detach()).mean(1))
    (g,) = torch.autograd.grad(y, x64, torch.nn.functional.one_hot(y.argmax(1), C).double())
    assert l1(relevance, (x64 * g).detach().numpy()) <= 1e-5


@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1", "flex"])
def test_einsum_layers_explain_as_matmul(composite):
    """Under every rule set an Einsum x @ W^T with its bias Add is the layer MatMul(x, W^T) + b is (whose rules
    tests/converters check against zennit): the same heatmap (up to the rounding of Einsum's own kernel)."""
    rng = np.random.default_rng(3)
    w, v = rng.standard_normal((6, D)), rng.standard_normal((C, 6))

    def model(einsum):
        g = Graph({}, 18)
        h = g.op("Einsum", ["x", g.const(w)], equation="bld,ed->ble") if einsum else g.op("MatMul", ["x", g.const(w.T)])
        r = g.op("Relu", [g.op("Add", [h, g.const(np.full(6, 0.1))])])
        return g.model(g.op("Einsum", [g.mean(r, 1, 0), g.const(v)], equation="bd,cd->bc"))

    x = np.random.default_rng(4).standard_normal((2, L, D)).astype(np.float32)
    heat = [ort.InferenceSession(lrpgraph.convert(model(e), composite=composite).SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x})[1] for e in (True, False)]
    assert np.abs(heat[1]).max() > 0 and l1(heat[0], heat[1]) <= 1e-6


@pytest.mark.parametrize("computed", [False, True])
def test_tile_of_a_signal(computed):
    """Tile of an activation, by constant repeats or by repeats computed from a shape (any axis, sizes above
    1 too): the gradient sums the tiles back, as torch autograd does through .repeat()."""
    rng = np.random.default_rng(5)
    w, v = rng.standard_normal((D, 4)), rng.standard_normal((C, 4))
    g = Graph({}, 18)
    h = g.op("MatMul", ["x", g.const(w)])  # [N, L, 4]
    if computed:  # [1, L // 3, 2] from the input's shape
        length = g.op("Slice", [g.op("Shape", ["x"]), g.const([1], np.int64), g.const([2], np.int64)])
        third = g.op("Div", [length, g.const([3], np.int64)])
        reps = g.op("Concat", [g.const([1], np.int64), third, g.const([2], np.int64)], axis=0)
    else:
        reps = g.const([1, L // 3, 2], np.int64)
    tiled = g.op("Tile", [g.op("Tanh", [h]), reps])  # [N, L * L // 3, 8]
    weight = rng.standard_normal((L * (L // 3), 8))
    pooled = g.op("ReduceMean", [g.op("Mul", [tiled, g.const(weight)]),
                                 g.const([1], np.int64)], keepdims=0)
    model = g.model(g.op("Einsum", [g.op("Slice", [pooled, g.const([0], np.int64), g.const([4], np.int64),
                                                   g.const([1], np.int64)]), g.const(v)], equation="bd,cd->bc"))
    x = np.random.default_rng(6).standard_normal((2, L, D)).astype(np.float32)
    ours = ort.InferenceSession(lrpgraph.convert(model, method="gradient").SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[1]
    x64 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    t = torch.tanh(x64 @ torch.tensor(w)).repeat(1, L // 3, 2)
    y = ((t * torch.tensor(weight)).mean(1)[:, :4]) @ torch.tensor(v).T
    (grad,) = torch.autograd.grad(y, x64, torch.nn.functional.one_hot(y.argmax(1), C).double())
    assert l1(ours, grad.numpy()) <= 1e-5
