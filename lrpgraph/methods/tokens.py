"""Gradient-family methods on text models (token ids in): they act on the word embeddings e = E[ids],
the output of the Gather that reads the ids (REFERENCE.md section 9), and give one value per token by
reducing over the hidden axis. Methods that give a gradient (gradient, SmoothGrad) give its L2 norm per
token (the gradient saliency of NLP: a sum would cancel, exactly so when a LayerNorm follows the
embeddings as in BERT); methods that give an attribution (input x gradient, IG and guided IG from the
zero embedding, SmoothTaylor) give its sum over the hidden axis, as the LRP composites do. Position and
segment embeddings are not scaled or noised: they are not the tokens' own."""

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from lrpgraph.errors import LrpgraphError
from lrpgraph.methods import integrated, smooth
from lrpgraph.methods.gradient import gradient_plan
from lrpgraph.methods.options import MethodOptions

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Canonical
    from lrpgraph.graph import Builder


def embedding_view(canon: "Canonical") -> "Canonical":
    """The canonical view whose explained input is the word embeddings: the units after the Gather."""
    gather = next(u for u in canon.units if u.op == "Gather" and u.inputs[1] == canon.image)
    e = gather.outputs[0]
    return replace(canon, units=[u for u in canon.units if u is not gather], image=e, image_shape=canon.shapes[e],
                   image_float=True)


def emit(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", method: str, seed: str, options: MethodOptions,
         walk: Callable) -> tuple:
    """(relevance [N, L], [new graph inputs]) of a gradient-family method on a text model."""
    view = embedding_view(canon)
    e, inputs = view.image, []
    if method in ("gradient", "input-x-gradient"):
        heat = walk(view, gradient_plan(view.units), seed)
        heat = b.zeros_like(e) if heat is None else heat
        b.scope = "output"
        heat = b.mul(heat, e) if method == "input-x-gradient" else heat
    elif method in ("ig", "guided-ig"):
        if options.baseline != "zero":
            raise LrpgraphError(f"{method} on a text model starts from the zero embedding; the baseline "
                                f"'{options.baseline}' applies to image inputs only (use --baseline zero)")
        heat, inputs = integrated.emit(b, model, view, seed, options, walk, guided=method == "guided-ig")
    else:
        heat, inputs = smooth.emit(b, model, view, seed, options, walk, taylor=method == "smoothtaylor")
    b.scope = "output"
    if method in ("gradient", "smoothgrad"):  # the L2 norm as Sqrt(ReduceSum): ReduceL2 takes axes as an input from opset 18
        return b.op("Sqrt", [b.op("ReduceSum", [b.mul(heat, heat), b.ints([-1])], "square_sum", keepdims=0)],
                    "per_token"), inputs
    return b.op("ReduceSum", [heat, b.ints([-1])], "per_token", keepdims=0), inputs
