"""How relevance (or a gradient) crosses each op family. One function per op family, registered by op type.

A converter is called as fn(ctx, unit, rule, r_outs) and returns the signal for each of unit.inputs
(None where the input gets none: weights, constants, a squeeze-excitation gate)."""

from dataclasses import dataclass, field

from lrpgraph.errors import UnsupportedModelError

CONVERTERS = {}


def register(*op_types):
    def decorate(fn):
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn

    return decorate


@dataclass
class Context:
    """What converters may read: the builder, static shapes, initializer values, tensor facts."""

    b: object  # graph.Builder
    shapes: dict
    inits: dict  # name -> numpy array
    signal: set  # tensors that depend on the image input
    nonneg: set = field(default_factory=set)  # tensors known to be >= 0 (ReLU outputs and what only moves them)

    def value(self, name, unit, what):
        """The numpy value of a constant input, or a clear error naming the node."""
        if name not in self.inits:
            raise UnsupportedModelError(f"node '{unit.name}' ({unit.op}): its {what} ('{name}') must be a constant "
                                        "initializer; fold constants first (e.g. onnxsim) or re-export")
        return self.inits[name]

    def shape(self, name, unit):
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape[1:]):
            raise UnsupportedModelError(f"node '{unit.name}' ({unit.op}): the shape of '{name}' is unknown or not "
                                        "static beyond the batch; export the model with fixed spatial sizes")
        return shape


def unsupported_rule(unit, rule):
    return UnsupportedModelError(f"node '{unit.name}' ({unit.op}): rule '{rule.name}' does not apply to this op; "
                                 "choose another with --rule")


from lrpgraph.converters import activations, linear, norm, pooling, structure  # noqa: E402,F401  (registration)
