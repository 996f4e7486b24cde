"""onnxruntime's contrib ops as onnxruntime-genai's model builder writes them (docs/llm_genai.md), under the
transformer composites' gradient form (the message g = R / x, converters/attention.py), as LXT's efficient
mode treats the same computation in torch:

- GroupQueryAttention: softmax attention of grouped heads. Its probabilities are recomputed beside the forward
  node from its own inputs and outputs (the rotated keys and the values are its present.* outputs; the query is
  rotated with the node's cos/sin caches at the positions it uses, past length + 0 .. S-1), with its causal and
  key-padding masks. The message then crosses A V and Q K^T with the product rule the composite gives
  (attn-lrp: 'uniform', half each; cp-lrp: 'cp', the probabilities constant, so Q and K get nothing), the
  Softmax as its gradient, and the rotary embedding (a constant rotation of q and k) as its transpose.
- RotaryEmbedding (a separate one, where GroupQueryAttention has do_rotary = 0): its transpose.
- SimplifiedLayerNormalization: RMSNorm (converters/norm.py's, with its rms held constant under 'identity').
- SkipSimplifiedLayerNormalization: y = RMSNorm(x + skip (+ bias)), and the sum itself as output 3 (the residual
  stream): the norm's message plus output 3's reach the sum, which passes both to x and skip (the residual Add
  under the transformer composites: the gradient).
- MatMulNBits (int4 weights): read as a MatMul with its dequantized float weights in the view the rules read
  (`nbits_view`); the forward node stays as it is.
"""

import copy
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from onnx import helper, numpy_helper

from lrpgraph.catalog import Context
from lrpgraph.catalog.contrib import dequantize_nbits, is_matmul_nbits
from lrpgraph.converters.norm import rms_norm
from lrpgraph.converters.registry import attach, converts
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.graph import attrs_of
from lrpgraph.rules import Rule

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Unit

LOWEST = float(np.finfo(np.float32).min)

attach("SimplifiedLayerNormalization", "normaliser", rms_norm)


@converts("SkipSimplifiedLayerNormalization")
def skip_rms_norm(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """RMSNorm of x + skip (+ bias): output 0's message crosses the norm (converters/norm.py's rms_norm, read as
    a norm of the sum), output 3's joins it at the sum, which passes it to x and skip."""
    b, (x, skip, gamma) = ctx.b, unit.inputs[:3]
    arriving = [r_outs[i] if i < len(r_outs) else None for i in (0, 3)]
    parts = []
    if arriving[0] is not None:
        total = _sum_tensor(ctx, unit)
        norm = SimpleNamespace(name=unit.name, op=unit.op, inputs=[total, gamma], outputs=unit.outputs[:1],
                               attrs={"axis": -1, "epsilon": unit.attrs.get("epsilon", 1e-5)})
        ctx.shapes.setdefault(total, ctx.shapes.get(x))
        parts.append(rms_norm(ctx, norm, rule, [arriving[0]])[0])
    if arriving[1] is not None:
        parts.append(arriving[1])
    g = b.sum(parts)
    return [g if x in ctx.signal else None, g if skip in ctx.signal else None] + [None] * (len(unit.inputs) - 2)


def _sum_tensor(ctx, unit):
    """x + skip (+ bias): the node's output 3 where the graph names it, else recomputed."""
    if len(unit.outputs) > 3 and unit.outputs[3]:
        return unit.outputs[3]
    b, total = ctx.b, ctx.b.add(unit.inputs[0], unit.inputs[1])
    return b.add(total, unit.inputs[3]) if len(unit.inputs) > 3 and unit.inputs[3] else total


@converts("GroupQueryAttention")
def group_query_attention(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """The message at the attention output back to the query, key and value inputs (packed or separate)."""
    heads, kv_heads, d, packed = _check_gqa(ctx, unit)
    b, groups = ctx.b, heads // kv_heads
    scale = float(unit.attrs.get("scale", 0.0)) or 1.0 / float(np.sqrt(d))
    rotary = _rotary(ctx, unit, d) if int(unit.attrs.get("do_rotary", 0)) else None
    q = _heads(b, _query(b, unit, heads, d, packed), heads, d)
    if rotary is not None:
        q = _rotate(b, q, rotary, d, inverse=False)
    q5 = b.op("Reshape", [q, b.ints([0, kv_heads, groups, -1, d])], "group_query")
    k5, v5 = (b.op("Unsqueeze", [t, b.ints([2])], "group_kv") for t in unit.outputs[1:3])
    scores = b.mul(b.op("MatMul", [q5, _swap(b, k5)], "scores"), b.const(scale))
    probs = b.op("Softmax", [b.op("Where", [_allowed(ctx, unit, rotary), scores, b.const(LOWEST)], "mask")],
                 "probabilities", axis=-1)
    g_out = b.op("Reshape", [r_outs[0], b.ints([0, 0, kv_heads, groups, d])], "group_message")
    g_out = b.op("Transpose", [g_out], "message_heads", perm=[0, 2, 3, 1, 4])

    def av_gradients(g):
        return (b.op("MatMul", [g, _swap(b, v5)], "grad_probabilities"),
                b.op("ReduceSum", [b.op("MatMul", [_swap(b, probs), g], "grad_v"), b.ints([2])], "sum_groups",
                     keepdims=0))

    def qk_gradients(g):
        return (b.op("MatMul", [g, k5], "grad_q"),
                b.op("ReduceSum", [b.op("MatMul", [_swap(b, g), q5], "grad_k"), b.ints([2])], "sum_groups",
                     keepdims=0))

    product = rule.emitter("product", unit)
    # halve_first: A V's message [.., L, d] is never larger than the probabilities' gradient [.., L, L] or V's
    g_probs, g_v = product(ctx, SimpleNamespace(gate=0, name=unit.name), rule, [g_out],
                           SimpleNamespace(gradients=av_gradients, halve_first=True))
    g_q = g_k = None
    if g_probs is not None:  # the Softmax: its gradient; the scale: a constant factor
        inner = b.op("ReduceSum", [b.mul(probs, g_probs), b.ints([-1])], "softmax_sum", keepdims=1)
        g_scores = b.mul(b.mul(probs, b.sub(g_probs, inner)), b.const(scale))
        g_q, g_k = product(ctx, SimpleNamespace(gate=None, name=unit.name), rule, [g_scores],
                           SimpleNamespace(gradients=qk_gradients))
    return _to_inputs(ctx, unit, rotary, (g_q, g_k, g_v), (heads, kv_heads, d), packed)


@converts("RotaryEmbedding")
def rotary_embedding(ctx: Context, unit: "Unit", rule: Rule, r_outs: list) -> list:
    """A separate rotary embedding (the builder's `-e dml` graphs) of x [B, S, heads * d] at position_ids [B, S]:
    a constant rotation, crossed by its transpose."""
    b, attrs = ctx.b, unit.attrs
    x, positions, cos, sin = unit.inputs[:4]
    half = ctx.shape(cos, unit)[-1]
    d = int(attrs.get("rotary_embedding_dim", 0)) or 2 * half
    shape, pos_shape = ctx.shapes.get(x), ctx.shapes.get(positions)
    if int(attrs.get("interleaved", 0)) or float(attrs.get("scale", 1.0)) != 1.0 or not shape or len(shape) != 3 \
            or not pos_shape or len(pos_shape) != 2 or 2 * half != d:
        raise UnsupportedModelError(f"node '{unit.name}' (RotaryEmbedding): only the non-interleaved, unscaled "
                                    "rotation of the whole head of an input [B, S, heads * d] at position_ids "
                                    "[B, S] is supported")
    g = b.op("Reshape", [r_outs[0], b.ints([0, 0, -1, d])], "split_heads")
    # position_ids [N, S]; the message's batch may be K targets x N (targets.tiled_view): the rows repeat as it does
    repeats = b.op("Div", [b.op("Shape", [g], "batch", start=0, end=1),
                           b.op("Shape", [positions], "count", start=0, end=1)], "repeats")
    tiled = b.op("Tile", [positions, b.op("Concat", [repeats, b.ints([1])], "repeats", axis=0)], "positions")
    rows = [b.op("Unsqueeze", [b.op("Gather", [t, tiled], "rows", axis=0), b.ints([2])], "rows") for t in (cos, sin)]
    g = _rotate(b, g, SimpleNamespace(cos=rows[0], sin=rows[1], half=half), d, inverse=True)
    return [b.op("Reshape", [g, b.ints([0, 0, -1])], "merge_heads")] + [None] * (len(unit.inputs) - 1)


def _check_gqa(ctx, unit):
    """(heads, kv heads, head size, packed qkv) of a GroupQueryAttention this converter reproduces; the forms
    it does not are refused by name."""
    attrs = unit.attrs
    heads, kv_heads = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
    refused = [(float(attrs.get("softcap", 0.0)) != 0.0, "softcap"),
               (int(attrs.get("local_window_size", -1)) != -1, "local_window_size (sliding window)"),
               (int(attrs.get("rotary_interleaved", 0)) != 0, "rotary_interleaved"),
               (int(attrs.get("smooth_softmax", 0)) != 0, "smooth_softmax"),
               (any(t for t in unit.inputs[9:]), "position_ids, attention_bias or head_sink inputs")]
    found = [what for bad, what in refused if bad]
    if found:
        raise UnsupportedModelError(f"node '{unit.name}' (GroupQueryAttention): {', '.join(found)} not supported; "
                                    "build the model without it")
    packed = not (len(unit.inputs) > 2 and unit.inputs[1])
    width = ctx.shape(unit.inputs[0], unit)[-1]
    d = width // (heads + 2 * kv_heads) if packed else width // heads
    return heads, kv_heads, d, packed


def _query(b, unit, heads, d, packed):
    q = unit.inputs[0]
    return b.op("Slice", [q, b.ints([0]), b.ints([heads * d]), b.ints([-1])], "query") if packed else q


def _heads(b, x, heads, d):
    """[B, S, heads * d] -> [B, heads, S, d]."""
    return b.op("Transpose", [b.op("Reshape", [x, b.ints([0, 0, heads, d])], "split_heads")], "heads_first",
                perm=[0, 2, 1, 3])


def _merge(b, x, heads, d):
    """[B, heads, S, d] -> [B, S, heads * d]."""
    return b.op("Reshape", [b.op("Transpose", [x], "heads_last", perm=[0, 2, 1, 3]), b.ints([0, 0, heads * d])],
                "merge_heads")


def _swap(b, x):
    return b.op("Transpose", [x], "swap", perm=[0, 1, 2, 4, 3])


def _positions(ctx, unit):
    """(past length, total length) as int64 scalars: the new tokens sit at positions past .. total - 1."""
    b = ctx.b
    total = b.op("Reshape", [b.op("Cast", [unit.inputs[6]], "total_length", to=7), b.ints([])], "total")
    seq = b.op("Reshape", [b.op("Shape", [unit.inputs[0]], "sequence", start=1, end=2), b.ints([])], "sequence")
    return b.sub(total, seq), total


def _rotary(ctx, unit, d):
    """The cos and sin rows [S, d_rot / 2] of the new tokens' positions, with (past, total, d_rot / 2)."""
    b, (cos, sin) = ctx.b, unit.inputs[7:9]
    half = ctx.shape(cos, unit)[-1]
    past, total = _positions(ctx, unit)
    pos = b.op("Range", [past, total, b.const(1, np.int64)], "positions")
    rows = [b.op("Gather", [t, pos], "rows", axis=0) for t in (cos, sin)]
    return SimpleNamespace(cos=rows[0], sin=rows[1], half=half, past=past, total=total)


def _rotate(b, x, rot, d, inverse):
    """Rotary embedding (not interleaved) of x [..., d] by the rows: (x1 c - x2 s, x2 c + x1 s, rest), or its
    transpose (inverse): (x1 c + x2 s, x2 c - x1 s, rest)."""
    h = rot.half

    def part(lo, hi):
        return b.op("Slice", [x, b.ints([lo]), b.ints([hi]), b.ints([-1])], "half")

    x1, x2 = part(0, h), part(h, 2 * h)
    sign = -1.0 if not inverse else 1.0
    y1 = b.add(b.mul(x1, rot.cos), b.mul(b.mul(x2, rot.sin), b.const(sign)))
    y2 = b.sub(b.mul(x2, rot.cos), b.mul(b.mul(x1, rot.sin), b.const(sign)))
    parts = [y1, y2] + ([part(2 * h, d)] if 2 * h < d else [])
    return b.op("Concat", parts, "rotated", axis=-1)


def _allowed(ctx, unit, rotary):
    """[B, 1, 1, S, T] bool: key j is seen by query i when j <= past + i (causal) and j < seqlens_k + 1."""
    b = ctx.b
    past, total = (rotary.past, rotary.total) if rotary is not None else _positions(ctx, unit)
    one = b.const(1, np.int64)
    rows = b.op("Unsqueeze", [b.op("Range", [past, total, one], "rows"), b.ints([1])], "rows")
    cols = b.op("Range", [b.const(0, np.int64), total, one], "cols")
    causal = b.op("LessOrEqual", [cols, rows], "causal")
    lengths = b.add(b.op("Cast", [unit.inputs[5]], "lengths", to=7), one)
    # [N]; the batch of the present K may be K targets x N (targets.tiled_view): the lengths repeat as it does
    batch = b.op("Shape", [unit.outputs[1]], "batch", start=0, end=1)
    lengths = b.op("Tile", [lengths, b.op("Div", [batch, b.op("Shape", [lengths], "count")], "repeats")], "tiled")
    valid = b.op("Less", [cols, b.op("Reshape", [lengths, b.ints([-1, 1, 1, 1, 1])], "lengths")], "valid")
    return b.op("And", [causal, valid], "allowed")


def _to_inputs(ctx, unit, rotary, grads, dims, packed):
    """The messages of Q [B, kvH, G, S, d] and the present K, V [B, kvH, T, d] at the node's inputs: the new
    tokens' K and V (the last S of T), the rotation undone on Q and K, heads merged; zeros where none arrived."""
    b, (heads, kv_heads, d) = ctx.b, dims
    g_q, g_k, g_v = grads
    out = []
    for g, n, rotate in ((g_q, heads, True), (g_k, kv_heads, True), (g_v, kv_heads, False)):
        if g is None:
            out.append(None)
            continue
        if n == heads:
            g = b.op("Reshape", [g, b.ints([0, heads, -1, d])], "query_heads")
        else:
            past = rotary.past if rotary is not None else _positions(ctx, unit)[0]
            g = b.op("Slice", [g, b.op("Reshape", [past, b.ints([1])], "start"), b.ints([2 ** 62]), b.ints([2])],
                     "new_tokens")
        if rotate and rotary is not None:
            g = _rotate(b, g, rotary, d, inverse=True)
        out.append(_merge(b, g, n, d))
    rest = [None] * (len(unit.inputs) - 3)
    if not packed:
        return out + rest
    if all(g is None for g in out):
        return [None] * len(unit.inputs)
    parts = [g if g is not None else b.zeros_like(_part(b, unit, heads, kv_heads, d, i)) for i, g in enumerate(out)]
    return [b.op("Concat", parts, "qkv", axis=-1), None, None] + rest


def _part(b, unit, heads, kv_heads, d, i):
    bounds = [0, heads * d, (heads + kv_heads) * d, (heads + 2 * kv_heads) * d]
    return b.op("Slice", [unit.inputs[0], b.ints([bounds[i]]), b.ints([bounds[i + 1]]), b.ints([-1])], "part")


def has_nbits(model: "onnx.ModelProto") -> bool:
    return any(is_matmul_nbits(n) for n in model.graph.node)


def nbits_view(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy of model in which each MatMulNBits is a MatMul with its dequantized float weight [K, N] (named
    '<B>/dequantized', an initializer), plus an Add of its bias: what canonicalize and the rules read. The
    forward keeps the int4 nodes; `adopt` copies the weights the relevance nodes read into the model."""
    view = copy.deepcopy(model)
    inits = {i.name: i for i in view.graph.initializer}
    nodes = []
    for node in view.graph.node:
        if not is_matmul_nbits(node):
            nodes.append(node)
            continue
        nodes.extend(_as_matmul(node, inits, view))
    del view.graph.node[:]
    view.graph.node.extend(nodes)
    return view


def _as_matmul(node, inits, view):
    attrs = attrs_of(node)
    name = node.name or node.output[0]
    inputs = list(node.input) + [""] * (6 - len(node.input))
    if any(t and t not in inits for t in inputs[1:4]) or any(inputs[4:5]):
        raise UnsupportedModelError(f"node '{name}' (MatMulNBits): weights, scales and zero points must be "
                                    "constants, without g_idx")
    zero = numpy_helper.to_array(inits[inputs[3]]) if inputs[3] else None
    if zero is not None and zero.dtype != np.uint8:
        raise UnsupportedModelError(f"node '{name}' (MatMulNBits): float zero points are not supported")
    w = dequantize_nbits(attrs, numpy_helper.to_array(inits[inputs[1]]), numpy_helper.to_array(inits[inputs[2]]), zero)
    weight = f"{inputs[1]}/dequantized"
    view.graph.initializer.append(numpy_helper.from_array(w, weight))
    if not inputs[5]:
        return [helper.make_node("MatMul", [inputs[0], weight], [node.output[0]], name=name)]
    inner = f"{node.output[0]}/matmul"
    return [helper.make_node("MatMul", [inputs[0], weight], [inner], name=name),
            helper.make_node("Add", [inner, inputs[5]], [node.output[0]], name=f"{name}/bias")]


def adopt(model: "onnx.ModelProto", view: "onnx.ModelProto") -> None:
    """Copy into model the view's initializers its nodes read but it lacks (the dequantized weights)."""
    have = {i.name for i in model.graph.initializer}
    read = {t for n in model.graph.node for t in n.input}
    model.graph.initializer.extend(i for i in view.graph.initializer if i.name in read and i.name not in have)
