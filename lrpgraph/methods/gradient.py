"""The rule plan of the gradient-family methods: the plain gradient through every unit, as its op record
says (MaxPool's gradient is the arg-max, 'wta'); guided methods let only positive gradients through the
ops whose records say guided. The gradient and input x gradient methods."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from lrpgraph.catalog import RECORDS
from lrpgraph.methods.units import method
from lrpgraph.rules import make_rule

if TYPE_CHECKING:
    import onnx

    from lrpgraph.canonicalize import Canonical
    from lrpgraph.graph import Builder
    from lrpgraph.methods.options import MethodOptions


def gradient_plan(units: list, guided: bool = False) -> dict:
    """{unit name: Rule}: each op record's gradient rule (the plain gradient; MaxPool's arg-max); with
    guided, only positive gradients pass the ops whose records say guided: the ReLU-like units and
    MaxPool (Kwon, Koo, Cho 2020)."""
    plan = {}
    for unit in units:
        record = RECORDS[unit.op]
        plan[unit.name] = make_rule("guided" if guided and record.guided else record.gradient_rule)
    return plan


def gradient_of(b: "Builder", canon: "Canonical", seed: str, walk: Callable) -> str:
    """dy_c/dx of the explained input (zeros where no unit depends on it); leaves the builder in scope 'output'."""
    grad = walk(canon, gradient_plan(canon.units), seed)
    grad = b.zeros_like(canon.input) if grad is None else grad
    b.scope = "output"
    return grad


@method("gradient", per_token="norm")
def gradient(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str, options: "MethodOptions",
             walk: Callable) -> tuple:
    """The gradient dy_c/dx."""
    return gradient_of(b, canon, seed, walk), []


@method("input-x-gradient")
def input_x_gradient(b: "Builder", model: "onnx.ModelProto", canon: "Canonical", seed: str,
                     options: "MethodOptions", walk: Callable) -> tuple:
    """x * dy_c/dx."""
    return b.mul(gradient_of(b, canon, seed, walk), canon.input), []
