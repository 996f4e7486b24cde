"""Per-op parity for lrpgraph/converters/linear.py: Conv, Gemm and MatMul under every linear rule (against a
literal transcription of docs/rules.md's linear rules on the layer's dense matrix) and inside small networks.
Fused and folded layers: test_linear_fused.py. References and helpers: ops_helpers."""

import functools

import numpy as np
import pytest
import torch
from ops_helpers import (STAB, Net, assert_l1, check_network, conv_fn, dense, eps_rule, inputs, onnx_pads, run, t64,
                         zplus_rule)


# ======================================================================= the linear rules of docs/rules.md
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
    """docs/rules.md's linear rules, literally: x [N, I], A [I, J], bias [J] (or None), R [N, J] -> R_in [N, I]."""
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
    # stride 1, 12 input channels or more: the adjoint is a Conv with the flipped kernel (flipped_kernel)
    "stride1_asym_pads": dict(pads=[0, 1, 2, 0], cin=12),
    "stride1_groups12_cout24": dict(group=12, pads=[1, 1, 1, 1], cin=12, cout=24),  # one input channel per group
    "stride1_groups2_cout2": dict(group=2, pads=[1, 1, 1, 1], cin=12, cout=2),  # one output channel per group
    "stride1_pads_beyond_kernel": dict(pads=[3, 0, 0, 3], cin=12),  # no Conv adjoint: ConvTranspose
    "stride1_few_channels": dict(pads=[1, 1, 1, 1]),  # 4 input channels: ConvTranspose (faster there)
}


@functools.cache
def conv_rule_case(case):
    """(model, x, x as the Conv sees it [N, I], A, bias [J], conn, seed), built once per case."""
    attrs = dict(CONV_RULE_CASES[case])
    cout, relu, with_bias = attrs.pop("cout", 6), attrs.pop("relu", False), attrs.pop("bias", True)
    cin, size = attrs.pop("cin", 4), (9, 8)
    net = Net([cin, *size], seed=3)
    out, _, w, b = net.conv(net.op("Relu", ["x"]) if relu else "x", cin, cout, k=3, bias=with_bias, **attrs)
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    pads = onnx_pads(size, [3, 3], strides, dilations, attrs.get("pads"), attrs.get("auto_pad"))
    A, conn, (M, OH, OW) = conv_matrix(net.arrays[w], (cin, *size), strides, pads, dilations, attrs.get("group", 1))
    model = net.model(net.op("Flatten", [out], axis=1), classes=M * OH * OW)
    x = inputs([cin, *size], seed=4, low=-1.0, high=1.0)
    x_flat = (np.maximum(x, 0) if relu else x).reshape(len(x), -1).astype(np.float64)
    bias = np.repeat(net.arrays[b].astype(np.float64), OH * OW) if with_bias else None
    return model, x, x_flat, A, bias, conn, 5


GEMM_CASES = {
    "transB0": dict(transB=0, alpha=1.0, beta=1.0, bias="vector"),
    "transB1_alpha_beta": dict(transB=1, alpha=0.5, beta=2.0, bias="row"),
    "transB0_no_C": dict(transB=0, alpha=1.5, beta=1.0, bias=None),
    "transB1_beta": dict(transB=1, alpha=1.0, beta=0.5, bias="vector"),
}


@functools.cache
def gemm_rule_case(case):
    """The same for a Gemm (transB 0/1, alpha, beta, C as [M], [1, M] or absent), x -> Gemm = logits."""
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
    return model, x, x.astype(np.float64), A, bias, np.ones_like(A), 9


def check_rule_table(op, entry, model, x, x_flat, A, bias, conn, seed_rng):
    """Override op=RULE, target 'seed' puts a relevance (seed_like z) at the layer's output z = x A + bias, the
    logits; the relevance is compared with the dense-matrix transcription of section 2. zbox bounds are given
    per input channel (axis 1 of x), each repeated over the channel's pixels."""
    z = x_flat @ A + (0 if bias is None else bias)
    seed = seed_like(z, np.random.default_rng(seed_rng))
    channels = x.shape[1]
    override, bounds = rule_override(op, entry, channels)
    y, relevance = run(model, x, target="seed", seed=seed, rules=[override])
    np.testing.assert_allclose(y, z, rtol=1e-4, atol=1e-5)
    low = high = None
    if bounds:
        pixels = x_flat.shape[1] // channels
        low, high = (np.broadcast_to(np.repeat(np.broadcast_to(v, channels), pixels), x_flat.shape) for v in bounds)
    assert_l1(relevance, dense_rule(entry[1], entry[2], x_flat, A, bias, seed, conn, low, high).reshape(x.shape))


@pytest.mark.parametrize("entry", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("case", list(CONV_RULE_CASES))
def test_conv_rule_matches_numpy_formula(case, entry):
    """A linear rule on a Conv: x -> (Relu) -> Conv -> Flatten = logits, target 'seed' puts a relevance at
    the Conv output; compared with the dense-matrix transcription of section 2 (override Conv=RULE)."""
    check_rule_table("Conv", entry, *conv_rule_case(case))


@pytest.mark.parametrize("entry", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("case", list(GEMM_CASES))
def test_gemm_rule_matches_numpy_formula(case, entry):
    """A linear rule on a Gemm (transB 0/1, alpha, beta, C as [M], [1, M] or absent), x -> Gemm = logits."""
    check_rule_table("Gemm", entry, *gemm_rule_case(case))


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
    assert_l1(relevance, dense_rule("zbox", (), xf, A, bias, seed, conn, lo, hi).reshape(x.shape))


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
