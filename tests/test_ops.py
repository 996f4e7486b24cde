"""Per-op parity: every supported op, in a tiny model, against an independent transcription of its rule.

References are written from REFERENCE.md, in float64, and share no code with lrpgraph:
- linear rules (section 2): a direct numpy transcription on the layer's dense matrix A (a Conv is
  unrolled into A[input pixel, output pixel] by loops over its window), with the contributions
  x_i w_ij formed by einsum;
- epsilon / norm rules inside small networks: torch autograd, R_in = x * grad(z, x, R / stab(z));
- max pooling: torch's max_pool2d gradient (winner-take-all, overlapping windows add up);
- shape ops: the gradient of the same torch op (relevance moves exactly as the values move);
- activations, standalone BatchNorm, gates, Add/Sub/Mul/Div by constants: pass (R unchanged).

Most models are built with onnx.helper, so that each op and attribute is exactly the one under test,
and end in Flatten + Gemm ("head") so that the output is [N, C] logits. The composite is 'epsilon'
(every linear layer epsilon with eps = 1e-6) unless a test says otherwise. Tolerance: L1 relative 1e-5.
"""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph import metadata

TOL = 1e-5
STAB = 1e-6
CLASSES = 5


# ================================================================================== ONNX model builder
class Net:
    """A tiny ONNX graph built node by node; linear layers also return their float64 torch function."""

    def __init__(self, x_shape, seed=0, opset=17):
        self.rng = np.random.default_rng(seed)
        self.x_shape = list(x_shape)  # without the batch
        self.nodes, self.inits, self.arrays = [], [], {}
        self.count = 0
        self.opset = opset

    def fresh(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, dtype=np.float32, name=None):
        array = np.asarray(value, dtype)
        name = name or self.fresh("c")
        self.arrays[name] = array
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values):
        return self.const(values, np.int64)

    def randn(self, *shape, scale=1.0):
        return self.const(self.rng.standard_normal(shape) * scale)

    def constant_node(self, value):
        """A Constant node (not an initializer) holding value."""
        array = np.asarray(value, np.float32)
        name = self.fresh("k")
        self.arrays[name] = array
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(array, name + "_v")))
        return name

    def op(self, op_type, inputs, outputs=1, **attrs):
        name = self.fresh(op_type.lower())
        outs = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def t(self, name):
        return t64(self.arrays[name])

    def conv(self, x, cin, cout, k=3, bias=True, group=1, const_nodes=False, **attrs):
        """Conv node; returns (output name, torch function, weight name, bias name)."""
        shape = [k, k] if isinstance(k, int) else list(k)
        values = self.rng.standard_normal([cout, cin // group] + shape) / np.sqrt(cin // group * np.prod(shape))
        b_values = self.rng.standard_normal(cout) * 0.1 if bias else None
        make = self.constant_node if const_nodes else self.const
        w = make(values)
        b = make(b_values) if bias else None
        out = self.op("Conv", [x, w] + ([b] if bias else []), kernel_shape=shape, group=group, **attrs)
        return out, conv_fn(self.t(w), self.t(b) if bias else None, shape, group=group, **attrs), w, b

    def head(self, h, features, classes=CLASSES):
        """Flatten + Gemm to the logits; returns (logits name, torch function of h)."""
        flat = self.op("Flatten", [h], axis=1)
        w = self.randn(features, classes, scale=features ** -0.5)
        b = self.randn(classes, scale=0.1)
        out = self.op("Gemm", [flat, w, b])
        W, B = self.t(w), self.t(b)
        return out, lambda t: t.reshape(t.shape[0], -1) @ W + B

    def model(self, out, classes=CLASSES, final=None, batch="N"):
        if final:
            out = self.op(final, [out], axis=1)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch] + self.x_shape)
        y = helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])
        graph = helper.make_graph(self.nodes, "tiny", [x], [y], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def conv_fn(W, b, kernel, strides=(1, 1), pads=None, dilations=(1, 1), group=1, auto_pad=None):
    """The ONNX Conv as a float64 torch function: explicit zero padding, then an unpadded conv2d."""
    strides, dilations = list(strides), list(dilations)

    def fn(x):
        top, left, bottom, right = onnx_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, W, b, stride=strides, dilation=dilations, groups=group)

    return fn


def same_pads(size, k, stride, dilation, upper):
    """ONNX auto_pad SAME_*: output = ceil(size / stride); the odd pad goes at the end (UPPER) or start."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - size)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def onnx_pads(size, kernel, strides, dilations, pads, auto_pad):
    """[top, left, bottom, right] (ONNX order: begins, then ends) for explicit pads or auto_pad."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        (top, bottom), (left, right) = [same_pads(size[i], kernel[i], strides[i], dilations[i],
                                                  auto_pad == "SAME_UPPER") for i in range(2)]
        return [top, left, bottom, right]
    return [0, 0, 0, 0] if auto_pad == "VALID" or pads is None else list(pads)


# ================================================================================== running
SESSION = ort.SessionOptions()
SESSION.intra_op_num_threads = SESSION.inter_op_num_threads = 1  # tiny models: a thread pool costs more than it saves


def run(model, x, target="top", index=None, seed=None, **options):
    """Convert (target mode, composite 'epsilon' unless given, options), run in onnxruntime with the class
    index (mode 'index') or seed (mode 'seed'); returns (first output, relevance)."""
    converted = lrpgraph.convert(model, target=target, **{"composite": "epsilon", **options})
    session = ort.InferenceSession(converted.SerializeToString(), SESSION, providers=["CPUExecutionProvider"])
    feeds = {"x": np.asarray(x, np.float32)}
    if index is not None:
        feeds["target"] = np.asarray(index, np.int64)
    if seed is not None:
        feeds["relevance_seed"] = np.asarray(seed, np.float32)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feeds)))
    relevance = out["relevance"]
    assert relevance.shape == np.shape(x) and relevance.dtype == np.float32
    return out[names[0]], relevance


def l1(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).sum() / np.abs(ref).sum())


def assert_parity(relevance, ref, tol=TOL):
    ref = np.asarray(ref, np.float64)
    assert np.abs(ref).sum() > 0, "the reference heatmap is all zeros: the test explains nothing"
    err = l1(relevance, ref)
    assert err < tol, f"L1 relative error {err:.3g} >= {tol:g}"


# ================================================================================== float64 references
def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def stab(z, eps=STAB):
    """z + eps * s(z), s(0) = +1."""
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def eps_rule(f, x, R, eps=STAB):
    """Epsilon rule through an affine map f (bias included in z); with eps = stabiliser it is the norm rule
    for a sum or an average: R_i = x_i * sum_j df_j/dx_i R_j / stab(z_j)."""
    x = x.detach().clone().requires_grad_(True)
    z = f(x)
    (g,) = torch.autograd.grad(z, x, R / stab(z.detach(), eps))
    return (x * g).detach()


def norm_rule_multi(f, xs, R, eps=STAB):
    """Norm rule for a sum of several tensors z = f(x1, x2, ...): R_k = x_k * df/dx_k R / stab(z)."""
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    z = f(*xs)
    grads = torch.autograd.grad(z, xs, R / stab(z.detach(), eps))
    return [(x * g).detach() for x, g in zip(xs, grads)]


def move(f, x, R):
    """How a value-moving op (shape op, max pool) carries relevance: its gradient applied to R."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, R)
    return g.detach()


def zplus_rule(f, x, W, b, R):
    """zplus through a linear map f(x, W, b): (x+ w+ + x- w-) R / stab(sum(x+ w+ + x- w-) + b+)."""
    xp = x.clamp(min=0).detach().requires_grad_(True)
    xn = x.clamp(max=0).detach().requires_grad_(True)
    z = f(xp, W.clamp(min=0), None if b is None else b.clamp(min=0)) + f(xn, W.clamp(max=0), None)
    gp, gn = torch.autograd.grad(z, (xp, xn), R / stab(z.detach()))
    return (xp * gp + xn * gn).detach()


def dense(t, weight, bias=None):
    """A Gemm / MatMul (+ bias) in torch: t @ weight + bias."""
    return t @ weight + (0 if bias is None else bias)


def head_seed(head, h, y_onnx):
    """The logits of the head in float64 and the 'top' seed y_c one-hot (c = ORT's arg-max)."""
    y = head(h)
    onehot = torch.zeros_like(y)
    onehot[torch.arange(len(y)), torch.as_tensor(np.asarray(y_onnx).argmax(1))] = 1.0
    return y, y * onehot


def check_network(x, y_onnx, relevance, forward, backward, head, tol=TOL):
    """forward(x64) -> h (input of the head); backward(R_h) -> R_x. Compares logits and relevance."""
    h = forward(t64(x))
    y, seed = head_seed(head, h, y_onnx)
    np.testing.assert_allclose(y_onnx, y.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert_parity(relevance, backward(eps_rule(head, h, seed.detach())).numpy(), tol)


def inputs(shape, seed=1, batch=2, low=None, high=None):
    rng = np.random.default_rng(seed)
    if low is not None:
        return rng.uniform(low, high, [batch] + list(shape)).astype(np.float32)
    return rng.standard_normal([batch] + list(shape)).astype(np.float32)


# ================================================================================== REFERENCE.md section 2
def conv_matrix(W, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """A[i, j]: the weight joining input value i = (c, h, w) to output value j = (m, oh, ow); conn[i, j] = 1
    where i lies in j's receptive field (padding is not an input). Built by loops over the windows."""
    C, H, Wd = in_shape
    M, Cg, KH, KW = W.shape
    OH = (H + pads[0] + pads[2] - (KH - 1) * dilations[0] - 1) // strides[0] + 1
    OW = (Wd + pads[1] + pads[3] - (KW - 1) * dilations[1] - 1) // strides[1] + 1
    A = np.zeros((C, H, Wd, M, OH, OW))
    conn = np.zeros_like(A)
    per_group = M // group
    for m in range(M):
        for c in range(Cg):
            ci = (m // per_group) * Cg + c
            for i in range(KH):
                for j in range(KW):
                    for oh in range(OH):
                        ih = oh * strides[0] - pads[0] + i * dilations[0]
                        if not 0 <= ih < H:
                            continue
                        for ow in range(OW):
                            iw = ow * strides[1] - pads[1] + j * dilations[1]
                            if 0 <= iw < Wd:
                                A[ci, ih, iw, m, oh, ow] = W[m, c, i, j]
                                conn[ci, ih, iw, m, oh, ow] = 1.0
    return A.reshape(C * H * Wd, -1), conn.reshape(C * H * Wd, -1), (M, OH, OW)


def np_stab(z, eps=STAB):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def dense_rule(rule, params, x, A, bias, R, conn, low=None, high=None):
    """REFERENCE.md section 2, literally: x [N, I], A [I, J], bias [J] (or None), R [N, J] -> R_in [N, I]."""
    x, A, R = (np.asarray(v, np.float64) for v in (x, A, R))
    b = np.zeros(A.shape[1]) if bias is None else np.asarray(bias, np.float64)
    xp, xn, Ap, An = np.maximum(x, 0), np.minimum(x, 0), np.maximum(A, 0), np.minimum(A, 0)
    bp, bn = np.maximum(b, 0), np.minimum(b, 0)

    def c(xm, Am):  # contributions x_i w_ij
        return np.einsum("ni,ij->nij", xm, Am)

    def spread(contrib, z, rel, eps=STAB):  # R_i = sum_j contrib_ij R_j / stab(z_j)
        return np.einsum("nij,nj->ni", contrib, rel / np_stab(z, eps))

    if rule == "epsilon":
        cx = c(x, A)
        return spread(cx, cx.sum(1) + b, R, params[0])
    if rule == "zplus":
        cp = c(xp, Ap) + c(xn, An)
        return spread(cp, cp.sum(1) + bp, R)
    if rule == "alpha-beta":
        alpha, beta = params
        cp, cn = c(xp, Ap) + c(xn, An), c(xp, An) + c(xn, Ap)
        return alpha * spread(cp, cp.sum(1) + bp, R) - beta * spread(cn, cn.sum(1) + bn, R)
    if rule == "gamma":
        g = params[0]
        z = x @ A + b
        rho_p, rho_n = A + g * Ap, A + g * An
        c_pos = c(xp, rho_p) + c(xn, rho_n)
        c_neg = c(xp, rho_n) + c(xn, rho_p)
        return (spread(c_pos, c_pos.sum(1) + b + g * bp, R * (z > 0))
                + spread(c_neg, c_neg.sum(1) + b + g * bn, R * (z < 0)))
    if rule == "zbox":
        cz = c(x, A) - c(low, Ap) - c(high, An)
        return spread(cz, cz.sum(1), R)
    if rule == "flat":
        n = conn.sum(0)
        return np.einsum("ij,nj->ni", conn, R / np_stab(n))
    if rule == "wsquare":
        w2 = A ** 2
        return np.einsum("ij,nj->ni", w2, R / np_stab(w2.sum(0) + b ** 2))
    raise KeyError(rule)


# (override string, rule name, params, zbox bounds or None)
RULES = [
    ("epsilon:0", "epsilon", (0.0,), None),
    ("epsilon:1e-6", "epsilon", (1e-6,), None),
    ("epsilon:0.25", "epsilon", (0.25,), None),
    ("zplus", "zplus", (), None),
    ("alpha-beta:2:1", "alpha-beta", (2.0, 1.0), None),
    ("alpha-beta:1:0", "alpha-beta", (1.0, 0.0), None),
    ("gamma:0.25", "gamma", (0.25,), None),
    ("gamma:1", "gamma", (1.0,), None),
    ("zbox:-1:1", "zbox", (), "scalar"),
    ("zbox:per-channel", "zbox", (), "channel"),
    ("flat", "flat", (), None),
    ("wsquare", "wsquare", (), None),
]
RULE_IDS = [r[0] for r in RULES]


def box(kind, channels):
    """zbox bounds: scalars, or one value per input channel (all containing [-1, 1], where x lies)."""
    if kind == "scalar":
        return -1.0, 1.0, "zbox:-1:1"
    low = [-1.0 - 0.25 * i for i in range(channels)]
    high = [1.0 + 0.5 * i for i in range(channels)]
    spec = "zbox:" + ",".join(f"{v:g}" for v in low) + ":" + ",".join(f"{v:g}" for v in high)
    return np.array(low), np.array(high), spec


def rule_override(op, entry, channels):
    spec, name, params, bounds = entry
    if bounds:
        low, high, spec = box(bounds, channels)
        return f"{op}={spec}", (low, high)
    return f"{op}={spec}", None


def seed_like(z, rng):
    """A relevance seed shaped like z: z times a random factor in [0.5, 1.5] (relevance follows z, as
    it does in a network, so no single z ~ 0 magnifies float32 rounding)."""
    return (z * rng.uniform(0.5, 1.5, z.shape)).astype(np.float32)


CONV_RULE_CASES = {
    "stride2_pads": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asym_pads": dict(strides=[2, 1], pads=[0, 1, 2, 0]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "dilation2_groups2": dict(dilations=[2, 2], pads=[2, 2, 2, 2], group=2),
    "depthwise": dict(group=4, pads=[1, 1, 1, 1], cout=4),
    "no_bias": dict(strides=[2, 2], pads=[1, 1, 1, 1], bias=False),
    "relu_input": dict(strides=[2, 2], pads=[1, 1, 1, 1], relu=True),  # a non-negative input (x- terms vanish)
}
_CASES = {}


def conv_rule_case(case):
    """(model, x, seed, x as the Conv sees it [N, I], A, bias [J], conn), built once per case."""
    if case not in _CASES:
        attrs = dict(CONV_RULE_CASES[case])
        cout, relu, with_bias = attrs.pop("cout", 6), attrs.pop("relu", False), attrs.pop("bias", True)
        cin, size = 4, (9, 8)
        net = Net([cin, *size], seed=3)
        out, _, w, b = net.conv(net.op("Relu", ["x"]) if relu else "x", cin, cout, k=3, bias=with_bias, **attrs)
        strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
        pads = onnx_pads(size, [3, 3], strides, dilations, attrs.get("pads"), attrs.get("auto_pad"))
        A, conn, (M, OH, OW) = conv_matrix(net.arrays[w], (cin, *size), strides, pads, dilations,
                                           attrs.get("group", 1))
        model = net.model(net.op("Flatten", [out], axis=1), classes=M * OH * OW)
        x = inputs([cin, *size], seed=4, low=-1.0, high=1.0)
        x_flat = (np.maximum(x, 0) if relu else x).reshape(len(x), -1).astype(np.float64)
        bias = np.repeat(net.arrays[b].astype(np.float64), OH * OW) if with_bias else None
        seed = seed_like(x_flat @ A + (0 if bias is None else bias), np.random.default_rng(5))
        _CASES[case] = (model, x, seed, x_flat, A, bias, conn)
    return _CASES[case]


@pytest.mark.parametrize("entry", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("case", list(CONV_RULE_CASES))
def test_conv_rule_matches_numpy_formula(case, entry):
    """A linear rule on a Conv: x -> (Relu) -> Conv -> Flatten = logits, target 'seed' puts a relevance at
    the Conv output; compared with the dense-matrix transcription of section 2 (override Conv=RULE)."""
    model, x, seed, x_flat, A, bias, conn = conv_rule_case(case)
    cin, pixels = x.shape[1], x.shape[2] * x.shape[3]
    override, bounds = rule_override("Conv", entry, cin)
    y, relevance = run(model, x, target="seed", seed=seed, rules=[override])
    np.testing.assert_allclose(y, x_flat @ A + (0 if bias is None else bias), rtol=1e-4, atol=1e-5)
    low = high = None
    if bounds:
        low, high = (np.broadcast_to(np.repeat(np.broadcast_to(v, cin), pixels), x_flat.shape) for v in bounds)
    assert_parity(relevance, dense_rule(entry[1], entry[2], x_flat, A, bias, seed, conn, low, high).reshape(x.shape))


GEMM_CASES = {
    "transB0": dict(transB=0, alpha=1.0, beta=1.0, bias="vector"),
    "transB1_alpha_beta": dict(transB=1, alpha=0.5, beta=2.0, bias="row"),
    "transB0_no_C": dict(transB=0, alpha=1.5, beta=1.0, bias=None),
    "transB1_beta": dict(transB=1, alpha=1.0, beta=0.5, bias="vector"),
}


@pytest.mark.parametrize("entry", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("case", list(GEMM_CASES))
def test_gemm_rule_matches_numpy_formula(case, entry):
    """A linear rule on a Gemm (transB 0/1, alpha, beta, C as [M], [1, M] or absent), x -> Gemm = logits."""
    spec = GEMM_CASES[case]
    k, m = 6, 5
    net = Net([k], seed=7)
    W = net.rng.standard_normal((m, k) if spec["transB"] else (k, m)) / np.sqrt(k)
    ins = ["x", net.const(W)]
    C = None
    if spec["bias"]:
        C = net.rng.standard_normal(m if spec["bias"] == "vector" else (1, m)) * 0.3
        ins.append(net.const(C))
    logits = net.op("Gemm", ins, transB=spec["transB"], alpha=spec["alpha"], beta=spec["beta"])
    model = net.model(logits, classes=m)
    A = spec["alpha"] * (W.T if spec["transB"] else W)
    bias = None if C is None else spec["beta"] * np.asarray(C, np.float64).reshape(-1)
    x = inputs([k], seed=8, batch=3, low=-1.0, high=1.0)
    x64 = x.astype(np.float64)
    z = x64 @ A + (0 if bias is None else bias)
    seed = seed_like(z, np.random.default_rng(9))
    override, bounds = rule_override("Gemm", entry, k)
    y, relevance = run(model, x, target="seed", seed=seed, rules=[override])
    np.testing.assert_allclose(y, z, rtol=1e-4, atol=1e-5)
    low = high = None
    if bounds:
        low, high = (np.broadcast_to(v, x.shape).astype(np.float64) for v in bounds)
    assert_parity(relevance, dense_rule(entry[1], entry[2], x64, A, bias, seed, np.ones_like(A), low, high))


def test_zbox_bounds_from_convert_options():
    """epsilon-gamma-box puts zbox on the first layer with low/high given to convert(), per channel too."""
    net = Net([3, 8, 8], seed=10)
    h, conv, w, b = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    logits = net.op("Flatten", [h], axis=1)
    model = net.model(logits, classes=4 * 64)
    low, high = np.array([-1.0, -1.5, -2.0]), np.array([1.0, 1.25, 0.75])
    x = inputs([3, 8, 8], seed=11, low=-0.75, high=0.75)
    A, conn, _ = conv_matrix(net.arrays[w], (3, 8, 8), pads=(1, 1, 1, 1))
    bias = np.repeat(net.arrays[b].astype(np.float64), 64)
    xf = x.reshape(2, -1).astype(np.float64)
    seed = seed_like(xf @ A + bias, np.random.default_rng(12))
    y, relevance = run(model, x, target="seed", seed=seed, composite="epsilon-gamma-box", low=list(low),
                       high=list(high))
    lo, hi = (np.broadcast_to(np.repeat(v, 64), xf.shape) for v in (low, high))
    assert_parity(relevance, dense_rule("zbox", (), xf, A, bias, seed, conn, lo, hi).reshape(x.shape))


# ================================================================================== target modes
def small_cnn(seed=20):
    """x [3, 8, 8] -> Conv(pad 1) -> Relu -> Flatten -> Gemm(5): (model, forward, backward, head)."""
    net = Net([3, 8, 8], seed=seed)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    a = net.op("Relu", [h])
    logits, head = net.head(a, 4 * 64)
    return net.model(logits), (lambda x: torch.relu(conv(x))), (lambda r, x: eps_rule(conv, x, r)), head


@pytest.mark.parametrize("mode", ["top", "index", "seed", "all"])
def test_target_modes(mode):
    model, forward, backward, head = small_cnn()
    x = inputs([3, 8, 8], seed=21, batch=3)
    index = np.array([4, 0, 2]) if mode == "index" else None
    seed = np.random.default_rng(22).standard_normal((3, CLASSES)).astype(np.float32) if mode == "seed" else None
    y, relevance = run(model, x, target=mode, index=index, seed=seed)
    x64 = t64(x)
    h = forward(x64)
    logits = head(h)
    np.testing.assert_allclose(y, logits.numpy(), rtol=1e-4, atol=1e-5)
    if mode in ("top", "index"):
        chosen = y.argmax(1) if mode == "top" else index
        onehot = torch.zeros_like(logits)
        onehot[torch.arange(3), torch.as_tensor(chosen)] = 1.0
        r_out = logits * onehot
    else:
        r_out = t64(seed) if mode == "seed" else logits
    ref = backward(eps_rule(head, h, r_out), x64).numpy()
    assert_parity(relevance, ref)
    if mode == "index":  # another class gives another heatmap
        _, other = run(model, x, target=mode, index=(index + 1) % CLASSES)
        assert l1(other, ref) > 1e-2


# ================================================================================== Conv, Gemm, MatMul in networks
CONV_CASES = {
    "stride2_pads": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "stride2_asym_pads": dict(strides=[2, 2], pads=[1, 0, 2, 1]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "same_upper_stride1": dict(auto_pad="SAME_UPPER", k=[3, 2]),
    "valid": dict(auto_pad="VALID", strides=[2, 2]),
    "dilation2": dict(dilations=[2, 2], pads=[2, 1, 2, 1]),
    "groups2": dict(group=2, pads=[1, 1, 1, 1]),
    "depthwise": dict(group=4, pads=[1, 1, 1, 1], cout=4),
    "no_bias": dict(bias=False, strides=[2, 2], pads=[1, 1, 1, 1]),
    "kernel1": dict(k=1),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_conv(case, rule):
    """x [4, 9, 8] -> Conv(case) -> Relu -> head; the Conv by the epsilon rule (torch autograd) or zplus."""
    attrs = dict(CONV_CASES[case])
    cout, k, with_bias = attrs.pop("cout", 6), attrs.pop("k", 3), attrs.pop("bias", True)
    net = Net([4, 9, 8], seed=30)
    h, conv, w, b = net.conv("x", 4, cout, k=k, bias=with_bias, **attrs)
    a = net.op("Relu", [h])
    with torch.no_grad():
        features = int(np.prod(conv(torch.zeros(1, 4, 9, 8, dtype=torch.float64)).shape))
    logits, head = net.head(a, features)
    x = inputs([4, 9, 8], seed=31)
    y, relevance = run(net.model(logits), x, rules=[f"Conv={rule}"])
    W, B = net.t(w), (net.t(b) if b else None)

    def linear(t, weight, bias):
        return conv_fn(weight, bias, [k, k] if isinstance(k, int) else k, **attrs)(t)

    def backward(r):
        return eps_rule(conv, t64(x), r) if rule == "epsilon" else zplus_rule(linear, t64(x), W, B, r)

    check_network(x, y, relevance, lambda t: torch.relu(conv(t)), backward, head)


GEMM_NET_CASES = {
    "transB0": dict(transB=0),
    "transB1_alpha_beta": dict(transB=1, alpha=0.7, beta=1.5),
    "no_C": dict(transB=1, bias=False),
    "C_row": dict(transB=0, row=True),
}


@pytest.mark.parametrize("case", list(GEMM_NET_CASES))
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_gemm(case, rule):
    """x [7] -> Gemm(case) -> Relu -> Gemm head; the first Gemm by epsilon or zplus (by node name)."""
    spec = dict(GEMM_NET_CASES[case])
    trans, alpha, beta = spec.get("transB", 0), spec.get("alpha", 1.0), spec.get("beta", 1.0)
    net = Net([7], seed=32)
    W = net.rng.standard_normal((6, 7) if trans else (7, 6)) / np.sqrt(7)
    C = net.rng.standard_normal((1, 6) if spec.get("row") else 6) * 0.3
    ins = ["x", net.const(W)] + ([net.const(C)] if spec.get("bias", True) else [])
    g = net.op("Gemm", ins, transB=trans, alpha=alpha, beta=beta)
    a = net.op("Relu", [g])
    logits, head = net.head(a, 6)
    x = inputs([7], seed=33, batch=3)
    y, relevance = run(net.model(logits), x, rules=[f"{net.nodes[0].name}={rule}"])
    A = t64(alpha * (W.T if trans else W))
    bias = t64(beta * np.reshape(C, -1)) if spec.get("bias", True) else None

    def backward(r):
        if rule == "epsilon":
            return eps_rule(lambda t: dense(t, A, bias), t64(x), r)
        return zplus_rule(dense, t64(x), A, bias, r)

    check_network(x, y, relevance, lambda t: torch.relu(dense(t, A, bias)), backward, head)


@pytest.mark.parametrize("rank3", [False, True], ids=["rank2", "rank3"])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_matmul_bias_add_fused(rank3, rule):
    """x -> MatMul -> Add(bias) -> Relu -> head: the Add is the layer's bias (in z of the epsilon rule and in
    b+ of zplus), for a rank-2 and a rank-3 input."""
    shape = [4, 6] if rank3 else [6]
    net = Net(shape, seed=34)
    W, B = net.rng.standard_normal((6, 5)) / np.sqrt(6), net.rng.standard_normal(5) * 0.5
    mm = net.op("MatMul", ["x", net.const(W)])
    h = net.op("Add", [mm, net.const(B)])
    a = net.op("Relu", [h])
    logits, head = net.head(a, 20 if rank3 else 5)
    x = inputs(shape, seed=35)
    model = net.model(logits)
    y, relevance = run(model, x, rules=[f"MatMul={rule}"])
    Wt, Bt = t64(W), t64(B)

    def backward(r):
        if rule == "epsilon":
            return eps_rule(lambda t: dense(t, Wt, Bt), t64(x), r)
        return zplus_rule(dense, t64(x), Wt, Bt, r)

    check_network(x, y, relevance, lambda t: torch.relu(dense(t, Wt, Bt)), backward, head)
    config = metadata.read(lrpgraph.convert(model, composite="epsilon"))[metadata.CONFIG]
    assert set(config["rules"]) == {n.name for n in model.graph.node} - {net.nodes[1].name}  # Add fused


# ================================================================================== BatchNormalization
def bn_params(net, channels, negative_scale=True):
    scale = net.rng.uniform(0.5, 1.5, channels)
    if negative_scale:
        scale[::2] *= -1  # a negative scale flips the sign of the folded weights: zplus must see W'
    values = [scale, net.rng.standard_normal(channels) * 0.2, net.rng.standard_normal(channels) * 0.2,
              net.rng.uniform(0.5, 2.0, channels)]
    return [net.const(v) for v in values]


def bn_fn(net, names, eps, rank=4):
    scale, bias, mean, var = (net.t(n) for n in names)
    shape = [1, -1] + [1] * (rank - 2)
    k = scale / torch.sqrt(var + eps)
    return (lambda t: (t - mean.reshape(shape)) * k.reshape(shape) + bias.reshape(shape)), k, bias - mean * k


@pytest.mark.parametrize("bias", ["conv_bias", "no_bias", "add_bias"])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_batchnorm_folded_after_conv(bias, rule):
    """x -> Conv (bias / none / bias as a following Add [1, M, 1, 1]) -> BatchNormalization -> Relu -> head:
    one linear layer with W' = W g / sqrt(var + e), b' = (b - mean) g / sqrt(var + e) + beta."""
    net = Net([3, 8, 8], seed=40)
    h, conv, w, b = net.conv("x", 3, 4, bias=bias == "conv_bias", pads=[1, 1, 1, 1])
    B = None if b is None else net.t(b)
    if bias == "add_bias":
        add_b = net.rng.standard_normal((1, 4, 1, 1)) * 0.3
        h = net.op("Add", [h, net.const(add_b)])
        B = t64(add_b.reshape(-1))
    names = bn_params(net, 4)
    n = net.op("BatchNormalization", [h] + names, epsilon=1e-3)
    a = net.op("Relu", [n])
    logits, head = net.head(a, 4 * 64)
    x = inputs([3, 8, 8], seed=41)
    y, relevance = run(net.model(logits), x, rules=[f"Conv={rule}"])
    _, k, shift = bn_fn(net, names, 1e-3)
    W_f = net.t(w) * k.reshape(-1, 1, 1, 1)
    B_f = (B if B is not None else 0) * k + shift

    def folded(t, weight, bias_):
        return F.conv2d(t, weight, bias_, padding=1)

    def backward(r):
        x64 = t64(x)
        if rule == "epsilon":
            return eps_rule(lambda t: folded(t, W_f, B_f), x64, r)
        return zplus_rule(folded, x64, W_f, B_f, r)

    check_network(x, y, relevance, lambda t: torch.relu(folded(t, W_f, B_f)), backward, head)


def test_batchnorm_folded_after_gemm():
    """Gemm -> BatchNormalization on [N, M]: folded per output feature (zplus sees the folded weights)."""
    net = Net([6], seed=42)
    W = net.rng.standard_normal((6, 5)) / np.sqrt(6)
    g = net.op("Gemm", ["x", net.const(W)])
    names = bn_params(net, 5)
    n = net.op("BatchNormalization", [g] + names)
    logits, head = net.head(net.op("Relu", [n]), 5)
    x = inputs([6], seed=43, batch=3)
    y, relevance = run(net.model(logits), x, rules=[f"{net.nodes[0].name}=zplus"])
    _, k, shift = bn_fn(net, names, 1e-5, rank=2)
    W_f = t64(W) * k

    check_network(x, y, relevance, lambda t: torch.relu(dense(t, W_f, shift)),
                  lambda r: zplus_rule(dense, t64(x), W_f, shift, r), head)


@pytest.mark.parametrize("where", ["before_conv", "on_input"])
def test_batchnorm_standalone_passes(where):
    """A BatchNormalization that follows no linear layer (BN -> Relu -> Conv as in DenseNet, or on the image)
    passes relevance unchanged; the Conv after it explains its own input, the BN output."""
    net = Net([3, 8, 8], seed=44)
    if where == "before_conv":
        h1, conv1, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
        a1 = net.op("Relu", [h1])
        names = bn_params(net, 4)
        n = net.op("BatchNormalization", [a1] + names)
        c_in = 4
    else:
        names = bn_params(net, 3)
        n = net.op("BatchNormalization", ["x"] + names)
        c_in = 3
    a2 = net.op("Relu", [n])
    h2, conv2, _, _ = net.conv(a2, c_in, 5, pads=[1, 1, 1, 1])
    logits, head = net.head(net.op("Relu", [h2]), 5 * 64)
    x = inputs([3, 8, 8], seed=45)
    y, relevance = run(net.model(logits), x)
    bn, _, _ = bn_fn(net, names, 1e-5)
    x64 = t64(x)
    first = (lambda t: torch.relu(conv1(t))) if where == "before_conv" else (lambda t: t)
    bn_out = bn(first(x64))
    conv2_in = torch.relu(bn_out)

    def backward(r):
        r = eps_rule(conv2, conv2_in, r)  # pass through Relu and BN
        return eps_rule(conv1, x64, r) if where == "before_conv" else r

    check_network(x, y, relevance, lambda t: torch.relu(conv2(torch.relu(bn(first(t))))), backward, head)


# ================================================================================== activations
ACTIVATIONS = {
    "Relu": (dict(), lambda t: torch.relu(t)),
    "LeakyRelu": (dict(alpha=0.2), lambda t: F.leaky_relu(t, 0.2)),
    "PRelu": ("slope", None),
    "Clip_relu6": ("clip:0:6", lambda t: t.clamp(0, 6)),
    "Clip_sym": ("clip:-0.5:0.5", lambda t: t.clamp(-0.5, 0.5)),
    "Sigmoid": (dict(), torch.sigmoid),
    "Tanh": (dict(), torch.tanh),
    "HardSigmoid": (dict(alpha=0.3, beta=0.4), lambda t: (0.3 * t + 0.4).clamp(0, 1)),
    "HardSwish": (dict(), lambda t: t * (t / 6 + 0.5).clamp(0, 1)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_passes(name):
    """x -> Conv -> activation -> head: the activation passes relevance unchanged (REFERENCE.md 2, 'pass').

    The Conv uses epsilon = 0.01 rather than 1e-6: Sigmoid and HardSigmoid pass relevance that does not
    vanish where the Conv's z does, and R / (z + 1e-6) at a z ~ 1e-5 magnifies float32 rounding of z
    beyond 1e-5 (measured: 1.1e-5 for Sigmoid); with 0.01 the comparison tests the pass rule, not rounding."""
    spec, fn = ACTIVATIONS[name]
    net = Net([3, 8, 8], seed=50)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    op = name.split("_")[0]
    if spec == "slope":
        slope = net.rng.uniform(0.05, 0.5, (4, 1, 1))
        a = net.op("PRelu", [h, net.const(slope)])
        s = t64(slope)
        fn = lambda t: torch.where(t > 0, t, t * s)  # noqa: E731
    elif isinstance(spec, str):
        low, high = (float(v) for v in spec.split(":")[1:])
        a = net.op("Clip", [h, net.const(low), net.const(high)])
    else:
        a = net.op(op, [h], **spec)
    logits, head = net.head(a, 4 * 64)
    x = inputs([3, 8, 8], seed=51)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])
    check_network(x, y, relevance, lambda t: fn(conv(t)), lambda r: eps_rule(conv, t64(x), r, 0.01), head)


# ================================================================================== gates
@pytest.mark.parametrize("kind", ["squeeze_excitation", "silu", "hardswish_clip", "hardsigmoid_gate_first"])
def test_mul_gate(kind):
    """y = x * s(x): the gate s is a constant, all relevance goes to the signal x."""
    net = Net([3, 8, 8], seed=60)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    if kind == "squeeze_excitation":
        a = net.op("Relu", [h])
        pooled = net.op("GlobalAveragePool", [a])
        s1, se1, _, _ = net.conv(pooled, 4, 2, k=1)
        s2, se2, _, _ = net.conv(net.op("Relu", [s1]), 2, 4, k=1)
        gate = net.op("Sigmoid", [s2])
        out = net.op("Mul", [a, gate])
        signal = lambda t: torch.relu(conv(t))  # noqa: E731
        gate_fn = lambda v: torch.sigmoid(se2(torch.relu(se1(v.mean((2, 3), keepdim=True)))))  # noqa: E731
    elif kind == "silu":
        out = net.op("Mul", [h, net.op("Sigmoid", [h])])
        signal, gate_fn = conv, torch.sigmoid
    elif kind == "hardswish_clip":
        clipped = net.op("Clip", [net.op("Add", [h, net.const(3.0)]), net.const(0.0), net.const(6.0)])
        out = net.op("Mul", [h, net.op("Div", [clipped, net.const(6.0)])])
        signal, gate_fn = conv, lambda v: (v + 3).clamp(0, 6) / 6
    else:
        out = net.op("Mul", [net.op("HardSigmoid", [h]), h])
        signal, gate_fn = conv, lambda v: (0.2 * v + 0.5).clamp(0, 1)
    logits, head = net.head(out, 4 * 64)
    x = inputs([3, 8, 8], seed=61)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)

    def forward(t):
        v = signal(t)
        return v * gate_fn(v)

    def backward(r):  # the gate is constant: R passes to the signal, then through Relu (pass) to the Conv
        return eps_rule(conv, x64, r)

    check_network(x, y, relevance, forward, backward, head)


def test_squeeze_excitation_exported_from_torch():
    """The same gate, from a torch module exported by the TorchScript exporter (fast; dynamo when absent)."""

    class SE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc1, self.fc2 = torch.nn.Conv2d(4, 2, 1), torch.nn.Conv2d(2, 4, 1)
            self.head = torch.nn.Linear(4 * 64, CLASSES)

        def forward(self, x):
            a = torch.relu(self.conv(x))
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(a.mean((2, 3), keepdim=True)))))
            return self.head(torch.flatten(a * s, 1))

    torch.manual_seed(0)
    module = SE().eval()
    x = inputs([3, 8, 8], seed=62)
    model = export_torch(module, torch.as_tensor(x[:1]))
    y, relevance = run(model, x)
    m64 = module.double()
    head = lambda t: m64.head(t.reshape(len(t), -1))  # noqa: E731

    def forward(t):
        a = torch.relu(m64.conv(t))
        return a * torch.sigmoid(m64.fc2(torch.relu(m64.fc1(a.mean((2, 3), keepdim=True)))))

    check_network(x, y, relevance, forward, lambda r: eps_rule(m64.conv, t64(x), r), head)


def export_torch(module, example):
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        return onnx.load_from_string(buffer.getvalue())
    except Exception:  # pragma: no cover - the TorchScript exporter is gone in this torch
        from tests.zennit_ref import export

        return onnx.load_from_string(export(module, example))


# ================================================================================== pooling
def conv_relu(net, cin=3, cout=4):
    """x -> Conv(3x3, pad 1) -> Relu: (output name, torch forward, conv function)."""
    h, conv, _, _ = net.conv("x", cin, cout, pads=[1, 1, 1, 1])
    return net.op("Relu", [h]), (lambda t: torch.relu(conv(t))), conv


MAXPOOL_CASES = {
    "overlap_3x3_s2": dict(kernel_shape=[3, 3], strides=[2, 2]),
    "pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "asym_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
    "ceil_mode": dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "ceil_mode_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "stride1": dict(kernel_shape=[2, 3], strides=[1, 1]),
}


def onnx_max_pool(t, kernel_shape, strides, pads=(0, 0, 0, 0), ceil_mode=0):
    t = F.pad(t, (pads[1], pads[3], pads[0], pads[2]), value=-np.inf)
    return F.max_pool2d(t, kernel_shape, strides, ceil_mode=bool(ceil_mode))


@pytest.mark.parametrize("case", list(MAXPOOL_CASES))
def test_max_pool(case):
    """x [3, 9, 9] -> Conv -> Relu -> MaxPool(case) -> head: winner-take-all, the gradient of torch's max pool."""
    attrs = MAXPOOL_CASES[case]
    net = Net([3, 9, 9], seed=70)
    a, forward, conv = conv_relu(net)
    pooled = net.op("MaxPool", [a], **attrs)
    pool = lambda t: onnx_max_pool(t, **attrs)  # noqa: E731
    features = int(np.prod(pool(torch.zeros(1, 4, 9, 9, dtype=torch.float64)).shape))
    logits, head = net.head(pooled, features)
    x = inputs([3, 9, 9], seed=71)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: pool(forward(t)),
                  lambda r: eps_rule(conv, x64, move(pool, forward(x64), r)), head)


def test_max_pool_overlapping_windows_add_up():
    """3x3 stride-2 windows overlap: a pixel that wins four windows receives the sum of their relevance
    (a MaxUnpool would keep only one). x -> MaxPool -> Flatten = logits, target 'seed'."""
    net = Net([1, 7, 7], seed=72)
    pooled = net.op("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2])
    model = net.model(net.op("Flatten", [pooled], axis=1), classes=9)
    rng = np.random.default_rng(73)
    x = rng.uniform(0, 1, (2, 1, 7, 7)).astype(np.float32)
    x[0, 0, 2, 2] = 5.0  # the max of windows (0, 0), (0, 1), (1, 0), (1, 1)
    x[1, 0, 4, 2] = 5.0  # the max of windows (1, 0), (1, 1), (2, 0), (2, 1)
    seed = rng.uniform(0.5, 1.5, (2, 9)).astype(np.float32)
    _, relevance = run(model, x, target="seed", seed=seed)
    grid = seed.reshape(2, 3, 3)
    assert relevance[0, 0, 2, 2] == pytest.approx(grid[0, :2, :2].sum(), rel=1e-6)
    assert relevance[1, 0, 4, 2] == pytest.approx(grid[1, 1:, :2].sum(), rel=1e-6)
    ref = move(lambda t: F.max_pool2d(t, 3, 2), t64(x), t64(seed).reshape(2, 1, 3, 3)).numpy()
    np.testing.assert_allclose(relevance, ref, rtol=1e-6, atol=1e-7)
    assert relevance.sum() == pytest.approx(seed.sum(), rel=1e-6)


def avg_pool_matrix(size, kernel, strides, pads, ceil_mode, count_include_pad):
    """P[h, w, oh, ow] = 1 / divisor where input (h, w) lies in output (oh, ow)'s window (ONNX AveragePool):
    the divisor counts the window's input values, or with count_include_pad also its padding (but not
    what a ceil_mode window hangs over beyond the padding)."""
    outs = []
    for i in range(2):
        span = size[i] + pads[i] + pads[i + 2] - kernel[i]
        n = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (n - 1) * strides[i] >= size[i] + pads[i]:
            n -= 1  # a last window may not start in the end padding
        outs.append(n)
    P = np.zeros((size[0], size[1], outs[0], outs[1]))
    for oh in range(outs[0]):
        for ow in range(outs[1]):
            h0, w0 = oh * strides[0] - pads[0], ow * strides[1] - pads[1]
            h1, w1 = h0 + kernel[0], w0 + kernel[1]
            rows = [h for h in range(h0, h1) if 0 <= h < size[0]]
            cols = [w for w in range(w0, w1) if 0 <= w < size[1]]
            if count_include_pad:
                divisor = (min(h1, size[0] + pads[2]) - h0) * (min(w1, size[1] + pads[3]) - w0)
            else:
                divisor = len(rows) * len(cols)
            for h in rows:
                for w in cols:
                    P[h, w, oh, ow] = 1.0 / divisor
    return t64(P)


AVGPOOL_CASES = {
    "k3_s1": dict(kernel_shape=[3, 3], strides=[1, 1]),
    "k3_s2_pads_cip0": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
    "k3_s2_pads_cip1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    "asym_pads_cip0": dict(kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 1, 0], count_include_pad=0),
    "asym_pads_cip1": dict(kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 1, 0], count_include_pad=1),
    "ceil_mode": dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "ceil_mode_pads_cip0": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "ceil_mode_pads_cip1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                count_include_pad=1),
}


@pytest.mark.parametrize("case", list(AVGPOOL_CASES))
def test_average_pool_norm_rule(case):
    """x [3, 9, 9] -> Conv -> Relu -> AveragePool(case) -> head: norm rule R_i = x_i A^T(R / stab(A x))."""
    attrs = AVGPOOL_CASES[case]
    net = Net([3, 10, 9], seed=80)
    a, forward, conv = conv_relu(net)
    pooled = net.op("AveragePool", [a], **attrs)
    P = avg_pool_matrix((10, 9), attrs["kernel_shape"], attrs["strides"], attrs.get("pads", [0] * 4),
                        attrs.get("ceil_mode", 0), attrs.get("count_include_pad", 0))
    pool = lambda t: torch.einsum("nchw,hwij->ncij", t, P)  # noqa: E731
    logits, head = net.head(pooled, 4 * P.shape[2] * P.shape[3])
    x = inputs([3, 10, 9], seed=81)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: pool(forward(t)),
                  lambda r: eps_rule(conv, x64, eps_rule(pool, forward(x64), r)), head)


@pytest.mark.parametrize("kind", ["GlobalAveragePool", "ReduceMean_keep1", "ReduceMean_keep0", "ReduceMean_width",
                                  "ReduceMean_opset18"])
def test_mean_norm_rule(kind):
    """GlobalAveragePool and ReduceMean (keepdims 0/1, axes as attribute or input): norm rule."""
    opset = 18 if kind.endswith("opset18") else 17
    net = Net([3, 8, 8], seed=82, opset=opset)
    a, forward, conv = conv_relu(net)
    if kind == "GlobalAveragePool":
        m = net.op("GlobalAveragePool", [a])
        mean, features = (lambda t: t.mean((2, 3), keepdim=True)), 4
    elif kind == "ReduceMean_width":
        m = net.op("ReduceMean", [a], axes=[-1], keepdims=0)
        mean, features = (lambda t: t.mean(-1)), 32
    elif kind == "ReduceMean_opset18":
        m = net.op("ReduceMean", [a, net.ints([2, 3])], keepdims=0)
        mean, features = (lambda t: t.mean((2, 3))), 4
    else:
        keep = int(kind[-1])
        m = net.op("ReduceMean", [a], axes=[2, 3], keepdims=keep)
        mean, features = (lambda t: t.mean((2, 3), keepdim=bool(keep))), 4
    logits, head = net.head(m, features)
    x = inputs([3, 8, 8], seed=83)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: mean(forward(t)),
                  lambda r: eps_rule(conv, x64, eps_rule(mean, forward(x64), r)), head)


# ================================================================================== Add / Sub / Mul / Div
@pytest.mark.parametrize("kind", ["Add", "Sub", "Add_broadcast"])
def test_residual_sum_norm_rule(kind):
    """h1 = Relu(Conv1 x), h2 = Relu(Conv2 h1), s = h1 + h2 (or h1 - h2, or h1 + GAP(h2) broadcast) -> head:
    norm rule R_k = x_k R / stab(s) (with the sign of a subtrahend); h1's relevance from both paths adds."""
    net = Net([3, 8, 8], seed=90)
    h1, forward1, conv1 = conv_relu(net)
    c2, conv2, _, _ = net.conv(h1, 4, 4, pads=[1, 1, 1, 1])
    h2 = net.op("Relu", [c2])
    if kind == "Add_broadcast":
        h2 = net.op("GlobalAveragePool", [h2])
    s = net.op(kind.split("_")[0], [h1, h2])
    logits, head = net.head(s, 4 * 64)
    x = inputs([3, 8, 8], seed=91)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    sign = -1.0 if kind == "Sub" else 1.0
    second = ((lambda t: torch.relu(conv2(t)).mean((2, 3), keepdim=True)) if kind == "Add_broadcast"
              else (lambda t: torch.relu(conv2(t))))

    def backward(r):
        a1 = forward1(x64)
        r1, r2 = norm_rule_multi(lambda u, v: u + sign * v, [a1, second(a1)], r)
        if kind == "Add_broadcast":  # the mean of GAP: norm rule
            r2 = eps_rule(lambda t: t.mean((2, 3), keepdim=True), torch.relu(conv2(a1)), r2)
        r1 = r1 + eps_rule(conv2, a1, r2)
        return eps_rule(conv1, x64, r1)

    check_network(x, y, relevance, lambda t: (lambda a: a + sign * second(a))(forward1(t)), backward, head)


@pytest.mark.parametrize("kind", ["after_relu", "after_biased_conv", "fused_into_conv"])
def test_add_constant(kind):
    """A constant added to a signal: passes relevance (after a Relu, or after a Conv that has its own bias),
    except right after a bias-free Conv, where it is that Conv's bias (in z of the epsilon rule).
    Conv epsilon 0.01: the passed relevance does not vanish where the Conv's own z does (see
    test_activation_passes)."""
    net = Net([3, 8, 8], seed=92)
    h, conv, _, _ = net.conv("x", 3, 4, bias=kind != "fused_into_conv", pads=[1, 1, 1, 1])
    const = net.rng.standard_normal((1, 4, 1, 1) if kind != "after_relu" else (4, 8, 8)) * 0.3
    if kind == "after_relu":
        h = net.op("Relu", [h])
    out = net.op("Add", [h, net.const(const)])
    if kind != "after_relu":
        out = net.op("Relu", [out])
    logits, head = net.head(out, 4 * 64)
    x = inputs([3, 8, 8], seed=93)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])
    x64, c = t64(x), t64(const)
    if kind == "after_relu":
        forward = lambda t: torch.relu(conv(t)) + c  # noqa: E731
        backward = lambda r: eps_rule(conv, x64, r, 0.01)  # noqa: E731
    elif kind == "after_biased_conv":
        forward = lambda t: torch.relu(conv(t) + c)  # noqa: E731
        backward = lambda r: eps_rule(conv, x64, r, 0.01)  # noqa: E731  (z of the Conv alone)
    else:
        forward = lambda t: torch.relu(conv(t) + c)  # noqa: E731
        backward = lambda r: eps_rule(lambda t: conv(t) + c, x64, r, 0.01)  # noqa: E731
    check_network(x, y, relevance, forward, backward, head)


def test_constant_affine_maps_pass():
    """Input normalisation in the graph: (x - mean) / std * scale + shift, (c - x), x / c: every constant
    affine map passes relevance unchanged to its signal input."""
    net = Net([3, 8, 8], seed=94)
    mean, std = np.array([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1), np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)
    t1 = net.op("Sub", ["x", net.const(mean)])
    t2 = net.op("Div", [t1, net.const(std)])
    t3 = net.op("Mul", [net.const(1.5), t2])
    t4 = net.op("Add", [net.const(np.full((8,), 0.1)), t3])
    t5 = net.op("Sub", [net.const(0.2), t4])
    t6 = net.op("Div", [t5, net.const(-2.0)])
    h, conv, _, _ = net.conv(t6, 3, 4, pads=[1, 1, 1, 1])
    logits, head = net.head(net.op("Relu", [h]), 4 * 64)
    x = inputs([3, 8, 8], seed=95, low=0.0, high=1.0)
    y, relevance = run(net.model(logits), x)
    m, s = t64(mean), t64(std)
    normalise = lambda t: (0.2 - (0.1 + 1.5 * ((t - m) / s))) / -2.0  # noqa: E731
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: torch.relu(conv(normalise(t))),
                  lambda r: eps_rule(conv, normalise(x64), r), head)


# ================================================================================== shape ops
STRUCTURE = {
    # name: (build(net, a) -> output name, torch op on a, head features)
    "Split_swap": (lambda net, a: net.op("Concat", list(reversed(
        net.op("Split", [a, net.ints([1, 3])], outputs=2, axis=1))), axis=1),
        lambda t: torch.cat([t[:, 1:], t[:, :1]], 1), 256),
    "Split_unused_output": (lambda net, a: net.op("Split", [a, net.ints([2, 2])], outputs=2, axis=1)[0],
                            lambda t: t[:, :2], 128),
    "Split_negative_axis": (lambda net, a: net.op("Split", [a, net.ints([3, 5])], outputs=2, axis=-1)[1],
                            lambda t: t[..., 3:], 4 * 8 * 5),
    "Slice": (lambda net, a: net.op("Slice", [a, net.ints([1, -6]), net.ints([7, 100]), net.ints([2, 3])]),
              lambda t: t[:, :, 1:7, 2:], 4 * 6 * 6),
    "Slice_negative_axis": (lambda net, a: net.op("Slice", [a, net.ints([1]), net.ints([3]), net.ints([-3]),
                                                            net.ints([1])]),
                            lambda t: t[:, 1:3], 128),
    "Flatten": (lambda net, a: net.op("Flatten", [a], axis=1), lambda t: t.reshape(len(t), -1), 256),
    "Reshape": (lambda net, a: net.op("Reshape", [a, net.ints([0, 8, -1])]), lambda t: t.reshape(len(t), 8, -1), 256),
    "Transpose": (lambda net, a: net.op("Transpose", [a], perm=[0, 2, 3, 1]), lambda t: t.permute(0, 2, 3, 1), 256),
    "Unsqueeze_Squeeze": (lambda net, a: net.op("Squeeze", [net.op("Unsqueeze", [a, net.ints([2])]), net.ints([2])]),
                          lambda t: t, 256),
    "Squeeze_after_pool": (lambda net, a: net.op("Squeeze", [net.op("MaxPool", [a], kernel_shape=[8, 8]),
                                                             net.ints([2, 3])]),
                           lambda t: t.amax((2, 3)), 4),
    "Pad": (lambda net, a: net.op("Pad", [a, net.ints([0, 0, 1, 2, 0, 0, 2, 1]), net.const(0.5)]),
            lambda t: F.pad(t, (2, 1, 1, 2), value=0.5), 4 * 11 * 11),
    "Identity": (lambda net, a: net.op("Identity", [a]), lambda t: t, 256),
    "Dropout": (lambda net, a: net.op("Dropout", [a], seed=1), lambda t: t, 256),
}


@pytest.mark.parametrize("name", list(STRUCTURE))
def test_shape_op_moves_relevance(name):
    """x -> Conv -> Relu -> shape op -> head: relevance moves exactly as the values move (the op's gradient)."""
    build, op, features = STRUCTURE[name]
    net = Net([3, 8, 8], seed=100)
    a, forward, conv = conv_relu(net)
    logits, head = net.head(build(net, a), features)
    x = inputs([3, 8, 8], seed=101)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: op(forward(t)),
                  lambda r: eps_rule(conv, x64, move(op, forward(x64), r)), head)


def test_concat_two_branches():
    """Concat of two Conv branches from the image: each branch gets its part; the image relevance sums."""
    net = Net([3, 8, 8], seed=102)
    a1, f1, c1 = conv_relu(net)
    a2, f2, c2 = conv_relu(net, cout=2)
    cat = net.op("Concat", [a1, a2], axis=1)
    logits, head = net.head(cat, 6 * 64)
    x = inputs([3, 8, 8], seed=103)
    y, relevance = run(net.model(logits), x)
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: torch.cat([f1(t), f2(t)], 1),
                  lambda r: eps_rule(c1, x64, r[:, :4]) + eps_rule(c2, x64, r[:, 4:]), head)


def test_concat_with_negative_constant_then_zplus():
    """Concat(Relu output, a constant with negative values) -> Conv (zplus): the constant gets no relevance,
    and the Conv's input is not non-negative, so zplus keeps its x- w- terms (denominator included)."""
    net = Net([3, 8, 8], seed=104)
    h1, conv1, w1, b1 = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    a = net.op("Relu", [h1])
    const = net.rng.standard_normal((1, 2, 8, 8))
    cat = net.op("Concat", [a, net.const(const)], axis=1)
    h2, conv2, w2, b2 = net.conv(cat, 6, 4, pads=[1, 1, 1, 1])
    logits, head = net.head(net.op("Relu", [h2]), 4 * 64)
    x = inputs([3, 8, 8], seed=105, batch=1)
    y, relevance = run(net.model(logits, batch=1), x, composite="epsilon-plus")
    x64, c = t64(x), t64(const)

    def conv_with(t, weight, bias):
        return F.conv2d(t, weight, bias, padding=1)

    def backward(r):
        r_cat = zplus_rule(conv_with, torch.cat([torch.relu(conv1(x64)), c], 1), net.t(w2), net.t(b2), r)
        return zplus_rule(conv_with, x64, net.t(w1), net.t(b1), r_cat[:, :4])

    check_network(x, y, relevance, lambda t: torch.relu(conv2(torch.cat([torch.relu(conv1(t)), c], 1))),
                  backward, head)


# ================================================================================== weights in Constant nodes
def test_constant_nodes_hold_weights():
    """Conv weight and bias, and the dense weight, stored in Constant nodes rather than initializers
    (epsilon-plus: zplus on the Conv, epsilon on the dense layer)."""
    net = Net([3, 8, 8], seed=110)
    h, conv, w, b = net.conv("x", 3, 4, pads=[1, 1, 1, 1], const_nodes=True)
    flat = net.op("Flatten", [net.op("Relu", [h])], axis=1)
    W = net.constant_node(net.rng.standard_normal((256, CLASSES)) / 16)
    B = net.constant_node(net.rng.standard_normal(CLASSES) * 0.1)
    logits = net.op("Add", [net.op("MatMul", [flat, W]), B])
    model = net.model(logits)
    assert {n.op_type for n in model.graph.node} >= {"Constant"} and not model.graph.initializer
    x = inputs([3, 8, 8], seed=111)
    y, relevance = run(model, x, composite="epsilon-plus")
    Wt, Bt = net.t(W), net.t(B)
    head = lambda t: t.reshape(len(t), -1) @ Wt + Bt  # noqa: E731

    def conv_with(t, weight, bias):
        return F.conv2d(t, weight, bias, padding=1)

    check_network(x, y, relevance, lambda t: torch.relu(conv(t)),
                  lambda r: zplus_rule(conv_with, t64(x), net.t(w), net.t(b), r), head)


# ================================================================================== output softmax
@pytest.mark.parametrize("final", ["Softmax", "LogSoftmax"])
def test_final_softmax_is_not_explained_through(final):
    """A Softmax/LogSoftmax producing the output: the model still returns it, and the relevance explains
    the pre-softmax logit of the top class."""
    net = Net([3, 8, 8], seed=120)
    a, forward, conv = conv_relu(net)
    logits, head = net.head(a, 4 * 64)
    x = inputs([3, 8, 8], seed=121)
    probs, relevance = run(net.model(logits, final=final), x)
    x64 = t64(x)
    z = head(forward(x64))
    expected = torch.softmax(z, 1) if final == "Softmax" else torch.log_softmax(z, 1)
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-4, atol=1e-6)
    check_network(x, z.numpy(), relevance, forward, lambda r: eps_rule(conv, x64, r), head)


# ================================================================================== fusion edge cases
def test_gemm_without_c_then_bias_add():
    """Gemm(beta = 0.5, no C) -> Add(bias): the Add is fused as the bias, and beta (which scales C only)
    does not scale it (zplus: b+ is in the denominator)."""
    net = Net([6], seed=130)
    W, B = net.rng.standard_normal((6, 5)) / np.sqrt(6), net.rng.standard_normal(5)
    g = net.op("Gemm", ["x", net.const(W)], beta=0.5, alpha=1.5)
    h = net.op("Add", [g, net.const(B)])
    logits, head = net.head(net.op("Relu", [h]), 5)
    x = inputs([6], seed=131, batch=3)
    y, relevance = run(net.model(logits), x, rules=[f"{net.nodes[0].name}=zplus"])
    Wt, Bt = 1.5 * t64(W), t64(B)

    check_network(x, y, relevance, lambda t: torch.relu(dense(t, Wt, Bt)),
                  lambda r: zplus_rule(dense, t64(x), Wt, Bt, r), head)


def test_batchnorm_after_rank3_matmul_is_not_folded():
    """x [N, 4, 6] -> MatMul -> BatchNormalization: BN normalises axis 1 (4), not the MatMul's output
    features (the last axis), so it cannot be folded; it is a standalone BN (pass) after the MatMul."""
    net = Net([4, 6], seed=132)
    W = net.rng.standard_normal((6, 5)) / np.sqrt(6)
    mm = net.op("MatMul", ["x", net.const(W)])
    names = bn_params(net, 4)
    n = net.op("BatchNormalization", [mm] + names)
    logits, head = net.head(net.op("Relu", [n]), 20)
    x = inputs([4, 6], seed=133)
    y, relevance = run(net.model(logits), x)
    bn, _, _ = bn_fn(net, names, 1e-5, rank=3)
    Wt = t64(W)
    check_network(x, y, relevance, lambda t: torch.relu(bn(t @ Wt)),
                  lambda r: eps_rule(lambda t: t @ Wt, t64(x), r), head)
