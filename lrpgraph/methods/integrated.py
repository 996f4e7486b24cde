"""Integrated gradients: (x - x') * sum_k w_k grad f_c(x' + a_k (x - x')), with the Riemann right sum
(a_k = k/m, w_k = 1/m) or Gauss-Legendre nodes on [0, 1]; the baseline x' is zero, a blurred copy of
the input, or a graph input `baseline`. Guided IG uses guided gradients (only positive gradients pass
ReLU-like units and MaxPool). Steps lie along the batch axis; `chunk` steps per cloned forward path
(default 4) bound the memory of large step counts and keep each path's batch small: measured on resnet18 with
one thread (docs/speed.md), 32 steps in one batch of 32 cost 1.04x 32 separate gradient calls, in chunks of 4
0.99-1.01x (chunks of 8: 1.01-1.05x)."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper

from lrpgraph.errors import LrpgraphError
from lrpgraph.methods.gradient import gradient_plan
from lrpgraph.methods.paths import add_nodes, clone_path, expand, fold, per_target, tile
from lrpgraph.methods.units import Option, method

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Canonical
    from lrpgraph.graph import Builder
    from lrpgraph.methods.options import MethodOptions

BASELINE_INPUT = "baseline"
DEFAULT_CHUNK = 4  # steps per cloned forward path unless asked otherwise
OPTIONS = (
    Option("steps", 32, int, "IG path steps", minimum=1),
    Option("quadrature", "riemann", str, "IG path sum: right Riemann sum or Gauss-Legendre nodes",
           choices=("riemann", "gauss-legendre")),
    Option("baseline", "zero", str, "IG baseline: zeros, a blurred copy of the image, or a graph input `baseline`",
           choices=("zero", "blur", "input")),
    Option("chunk", None, int, "IG steps per cloned forward pass (bounds memory for large step counts; default "
           f"{DEFAULT_CHUNK})", minimum=1),
)


def quadrature(steps: int, rule: str = "riemann") -> tuple:
    """(points a_k in [0, 1], weights w_k) of the path integral."""
    if steps < 1:
        raise LrpgraphError(f"steps must be at least 1 (got {steps})")
    if rule == "riemann":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    raise LrpgraphError(f"unknown quadrature '{rule}'; use riemann or gauss-legendre")


def zero_baseline(name: str, options: "MethodOptions") -> None:
    """On a text model IG starts from the zero embedding: refuse another baseline."""
    if options.baseline != "zero":
        raise LrpgraphError(f"{name} on a text model starts from the zero embedding; the baseline "
                            f"'{options.baseline}' applies to image inputs only (use --baseline zero)")


@method("ig", OPTIONS, text_check=zero_baseline)
def ig(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str, options: "MethodOptions",
       walk: Callable) -> tuple:
    """Integrated gradients."""
    return emit(b, model, canon, seed, options, walk)


@method("guided-ig", OPTIONS, text_check=zero_baseline)
def guided_ig(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str, options: "MethodOptions",
              walk: Callable) -> tuple:
    """Guided integrated gradients: integrated guided gradients."""
    return emit(b, model, canon, seed, options, walk, guided=True)


def emit(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str, options: "MethodOptions",
         walk: Callable, guided: bool = False) -> tuple:
    """(x - x') * the weighted sum of the (guided) gradients at the path points; (heatmap, [new inputs])."""
    steps = int(options.steps)
    points, weights = quadrature(steps, options.quadrature)
    chunk = int(options.chunk or min(steps, DEFAULT_CHUNK))
    x = canon.input
    b.scope = "baseline"
    baseline, inputs = _baseline(b, model, canon, options.baseline)
    diff = b.sub(x, baseline) if baseline else x
    rank = len(canon.input_shape)
    x_k, diff_k = per_target(b, x, canon, 0, rank), per_target(b, diff, canon, 0, rank)
    total = None
    for start in range(0, steps, chunk):
        a, w = points[start:start + chunk], weights[start:start + chunk]
        m = len(a)
        prefix = f"{b.prefix}/path{start // chunk}"
        b.scope = f"path{start // chunk}"
        column = [m] + [1] * (rank + 0)
        moved = b.mul(b.const(a.reshape(column)), b.op("Unsqueeze", [diff, b.ints([0])], "unsqueeze"))
        if baseline:
            moved = b.add(moved, b.op("Unsqueeze", [baseline, b.ints([0])], "unsqueeze"))
        expanded = expand(b, per_target(b, moved, canon, 1, rank + 1), x)
        nodes, clone = clone_path(model, canon, expanded, prefix, b, m)
        add_nodes(b, nodes)
        grad = walk(clone, gradient_plan(clone.units, guided), tile(b, seed, m, len(canon.shapes[canon.logits])))
        b.scope = f"path{start // chunk}"
        if grad is None:
            continue
        summed = b.op("ReduceSum", [b.mul(fold(b, grad, x_k, m), b.const(w.reshape(column))), b.ints([0])],
                      "integrate", keepdims=0)
        total = summed if total is None else b.add(total, summed)
    b.scope = "output"
    return (b.zeros_like(x_k) if total is None else b.mul(diff_k, total)), inputs


def _baseline(b, model, canon, kind):
    """(baseline tensor or None for zero, [new inputs])."""
    if kind == "zero":
        return None, []
    if kind == "input":
        image = next(i for i in model.graph.input if i.name == canon.input)
        info = helper.make_tensor_value_info(BASELINE_INPUT, TensorProto.FLOAT, None)
        info.type.CopyFrom(image.type)
        info.doc_string = "integrated gradients baseline x', shaped like the image"
        return BASELINE_INPUT, [info]
    if kind == "blur":
        return blur(b, canon.input, canon.input_shape), []
    raise LrpgraphError(f"unknown baseline '{kind}'; use zero, blur or input")


def blur(b: "Builder", x: str, shape: list, size: int = 11, sigma: float = 5.0) -> str:
    """Gaussian blur per channel (kernel 11, sigma 5, as RISE's insertion metric), zero padding."""
    if len(shape) != 4:
        raise LrpgraphError("the blurred baseline needs an image input [N, C, H, W]")
    channels = shape[1]
    t = np.arange(size) - size // 2
    g = np.exp(-t**2 / (2 * sigma**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    weight = np.tile(kernel[None, None], (channels, 1, 1, 1)).astype(np.float32)
    pad = size // 2
    return b.op("Conv", [x, b.const(weight)], "blur", pads=[pad] * 4, group=channels)
