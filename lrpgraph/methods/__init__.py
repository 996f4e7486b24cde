"""Gradient-family explainers compiled by the same walker: gradient, input x gradient, integrated
gradients (IG), guided IG (guided non-linearity), SmoothGrad and SmoothTaylor (REFERENCE.md section 7).

Methods that need the model at other inputs (IG's path points, SmoothGrad's noisy copies) clone the
forward path over an expanded batch (steps x N), so one ONNX Runtime call does the whole method."""

from lrpgraph.errors import LrpgraphError

METHODS = ("gradient", "input-x-gradient", "ig", "guided-ig", "smoothgrad", "smoothtaylor")
GUIDED_OPS = {"Relu", "LeakyRelu", "PRelu", "Clip"}


def is_method(name):
    return name in METHODS


def gradient_plan(units, guided=False):
    """{unit name: Rule}: the plain gradient everywhere; with guided, only positive gradients pass the
    ReLU-like units and MaxPool (Kwon, Koo, Cho 2020)."""
    from lrpgraph.rules import make_rule

    plan = {}
    for unit in units:
        name = "gradient"
        if guided and (unit.op in GUIDED_OPS or unit.op == "MaxPool"):
            name = "guided"
        elif unit.op == "MaxPool":
            name = "wta"
        plan[unit.name] = make_rule(name)
    return plan


def emit(b, model, canon, method, seed, options, walk):
    """Emit the method's attribution for the image; returns (tensor, [new graph inputs])."""
    from lrpgraph.methods import integrated, smooth

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
