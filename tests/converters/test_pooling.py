"""Per-op parity for lrpgraph/converters/pooling.py: MaxPool (winner-take-all), AveragePool,
GlobalAveragePool and ReduceMean (norm rule). References and helpers: ops_helpers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import lrpgraph
from ops_helpers import Net, check_op_after_conv_relu, conv_relu, eps_rule, move, run, t64

MAXPOOL_CASES = {
    "overlap_3x3_s2": dict(kernel_shape=[3, 3], strides=[2, 2]),
    "pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "asym_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
    "ceil_mode": dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "ceil_mode_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "stride1": dict(kernel_shape=[2, 3], strides=[1, 1]),
    # windows that tile the input: routed without MaxPool's Indices (pooling._route_tiled)
    "tiling_3x3": dict(kernel_shape=[3, 3], strides=[3, 3]),
    "tiling_2x2_floor": dict(kernel_shape=[2, 2], strides=[2, 2]),  # 9 x 9: the last row and column get none
}


def onnx_max_pool(t, kernel_shape, strides, pads=(0, 0, 0, 0), ceil_mode=0):
    t = F.pad(t, (pads[1], pads[3], pads[0], pads[2]), value=-np.inf)
    return F.max_pool2d(t, kernel_shape, strides, ceil_mode=bool(ceil_mode))


@pytest.mark.parametrize("webgpu", [False, True], ids=["indices", "webgpu"])
@pytest.mark.parametrize("case", list(MAXPOOL_CASES))
def test_max_pool(case, webgpu):
    """x [3, 9, 9] -> Conv -> Relu -> MaxPool(case) -> head: winner-take-all, the gradient of torch's max pool
    (through MaxPool's indices, or with --webgpu through the Conv unfold, which uses none of them)."""
    attrs = MAXPOOL_CASES[case]
    net = Net([3, 9, 9], seed=70)
    a, forward, conv = conv_relu(net)
    pooled = net.op("MaxPool", [a], **attrs)
    pool = lambda t: onnx_max_pool(t, **attrs)  # noqa: E731
    features = int(np.prod(pool(torch.zeros(1, 4, 9, 9, dtype=torch.float64)).shape))
    check_op_after_conv_relu(net, pooled, features, forward, conv, pool, move, x_seed=71, webgpu=webgpu)


@pytest.mark.parametrize("webgpu", [False, True], ids=["indices", "webgpu"])
def test_max_pool_overlapping_windows_add_up(webgpu):
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
    _, relevance = run(model, x, target="seed", seed=seed, webgpu=webgpu)
    grid = seed.reshape(2, 3, 3)
    assert relevance[0, 0, 2, 2] == pytest.approx(grid[0, :2, :2].sum(), rel=1e-6)
    assert relevance[1, 0, 4, 2] == pytest.approx(grid[1, 1:, :2].sum(), rel=1e-6)
    ref = move(lambda t: F.max_pool2d(t, 3, 2), t64(x), t64(seed).reshape(2, 1, 3, 3)).numpy()
    np.testing.assert_allclose(relevance, ref, rtol=1e-6, atol=1e-7)
    assert relevance.sum() == pytest.approx(seed.sum(), rel=1e-6)


def test_webgpu_option_avoids_ops_webgpu_lacks():
    """--webgpu: no ScatterElements, Min, Sum or MaxPool with indices in the relevance graph; ties in a window go
    to its first maximum in row-major order, as MaxPool's indices give them."""
    net = Net([1, 4, 4], seed=74)
    pooled = net.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])
    model = net.model(net.op("Flatten", [pooled], axis=1), classes=4)
    x = np.zeros((1, 1, 4, 4), np.float32)  # every window a tie
    x[0, 0, 3, 2:] = 1.0  # ... except the last one: its first maximum is (3, 2)
    seed = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    converted = lrpgraph.convert(model, target="seed", composite="epsilon", webgpu=True)
    used = {n.op_type for n in converted.graph.node if n.name.startswith("lrp/")}
    assert not used & {"ScatterElements", "Min", "Sum", "MaxUnpool"}
    assert all(len(n.output) == 1 for n in converted.graph.node if n.op_type == "MaxPool")
    _, relevance = run(model, x, target="seed", seed=seed, webgpu=True)
    expected = np.zeros((4, 4), np.float32)
    expected[0, 0], expected[0, 2], expected[2, 0], expected[3, 2] = seed[0]
    np.testing.assert_array_equal(relevance[0, 0], expected)
    _, by_indices = run(model, x, target="seed", seed=seed)
    np.testing.assert_array_equal(by_indices, relevance)


@pytest.mark.parametrize("kernel", [[2, 2], [2, 3]])
def test_tiled_max_pool_ties_go_to_the_first(kernel):
    """Windows that tile the input, with ties (whole windows of zeros, equal maxima): all of R_j goes to
    the first maximum in row-major order, as torch's max pool gradient (and MaxPool's Indices) route it."""
    net = Net([2, 6, 6], seed=74)
    pooled = net.op("MaxPool", ["x"], kernel_shape=kernel, strides=kernel)
    out = [6 // kernel[0], 6 // kernel[1]]
    model = net.model(net.op("Flatten", [pooled], axis=1), classes=2 * out[0] * out[1])
    rng = np.random.default_rng(75)
    x = rng.choice(np.array([0.0, 0.5, 1.0], np.float32), size=(3, 2, 6, 6))
    x[0] = 0.0  # every window a tie
    seed = rng.uniform(0.5, 1.5, (3, 2 * out[0] * out[1])).astype(np.float32)
    _, relevance = run(model, x, target="seed", seed=seed)
    ref = move(lambda t: F.max_pool2d(t, kernel, kernel), t64(x), t64(seed).reshape(3, 2, *out)).numpy()
    np.testing.assert_array_equal(relevance, ref.astype(np.float32))
    assert ((relevance != 0).sum(axis=(2, 3)) <= out[0] * out[1]).all()  # one winner per window


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
    """x [3, 10, 9] -> Conv -> Relu -> AveragePool(case) -> head: norm rule R_i = x_i A^T(R / stab(A x))."""
    attrs = AVGPOOL_CASES[case]
    net = Net([3, 10, 9], seed=80)
    a, forward, conv = conv_relu(net)
    pooled = net.op("AveragePool", [a], **attrs)
    P = avg_pool_matrix((10, 9), attrs["kernel_shape"], attrs["strides"], attrs.get("pads", [0] * 4),
                        attrs.get("ceil_mode", 0), attrs.get("count_include_pad", 0))
    pool = lambda t: torch.einsum("nchw,hwij->ncij", t, P)  # noqa: E731
    check_op_after_conv_relu(net, pooled, 4 * P.shape[2] * P.shape[3], forward, conv, pool, eps_rule, x_seed=81)


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
    check_op_after_conv_relu(net, m, features, forward, conv, mean, eps_rule, x_seed=83)
