"""SmoothGrad: mean over n samples of grad f_c(x + sigma * eps_i); SmoothTaylor: mean over n of
(x - z_i) * grad f_c(z_i), z_i = x + sigma * eps_i; sigma = noise_level * (max - min) of each input.

The noise eps_i ~ N(0, 1) is drawn in the graph from the int64 input `noise_seed` by a counter-based
integer hash and Box-Muller, so a run is reproducible and `noise(seed, shape)` here gives the same
numbers in numpy."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper

from lrpgraph import graph
from lrpgraph.methods.gradient import gradient_plan
from lrpgraph.methods.paths import add_nodes, clone_path, expand, fold, per_target, tile
from lrpgraph.methods.units import Option, method

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Canonical
    from lrpgraph.graph import Builder
    from lrpgraph.methods.options import MethodOptions

SEED_INPUT = "noise_seed"
MASK32 = 2**32
OPTIONS = (
    Option("samples", 16, int, "SmoothGrad samples", minimum=1),
    Option("noise_level", 0.1, float, "SmoothGrad sigma / (max - min)", minimum=0, meaning="sigma / (max - min)",
           example="0.1"),
)
MIX = 0x45D9F3B  # integer hash of T. Mueller: x ^= x >> 16; x *= MIX; (twice); x ^= x >> 16


def _hash(v, seed):
    s = (v * 2654435761 + seed * 1000003 + 12345) % MASK32
    for _ in range(2):
        s = ((s ^ (s // 65536)) * MIX) % MASK32
    return s ^ (s // 65536)


def noise(seed: int, shape: tuple) -> np.ndarray:
    """The graph's standard normal noise, in numpy (float32), for references and tests."""
    count = int(np.prod(shape))
    idx = np.arange(count, dtype=np.int64)
    u1 = (_hash(2 * idx, np.int64(seed)).astype(np.float64) + 0.5) / MASK32
    u2 = (_hash(2 * idx + 1, np.int64(seed)).astype(np.float64) + 0.5) / MASK32
    return (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32).reshape(shape)


def _emit_hash(b, v, seed):
    mod, mix = b.const(MASK32, np.int64), b.const(MIX, np.int64)
    s = b.op("Mod", [b.add(b.add(b.mul(v, b.const(2654435761, np.int64)), b.mul(seed, b.const(1000003, np.int64))),
                           b.const(12345, np.int64)), mod], "mod")
    for _ in range(2):
        s = b.op("Mod", [b.mul(_emit_xorshift(b, s), mix), mod], "mod")
    return _emit_xorshift(b, s)


def _emit_xorshift(b, s):
    """s ^ (s >> 16) for 0 <= s < 2^32 without BitwiseXor (opset 18; models may be opset 17): only the low
    16 bits change, XOR-ed with the high 16 bits byte by byte through a 256 x 256 table (Gather)."""
    table = b.const(np.bitwise_xor.outer(np.arange(256), np.arange(256)).reshape(-1), np.int64)
    k16, k8 = b.const(65536, np.int64), b.const(256, np.int64)
    high, low = b.div(s, k16), b.op("Mod", [s, k16], "low16")
    out = b.sub(s, low)
    for scale in (1, 256):
        lo_byte = b.op("Mod", [b.div(low, b.const(scale, np.int64)), k8], "byte")
        hi_byte = b.op("Mod", [b.div(high, b.const(scale, np.int64)), k8], "byte")
        xored = b.op("Gather", [table, b.add(b.mul(lo_byte, k8), hi_byte)], "xor_byte", axis=0)
        out = b.add(out, b.mul(xored, b.const(scale, np.int64)))
    return out


def emit_noise(b: "Builder", shape_tensor: str, seed: str) -> str:
    """Standard normal noise of a dynamic shape (an int64 shape tensor), float32."""
    count = b.op("ReduceProd", [shape_tensor], "count", keepdims=0)
    idx = b.op("Range", [b.const(0, np.int64), count, b.const(1, np.int64)], "index")
    two = b.const(2, np.int64)
    uniforms = []
    for offset in (0, 1):
        h = _emit_hash(b, b.add(b.mul(idx, two), b.const(offset, np.int64)), seed)
        u = b.div(b.add(b.op("Cast", [h], "to_double", to=TensorProto.DOUBLE), b.const(0.5, np.float64)),
                  b.const(float(MASK32), np.float64))
        uniforms.append(u)
    radius = b.op("Sqrt", [b.mul(b.op("Log", [uniforms[0]], "log"), b.const(-2.0, np.float64))], "radius")
    angle = b.op("Cos", [b.mul(uniforms[1], b.const(2 * np.pi, np.float64))], "angle")
    z = b.op("Cast", [b.mul(radius, angle)], "to_float", to=TensorProto.FLOAT)
    return b.op("Reshape", [z, shape_tensor], "noise")


@method("smoothgrad", OPTIONS, per_token="norm")
def smoothgrad(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str, options: "MethodOptions",
               walk: Callable) -> tuple:
    """SmoothGrad: the mean gradient at noisy copies of the input."""
    return emit(b, model, canon, seed, options, walk)


@method("smoothtaylor", OPTIONS)
def smoothtaylor(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str, options: "MethodOptions",
                 walk: Callable) -> tuple:
    """SmoothTaylor: the mean first-order Taylor term from noisy copies of the input."""
    return emit(b, model, canon, seed, options, walk, taylor=True)


def emit(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str, options: "MethodOptions",
         walk: Callable, taylor: bool = False) -> tuple:
    """SmoothGrad (or with taylor, SmoothTaylor) of canon's explained input; (heatmap, [the noise_seed input])."""
    samples = int(options.samples)
    level = float(options.noise_level)
    x = canon.input
    rank = len(canon.input_shape)
    b.scope = "noise"
    axes = list(range(1, rank))
    spread = b.sub(_reduce(b, model, "ReduceMax", x, axes), _reduce(b, model, "ReduceMin", x, axes))
    sigma = b.mul(spread, b.const(level))
    shape = b.op("Concat", [b.ints([samples]), b.op("Shape", [x], "shape")], "noise_shape", axis=0)
    seed_input = helper.make_tensor_value_info(SEED_INPUT, TensorProto.INT64, [1])
    seed_input.doc_string = "seed of the in-graph Gaussian noise (SmoothGrad/SmoothTaylor), int64 [1]"
    offsets = b.mul(emit_noise(b, shape, SEED_INPUT), sigma)  # [n, N, ...] (sigma broadcasts per sample)
    noisy = b.add(offsets, b.op("Unsqueeze", [x, b.ints([0])], "unsqueeze"))
    points = expand(b, per_target(b, noisy, canon, 1, rank + 1), x)  # K targets: the same noise for each
    nodes, clone = clone_path(model, canon, points, f"{b.prefix}/noisy", b, samples)
    add_nodes(b, nodes)
    grad = walk(clone, gradient_plan(clone.units), tile(b, seed, samples, len(canon.shapes[canon.logits])))
    b.scope = "output"
    x_k = per_target(b, x, canon, 0, rank)
    if grad is None:
        return b.zeros_like(x_k), [seed_input]
    grad = fold(b, grad, x_k, samples)
    if taylor:  # (x - z_i) = -offset_i
        grad = b.mul(grad, b.op("Neg", [per_target(b, offsets, canon, 1, rank + 1)], "neg"))
    mean = b.mul(b.op("ReduceSum", [grad, b.ints([0])], "sum", keepdims=0), b.const(1.0 / samples))
    return mean, [seed_input]


def _reduce(b, model, op, x, axes):
    """ReduceMax / ReduceMin over axes, keepdims: axes are an attribute before opset 18, an input from 18."""
    if graph.opset_of(model) >= 18:
        return b.op(op, [x, b.ints(axes)], op[6:].lower(), keepdims=1)
    return b.op(op, [x], op[6:].lower(), axes=list(axes), keepdims=1)
