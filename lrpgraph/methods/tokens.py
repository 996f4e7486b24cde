"""Gradient-family methods on text models (token ids in): they act on the word embeddings e = E[ids],
the output of the Gather that reads the ids (docs/transformers.md), and give one value per token by
reducing over the hidden axis. Methods that give a gradient (gradient, SmoothGrad) give its L2 norm per
token (the gradient saliency of NLP: a sum would cancel, exactly so when a LayerNorm follows the
embeddings as in BERT); methods that give an attribution (input x gradient, IG and guided IG from the
zero embedding, SmoothTaylor) give its sum over the hidden axis, as the LRP composites do. Position and
segment embeddings are not scaled or noised: they are not the tokens' own."""

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Canonical, Unit
    from lrpgraph.graph import Builder
    from lrpgraph.methods.options import MethodOptions
    from lrpgraph.methods.units import Method


def embedding_gather(canon: "Canonical") -> "Unit | None":
    """The Gather of the word embeddings: from a table by the token ids, else the first from a table by indices
    computed from them (GPT-2's reshaped ids); None without one."""
    gathers = [u for u in canon.units if u.op == "Gather" and u.inputs[1] in canon.signal and u.inputs[0] in canon.inits]
    return next((u for u in gathers if u.inputs[1] == canon.input), gathers[0] if gathers else None)


def embedding_view(canon: "Canonical") -> "Canonical":
    """The canonical view whose explained input is the word embeddings: the units after their Gather."""
    gather = embedding_gather(canon)
    e = gather.outputs[0]
    return replace(canon, units=[u for u in canon.units if u is not gather], input=e, input_shape=canon.shapes[e],
                   float_input=True)


def emit(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", unit: "Method", seed: str,
         options: "MethodOptions", walk: Callable) -> tuple:
    """(relevance [N, L], [new graph inputs]) of a gradient-family method on a text model: its emitter on the
    word embeddings, reduced over the hidden axis as the unit's per_token says."""
    view = embedding_view(canon)
    if unit.text_check is not None:
        unit.text_check(unit.name, options)
    heat, inputs = unit.emit(b, model, view, seed, options, walk)
    b.scope = "output"
    if unit.per_token == "norm":  # the L2 norm as Sqrt(ReduceSum): ReduceL2 takes axes as an input from opset 18
        return b.op("Sqrt", [b.op("ReduceSum", [b.mul(heat, heat), b.ints([-1])], "square_sum", keepdims=0)],
                    "per_token"), inputs
    return b.op("ReduceSum", [heat, b.ints([-1])], "per_token", keepdims=0), inputs
