"""Shared pieces of the per-op parity tests (tests/converters/test_*.py): every supported op, in a tiny
model, against an independent transcription of its rule.

References are written from docs/rules.md's formulas, in float64, and share no code with lrpgraph:
- linear rules (section 2): a direct numpy transcription on the layer's dense matrix A (a Conv is
  unrolled into A[input pixel, output pixel] by loops over its window), with the contributions
  x_i w_ij formed by einsum;
- epsilon / norm rules inside small networks: torch autograd, R_in = x * grad(z, x, R / stab(z));
- max pooling: torch's max_pool2d gradient (winner-take-all, overlapping windows add up);
- shape ops: the gradient of the same torch op (relevance moves exactly as the values move);
- activations, standalone BatchNorm, gates, Add/Sub/Mul/Div by constants: pass (R unchanged).

Most models are built with onnx.helper (Net below), so that each op and attribute is exactly the one under
test, and end in Flatten + Gemm ("head") so that the output is [N, C] logits. The composite is 'epsilon'
(every linear layer epsilon with eps = 1e-6) unless a test says otherwise. Tolerance: L1 relative 1e-5.

The test files import this module by name: pytest puts this folder (which has no __init__.py) on sys.path,
as it does tests/train/ for fashion_data.
"""

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import lrpgraph

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


def assert_l1(relevance, ref, tol=TOL):
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
    """Epsilon rule through an affine map f (bias included in z); with eps = stabilizer it is the norm rule
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
    assert_l1(relevance, backward(eps_rule(head, h, seed.detach())).numpy(), tol)


def inputs(shape, seed=1, batch=2, low=None, high=None):
    rng = np.random.default_rng(seed)
    if low is not None:
        return rng.uniform(low, high, [batch] + list(shape)).astype(np.float32)
    return rng.standard_normal([batch] + list(shape)).astype(np.float32)


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


# ================================================================================== an op after Conv -> Relu
def conv_relu(net, cin=3, cout=4):
    """x -> Conv(3x3, pad 1) -> Relu: (output name, torch forward, conv function)."""
    h, conv, _, _ = net.conv("x", cin, cout, pads=[1, 1, 1, 1])
    return net.op("Relu", [h]), (lambda t: torch.relu(conv(t))), conv


def check_op_after_conv_relu(net, out, features, forward, conv, op, rule, x_seed, **options):
    """x -> Conv -> Relu (conv_relu: forward, conv) -> op (ONNX output `out`, torch function `op`) -> head:
    the op carries relevance by rule(op, input, R) (move for a value-moving op, eps_rule for the norm rule),
    then the Conv by epsilon."""
    logits, head = net.head(out, features)
    x = inputs(net.x_shape, seed=x_seed)
    y, relevance = run(net.model(logits), x, **options)
    x64 = t64(x)
    check_network(x, y, relevance, lambda t: op(forward(t)),
                  lambda r: eps_rule(conv, x64, rule(op, forward(x64), r)), head)
