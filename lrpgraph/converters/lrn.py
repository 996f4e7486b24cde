"""LocalResponseNormalization (AlexNet, GoogLeNet, ZFNet): y_c = x_c / d_c^beta with
d_c = bias + alpha / size * sum of x_j^2 over the channels j in c's window.

LRP treats the normaliser d as a constant (as AttnLRP does for LayerNorm, docs/transformers.md): y is then x times a
positive factor per element, so relevance passes unchanged ('pass', what every LRP composite gives it).
Gradient-family rule sets ('gradient': the methods and LRP-Flex) get the true derivative, d included:

    dL/dx_c = g_c d_c^-beta - (2 alpha beta / size) x_c sum_{j: c in window(j)} g_j x_j d_j^(-beta-1)"""

from types import SimpleNamespace
from typing import TYPE_CHECKING

from lrpgraph.catalog import Context
from lrpgraph.converters.registry import converts
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


def channel_window_sum(ctx: Context, t: str, channels: int, rank: int, before: int, after: int) -> str:
    """s_c = sum of t_j for j from c - before to c + after (zeros outside the channels)."""
    b = ctx.b
    pads = [0] * (2 * rank)
    pads[1], pads[rank + 1] = before, after
    padded = b.op("Pad", [t, b.ints(pads)], "pad")
    parts = [b.op("Slice", [padded, b.ints([k]), b.ints([k + channels]), b.ints([1])], "window")
             for k in range(before + after + 1)]
    return b.sum(parts)


@converts("LRN")
def lrn(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """Primitives: the gradient (the module docstring's formula)."""
    op = SimpleNamespace(place=lambda t: [t], gradient=lambda r: _gradient(ctx, unit, r))
    return rule.emitter("normaliser", unit)(ctx, unit, rule, r_outs, op)


def _gradient(ctx, unit, r):
    b, x, attrs = ctx.b, unit.inputs[0], unit.attrs
    shape = ctx.shape(x, unit)
    size = int(attrs["size"])
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    low, high = (size - 1) // 2, size - 1 - (size - 1) // 2  # ONNX: floor before the channel, ceil after
    square_sum = channel_window_sum(ctx, b.mul(x, x), shape[1], len(shape), low, high)
    d = b.add(b.mul(square_sum, b.const(alpha / size)), b.const(bias))
    direct = b.mul(r, b.op("Pow", [d, b.const(-beta)], "pow"))
    inner = b.mul(b.mul(r, x), b.op("Pow", [d, b.const(-beta - 1.0)], "pow"))
    spread = channel_window_sum(ctx, inner, shape[1], len(shape), high, low)  # the transposed window
    return b.sub(direct, b.mul(b.mul(x, spread), b.const(2.0 * alpha * beta / size)))
