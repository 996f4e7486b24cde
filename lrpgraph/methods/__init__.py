"""Gradient-family explainers compiled by the same walker: gradient, input x gradient, integrated
gradients (IG), guided IG (guided non-linearity), SmoothGrad and SmoothTaylor (REFERENCE.md section 7).

Methods that need the model at other inputs (IG's path points, SmoothGrad's noisy copies) clone the
forward path over an expanded batch (steps x N), so one ONNX Runtime call does the whole method."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from lrpgraph.errors import LrpgraphError
from lrpgraph.methods import integrated, smooth
from lrpgraph.methods.gradient import gradient_plan
from lrpgraph.methods.options import MethodOptions

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Canonical
    from lrpgraph.graph import Builder

METHODS = ("gradient", "input-x-gradient", "ig", "guided-ig", "smoothgrad", "smoothtaylor")


def is_method(name: str) -> bool:
    return name in METHODS


def emit(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", method: str, seed: str, options: MethodOptions,
         walk: Callable) -> tuple:
    """Emit the method's attribution for the image; returns (tensor, [new graph inputs])."""
    options.check()

    if not canon.image_float and is_method(method):  # token ids: the methods act on the word embeddings
        from lrpgraph.methods import tokens

        return tokens.emit(b, model, canon, method, seed, options, walk)
    if method in ("gradient", "input-x-gradient"):
        grad = walk(canon, gradient_plan(canon.units), seed)
        grad = b.zeros_like(canon.image) if grad is None else grad
        b.scope = "output"
        return (b.mul(grad, canon.image) if method == "input-x-gradient" else grad), []
    if method in ("ig", "guided-ig"):
        return integrated.emit(b, model, canon, seed, options, walk, guided=method == "guided-ig")
    if method in ("smoothgrad", "smoothtaylor"):
        return smooth.emit(b, model, canon, seed, options, walk, taylor=method == "smoothtaylor")
    raise LrpgraphError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
