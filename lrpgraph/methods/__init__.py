"""Gradient-family explainers compiled by the same walker: gradient, input x gradient, integrated
gradients (IG), guided IG (guided non-linearity), SmoothGrad and SmoothTaylor.

Each method is one unit (methods.units): `@method(name, options, ...)` on its emitter, in the module of its
family (gradient.py, integrated.py, smooth.py). Methods that need the model at other inputs (IG's path
points, SmoothGrad's noisy copies) clone the forward path over an expanded batch (steps x N), so one ONNX
Runtime call does the whole method."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from lrpgraph.errors import LrpgraphError
from lrpgraph.methods import gradient, integrated, smooth  # registers the methods, in this order
from lrpgraph.methods.options import MethodOptions
from lrpgraph.methods.units import METHODS, Option, is_method, method, option_users, unregister

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Canonical
    from lrpgraph.graph import Builder

__all__ = ["gradient", "integrated", "smooth", "METHODS", "MethodOptions", "Option", "emit", "is_method", "method",
           "option_users", "unregister"]


def emit(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", method: str, seed: str, options: MethodOptions,
         walk: Callable) -> tuple:
    """Emit the method's attribution for the image; returns (tensor, [new graph inputs])."""
    options.check()
    unit = METHODS.get(method)
    if unit is None:
        raise LrpgraphError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if not canon.float_input:  # token ids: the methods act on the word embeddings
        from lrpgraph.methods import tokens

        return tokens.emit(b, model, canon, unit, seed, options, walk)
    return unit.emit(b, model, canon, seed, options, walk)
