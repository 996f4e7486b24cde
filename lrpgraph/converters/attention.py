"""Transformer ops (AttnLRP and CP-LRP, docs/transformers.md): a Softmax inside the graph, products of two signals
(attention's Q K^T and A V as MatMul or Einsum, an element-wise a * b), Gather by constant indices (a class token, a
fused qkv) and of token ids (the embedding table), Expand, Where, GELU, and the linear layers and
activations under the transformer composites.

The composites attn-lrp and cp-lrp carry the message g_t = R_t / t back through the graph (the gradient
form LXT computes; the heatmap is x * g): only linear layers, element-wise activations, LayerNorm and
products change the plain gradient, so no relevance is divided by a value that may be near zero.
- linear layer, an LRP rule of rules.py: g_x = R_x / x with R_x the rule's relevance for R_y = y g_y
  (epsilon: g_x = W^T (g_y y / stab(y)), no division by x; linear.py);
- element-wise activation, 'identity' (AttnLRP's identity rule R_x = R_y): g_x = g_y f(x) / x (activations.py);
- product y = a (x) b (MatMul, Einsum or Mul of two signals): 'uniform' (AttnLRP) each operand gets half of the
  product rule's gradient; 'cp' (CP-LRP) the operand computed by a Softmax (the attention probabilities,
  unit.gate) is a constant and the other operand gets the full gradient (without a Softmax operand, as
  'uniform'); 'gradient' the product rule; under the LRP composites (relevance) 'uniform' gives R_a = a * ga / 2
  with ga the product rule's share of R_y / stab(y), AttnLRP's rule as LXT's gradient form computes it;
- Softmax, Gather, Expand, Where, Cast: the plain gradient (a Softmax inside the graph under AttnLRP
  is its gradient: R_z = z (R_s - s sum R_s)); under the LRP composites the attention probabilities' Softmax
  takes 'softmax', that rule in relevance form."""

import math
import string
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.catalog import Context
from lrpgraph.converters.activations import derivative_of
from lrpgraph.converters.registry import converts
from lrpgraph.converters.structure import unbroadcast
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.graph import size_order
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    from lrpgraph.catalog import Unit


@converts("Softmax", kind="normaliser")  # a Softmax inside the graph (the one at the output is the head)
def softmax(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """A Softmax inside the graph; primitives: its gradient s (r - sum(s r))."""
    b, s = ctx.b, unit.outputs[0]
    axes = b.ints([int(unit.attrs.get("axis", -1))])

    def gradient(r):
        inner = b.op("ReduceSum", [b.mul(s, r), axes], "sum", keepdims=1)
        return b.mul(s, b.sub(r, inner))

    op = SimpleNamespace(place=lambda t: [t], gradient=gradient,
                         total=lambda r: b.op("ReduceSum", [r, axes], "total", keepdims=1))
    return rule.emitter("normaliser", unit)(ctx, unit, rule, r_outs, op)


def _matmul_back(ctx, unit, s):
    """(d<s, a @ b>/da, d<s, a @ b>/db) for y = a @ b, with broadcast batch axes summed away."""
    b = ctx.b
    a_name, b_name = unit.inputs[:2]
    ra, rb = len(ctx.shapes[a_name]), len(ctx.shapes[b_name])
    if ra < 2 or rb < 2:
        raise UnsupportedModelError(f"node '{unit.name}' (MatMul): products of two signals need operands of rank "
                                    ">= 2 (got ranks {ra}, {rb})")

    rank = max(ra, rb)
    ga = b.op("MatMul", [s, _t(b, b_name, rb)], "grad_a")
    gb = b.op("MatMul", [_t(b, a_name, ra), s], "grad_b")
    out = unit.outputs[0]
    return _sum_to(ctx, ga, a_name, out, rank), _sum_to(ctx, gb, b_name, out, rank)


def _sum_to(ctx, g, operand, out, rank):
    """A MatMul operand's gradient summed over the batch axes it was broadcast along."""
    b = ctx.b
    shape = ctx.shapes[operand]
    out_shape = ctx.shapes.get(out) or [None] * rank
    lead = rank - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape[:-2])
                                if d == 1 and out_shape[lead + i] != 1]
    if not axes:
        return g
    g = b.op("ReduceSum", [g, b.ints(axes)], "unbroadcast", keepdims=1)
    return b.reshape_like(g, operand) if lead else g


@converts("MatMul", "Mul", "Einsum", kind="product")
def product(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """A product of two signals, MatMul (a @ b), Einsum or element-wise Mul (a * b), in the gradient form.
    Primitives: gradients(g), both operands' shares of the product rule."""
    def gradients(g):
        b, (a_name, b_name), out = ctx.b, unit.inputs[:2], unit.outputs[0]
        if unit.op == "MatMul":
            return _matmul_back(ctx, unit, g)
        if unit.op == "Einsum":
            return _einsum_back(ctx, unit, g)
        return (unbroadcast(ctx, b.mul(g, b_name), a_name, unit, out),
                unbroadcast(ctx, b.mul(g, a_name), b_name, unit, out))

    op = SimpleNamespace(gradients=gradients, operands=unit.inputs[:2], output=unit.outputs[0],
                         halve_first=_output_smaller(ctx, unit))
    return rule.emitter("product", unit)(ctx, unit, rule, r_outs, op)


def _output_smaller(ctx: Context, unit: "Unit") -> bool:
    """Whether the product's output is no larger than the larger of its operands' gradients, so that a constant
    factor (AttnLRP's 1/2) costs one Mul on the message instead of one on each gradient. For a MatMul
    [M, K] @ [K, N]: [M, N] against [M, K] and [K, N] (attention's A V at L tokens: [L, d] against [L, L]);
    element-wise: always. Sizes compare by graph.size_order."""
    shapes = [ctx.shapes.get(t) for t in (*unit.inputs[:2], unit.outputs[0])]
    if any(s is None for s in shapes):
        return False
    if unit.op == "MatMul":
        if any(len(s) < 2 for s in shapes):
            return False
        (m, k), n = shapes[0][-2:], shapes[1][-1]
        shapes = [(m, k), (k, n), (m, n)]
    return size_order(shapes[2]) <= max(size_order(shapes[0]), size_order(shapes[1]))


def einsum_terms(ctx: Context, unit: "Unit") -> tuple:
    """(term of a, term of b, term of the output) of a two-operand Einsum, '...' written out as letters."""
    equation = unit.attrs.get("equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    shapes = [ctx.shapes.get(t) for t in unit.inputs[:2]]
    if len(terms) != 2 or None in shapes:
        raise UnsupportedModelError(f"node '{unit.name}' (Einsum): only two operands of known rank are supported")
    spans = [len(shape) - len(term) + 3 if "..." in term else 0 for term, shape in zip(terms, shapes)]
    spare = "".join(c for c in string.ascii_letters if c not in equation)[:max(spans)]
    terms = [term.replace("...", spare[len(spare) - n:]) for term, n in zip(terms, spans)]
    if not arrow:  # implicit output: the broadcast axes, then the letters used once, in alphabetical order
        out = "..." + "".join(sorted(c for c in set(lhs) if c.isalpha() and lhs.count(c) == 1))
    out = out.replace("...", spare)
    a, b = terms
    size = {}
    for term, shape in zip(terms, shapes):
        for letter, dim in zip(term, shape):
            if dim is not None and size.setdefault(letter, dim) != dim:
                raise UnsupportedModelError(f"node '{unit.name}' (Einsum): axis '{letter}' is broadcast ({size[letter]} "
                                            f"against {dim}); only equal sizes are supported")
    if any(len(set(t)) != len(t) for t in (a, b, out)) or set(a) - set(b + out) or set(b) - set(a + out):
        raise UnsupportedModelError(f"node '{unit.name}' (Einsum): '{equation}' repeats a letter in one term or "
                                    "sums an axis of one operand alone; only products of two operands are supported")
    return a, b, out


def _einsum_back(ctx, unit, s):
    """(d<s, y>/da, d<s, y>/db) for y = einsum(a, b): each an Einsum of s and the other operand."""
    ta, tb, to = einsum_terms(ctx, unit)
    a_name, b_name = unit.inputs[:2]
    return (ctx.b.op("Einsum", [s, b_name], "grad_a", equation=f"{to},{tb}->{ta}"),
            ctx.b.op("Einsum", [s, a_name], "grad_b", equation=f"{to},{ta}->{tb}"))


def _t(b, x, rank):
    return b.op("Transpose", [x], "swap", perm=list(range(rank - 2)) + [rank - 1, rank - 2])


@derivative_of("Gelu")
def gelu(ctx: Context, unit: "Unit", x: str, y: str) -> str:
    """d gelu / dx: Phi(x) + x phi(x), or for approximate='tanh' the derivative of its tanh form."""
    b = ctx.b
    approximate = unit.attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    if approximate == "tanh":
        # 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) du/dx, u = c (x + 0.044715 x^3), written with p = sigmoid(2 u)
        # = (1 + tanh(u)) / 2 as p + 2 x p (1 - p) du/dx. (Written with Tanh next to a written-out forward GELU,
        # onnxruntime 1.32's optimizer refused the model: "Node input ... is not ... output of a previous node".)
        c = math.sqrt(2 / math.pi)
        x2 = b.mul(x, x)
        p = b.op("Sigmoid", [b.mul(b.const(2 * c), b.add(x, b.mul(b.const(0.044715), b.mul(x2, x))))], "sigmoid")
        du = b.add(b.const(2 * c), b.mul(b.const(6 * c * 0.044715), x2))  # 2 du/dx
        return b.add(p, b.mul(b.mul(x, du), b.mul(p, b.sub(b.const(1.0), p))))
    cdf = b.mul(b.const(0.5), b.add(b.const(1.0), b.op("Erf", [b.mul(x, b.const(1 / math.sqrt(2)))], "erf")))
    pdf = b.mul(b.const(1 / math.sqrt(2 * math.pi)), b.op("Exp", [b.mul(b.mul(x, x), b.const(-0.5))], "exp"))
    return b.add(cdf, b.mul(x, pdf))


def _flat_selection(ctx, unit, r, index, shape, axis):
    """r shaped data[:axis] + index.shape + data[axis+1:], reshaped with the index axes as one."""
    trailing = shape[axis + 1:]
    if sum(d is None for d in trailing) > 1:
        raise UnsupportedModelError(f"node '{unit.name}' (Gather): more than one dynamic axis after the gathered one")
    dims = [0] * axis + [int(index.size)] + [-1 if d is None else int(d) for d in trailing]
    return ctx.b.op("Reshape", [r, ctx.b.ints(dims)], "flat_selection")


@converts("Gather")
def gather(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    b, r = ctx.b, r_outs[0]
    data, indices = unit.inputs[:2]
    if indices in ctx.signal:  # token ids into an embedding table: relevance per token, summed over hidden
        if unit.attrs.get("axis", 0) != 0 or data in ctx.signal:
            raise UnsupportedModelError(f"node '{unit.name}' (Gather): token ids must index axis 0 of a constant "
                                        "embedding table")
        if ctx.message == "gradient":  # relevance = embedding x its gradient
            r = b.mul(r, unit.outputs[0])
        return [None, b.op("ReduceSum", [r, b.ints([-1])], "per_token", keepdims=0)]
    shape = ctx.shapes.get(data)
    if indices not in ctx.inits and shape is not None and len(shape) == 1:
        # indices computed at run time into a flat tensor (torch's as_strided: adaptive pooling with a dynamic
        # batch): scatter-add R back to the positions read
        flat = b.op("Reshape", [r, b.ints([-1])], "flat")
        where = b.op("Reshape", [indices, b.ints([-1])], "flat_indices")
        return [b.op("ScatterElements", [b.zeros_like(data), where, flat], "scatter", axis=0, reduction="add"), None]
    index = np.asarray(ctx.value(indices, unit, "indices")).astype(np.int64)
    axis = int(unit.attrs.get("axis", 0)) % len(shape)
    dim = shape[axis]
    if index.ndim == 0 and index >= 0:  # one position (a class token): R back there, zeros elsewhere
        rank = len(shape)
        r = b.op("Unsqueeze", [r, b.ints([axis])], "unsqueeze")
        if dim is not None:
            after = b.ints([dim - int(index) - 1])
        else:  # a dynamic axis (the sequence): the size is read at run time
            size = b.op("Slice", [b.op("Shape", [data], "shape"), b.ints([axis]), b.ints([axis + 1])], "size")
            after = b.op("Sub", [size, b.ints([int(index) + 1])], "after")
        pads = b.op("Concat", [b.ints([0] * axis + [int(index)] + [0] * (rank - 1)), after,
                               b.ints([0] * (rank - axis - 1))], "pads", axis=0)
        return [b.op("Pad", [r, pads], "pad"), None]
    if dim is None:
        raise UnsupportedModelError(f"node '{unit.name}' (Gather): gathering along a dynamic axis is only "
                                    "supported for one non-negative constant index")
    index = np.where(index < 0, index + dim, index)
    rank = len(shape)
    if index.ndim != 1:  # indices of any rank (torch's as_strided, a window partition): one flat selection
        r, index = _flat_selection(ctx, unit, r, index, shape, axis), index.reshape(-1)
    perm = [i for i in range(rank) if i != axis] + [axis]
    onehot = np.zeros((len(index), dim), np.float32)
    onehot[np.arange(len(index)), index] = 1.0  # repeated indices add up
    moved = b.op("MatMul", [b.op("Transpose", [r], "to_last", perm=perm), b.const(onehot)], "scatter")
    return [b.op("Transpose", [moved], "from_last", perm=[perm.index(i) for i in range(rank)]), None]


@converts("Expand", "Tile")
def expand(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    x, out = unit.inputs[0], unit.outputs[0]
    if unit.op == "Tile":  # any repeats, constant or computed: R viewed as [k0, d0, k1, d1, ...], summed over the k
        b, rank = ctx.b, len(ctx.shapes[x])
        pairs = b.op("Concat", [b.op("Unsqueeze", [unit.inputs[1], b.ints([1])], "repeats"),
                                b.op("Unsqueeze", [b.op("Shape", [x], "shape"), b.ints([1])], "sizes")], "pairs", axis=1)
        tiles = b.op("Reshape", [r_outs[0], b.op("Reshape", [pairs, b.ints([-1])], "tiles_shape")], "tiles")
        return [b.op("ReduceSum", [tiles, b.ints(list(range(0, 2 * rank, 2)))], "untile", keepdims=0), None]
    return [unbroadcast(ctx, r_outs[0], x, unit, out), None]


@converts("Where")
def where(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    b, r = ctx.b, r_outs[0]
    cond, x, y = unit.inputs[:3]
    if cond in ctx.signal:
        raise UnsupportedModelError(f"node '{unit.name}' (Where): a condition computed from the input is not supported")
    zero = b.const(0.0)
    out = unit.outputs[0]
    rx = unbroadcast(ctx, b.op("Where", [cond, r, zero], "keep"), x, unit, out) if x in ctx.signal else None
    ry = unbroadcast(ctx, b.op("Where", [cond, zero, r], "keep"), y, unit, out) if y in ctx.signal else None
    return [None, rx, ry]


@converts("Cast")
def cast(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    return [r_outs[0]]
