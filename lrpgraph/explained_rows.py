"""A causal LM's relevance path started from the explained positions only.

The logits y [N, L, V] come from the lm_head, a linear layer applied to the hidden state h [N, L, D] at every
position. A seed at y (targets.sequence_seed, targets.explained_seed) is non-zero only in the rows of the
explained positions, yet carrying it back through the lm_head costs [L, V] x [V, D] per target, and the seed
itself is an [L, V] product (V = 151936 for Qwen2: 1.2 GB per target at 2048 tokens). The linear rules act on
each position alone and send nothing back from a zero row, so the same message at h comes from the explained
rows only:

    rows(b, ...)      gathers the explained positions' rows of h and of the forward's own logits
                      (ExplainedRows: [N, K, D] and [N, K, V]; K = 1 for `top`), and the seed on those rows;
    RowsWalker        puts, in place of the seed at the logits, the lm_head rule's message on those rows
                      placed back at their positions of h ([N, L, D], or [K * N, L, D] target-major for
                      the K-target view), and walks on from there; the lm_head unit is never visited.

Used for the LRP composites on a causal LM's logits under `top` and `index` when the logits are one linear
unit's output on a rank-3 signal (head_unit); `seed`, `all` and the methods keep the seed at the logits."""

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper

from lrpgraph.targets import TARGET_INPUT
from lrpgraph.walker import Walker

if TYPE_CHECKING:
    from lrpgraph.catalog import Canonical, Unit
    from lrpgraph.graph import Builder


@dataclass
class ExplainedRows:
    """The explained rows of one causal LM heatmap: positions [N, K] (int64) of the L (length, int64 [1]);
    hidden [N, K, D] and logits [N, K, V], the rows of h and y there; seed [N, K, V]."""

    positions: str
    length: str
    hidden: str
    logits: str
    seed: str = ""


def head_unit(canon: "Canonical", mode: str) -> "Unit | None":
    """For the target modes top and index, the linear unit whose output is the logits, reading one signal of
    rank 3 with a static D ([N, L, D]); else None."""
    unit = next((u for u in canon.units if canon.logits in u.outputs), None) if mode in ("top", "index") else None
    if unit is None or unit.layer is None or unit.outputs != [canon.logits]:
        return None
    signals, shape = [t for t in unit.inputs if t in canon.signal], canon.shapes.get(unit.layer.x) or []
    return unit if signals == [unit.layer.x] and len(shape) == 3 and isinstance(shape[2], int) else None


def rows(b: "Builder", canon: "Canonical", head: "Unit", mode: str, mask: str | None, batch_dim: str | int,
         gradient: bool) -> tuple:
    """(ExplainedRows with its seed, [new graph inputs]) for mode top (the argmax token at the last position
    where mask is 1, the last position without a mask) or index (`target` [N, K, 2] (position, token))."""
    b.scope = "target"
    inputs = []
    length = b.op("Shape", [canon.input], "length", start=1, end=2)
    if mode == "top":
        last = b.op("Cast", [b.op("Squeeze", [length], "l")], "l_float", to=TensorProto.FLOAT)
        steps = b.op("Range", [b.const(1.0), b.add(last, b.const(1.0)), b.const(1.0)], "steps")  # 1 .. L
        present = b.op("Cast", [mask], "present", to=TensorProto.FLOAT) if mask else b.ones_like(canon.input)
        positions = b.op("ArgMax", [b.mul(present, steps)], "last", axis=1, keepdims=1)  # [N, 1]
    else:
        info = helper.make_tensor_value_info(TARGET_INPUT, TensorProto.INT64, [batch_dim, "K", 2])
        info.doc_string = "K (position, token) tuples per sample, [N, K, 2]"
        inputs = [info]
        positions = b.op("Gather", [TARGET_INPUT, b.ints([0])], "positions", axis=2)  # [N, K, 1]
        positions = b.op("Squeeze", [positions, b.ints([2])], "positions_nk")
    count = b.op("Squeeze", [b.op("Shape", [canon.input], "count", end=1)], "n")
    samples = b.op("Range", [b.const(0, np.int64), count, b.const(1, np.int64)], "samples")
    samples = b.op("Expand", [b.op("Unsqueeze", [samples, b.ints([1])], "samples_n1"),
                              b.op("Shape", [positions], "nk")], "samples_nk")
    at = b.op("Concat", [b.op("Unsqueeze", [t, b.ints([2])], "at_part") for t in (samples, positions)], "at",
              axis=2)  # [N, K, 2]: GatherND's (sample, position) tuples
    hidden = b.op("GatherND", [head.layer.x, at], "hidden_rows")
    logits = b.op("GatherND", [canon.logits, at], "logit_rows")
    vocab = b.ints([canon.shapes[canon.logits][2]])  # V, static (targets.is_sequence)
    if mode == "top":
        token = b.op("ArgMax", [logits], "token", axis=2, keepdims=0)  # [N, 1]
    else:
        token = b.op("Squeeze", [b.op("Gather", [TARGET_INPUT, b.ints([1])], "tokens", axis=2), b.ints([2])],
                     "tokens_nk")
    onehot = b.op("OneHot", [token, vocab, b.const([0.0, 1.0])], "token_onehot", axis=-1)  # [N, K, V]
    seed = onehot if gradient else b.mul(logits, onehot)
    return ExplainedRows(positions, length, hidden, logits, seed), inputs


class RowsWalker(Walker):
    """A Walker whose walk starts at the lm_head's input: the lm_head rule on the explained rows only, its
    message placed back at their positions (ExplainedRows). The seed given to the call is rows.seed."""

    def __init__(self, b: "Builder", message: str, explained: ExplainedRows) -> None:
        super().__init__(b, message)
        self.rows = explained

    def start(self, view: "Canonical", seed: str) -> dict:
        """{h: [the lm_head rule's message on the rows, at their positions]}."""
        pending = defaultdict(list)
        head = next(u for u in view.units if view.logits in u.outputs)
        x, rows, b, ctx = head.layer.x, self.rows, self.b, self.ctx
        depth = view.shapes[x][2]
        shapes = {**ctx.shapes, rows.hidden: [None, None, depth], rows.logits: [None, None, view.shapes[view.logits][2]]}
        nonneg = ctx.nonneg | ({rows.hidden} if x in ctx.nonneg else set())
        self.ctx = replace(ctx, shapes=shapes, signal=ctx.signal | {rows.hidden, rows.logits}, nonneg=nonneg)
        layer = replace(head.layer, x=rows.hidden, out=rows.logits, x_shape=[None, None, depth])
        on_rows = replace(head, inputs=[rows.hidden if t == x else t for t in head.inputs], outputs=[rows.logits],
                          layer=layer)
        b.scope = head.name
        message = self.run_unit(on_rows, self.plan[head.name], [seed])[0]  # [N, K, D]
        self.ctx = ctx
        b.scope = "target"
        at = b.op("OneHot", [rows.positions, rows.length, b.const([0.0, 1.0])], "row_at", axis=-1)  # [N, K, L]
        placed = b.mul(b.op("Unsqueeze", [at, b.ints([3])], "row_at4"),
                       b.op("Unsqueeze", [message, b.ints([2])], "row_message"))  # [N, K, L, D]
        major = b.op("Transpose", [placed], "row_major", perm=[1, 0, 2, 3])
        shape = b.op("Concat", [b.ints([-1]), rows.length, b.ints([depth])], "row_seed_shape", axis=0)
        pending[x].append(b.op("Reshape", [major, shape], "row_seed"))  # [K * N, L, D]
        return pending
