"""The one description of every op the converter knows: an OpRecord per op type.

A record says what kind of step the op is (KINDS), which rules it accepts, how it treats signs, and
which function carries relevance (or a gradient) back through it. canonicalize, composites, methods,
bounds and the CLI ask the records; nothing else lists op types. Adding an op = one `register` call
(usually as a decorator on its converter function) in the right converters/ module:

    @register("Gather", kind="structure")
    def gather(ctx, unit, rule, r_outs): ...    # the signal for each input

    @activation_op("Softsign")                  # activations.py: the record, by the op's derivative
    def softsign(ctx, unit, x, y): ...          # dy/dx as emitted ONNX nodes

A converter is called as fn(ctx, unit, rule, r_outs) and returns the signal for each of unit.inputs
(None where the input gets none: weights, constants, a squeeze-excitation gate)."""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from onnx import NodeProto

from lrpgraph.errors import LrpgraphError, UnsupportedModelError
from lrpgraph.rules import RULES, Rule, default_rules, unsupported_rule

if TYPE_CHECKING:
    from lrpgraph.canonicalize import Unit

# kind -> (what it is, defaults every op of that kind gets unless its record says otherwise: flags). The rules
# a kind accepts by default are those whose units name it (rules.default_rules): those zennit's composites
# allow for such a layer.
KINDS = {
    "linear": ("a layer with constant weights (Conv, Gemm, MatMul): bias Add and BatchNormalization fused in", {}),
    "activation": ("an element-wise non-linearity of one signal input", {}),
    "bn": ("a standalone per-channel affine normalisation (BatchNormalization)", {}),
    "normaliser": ("a normalisation whose statistics depend on the input (LayerNorm, Softmax in the graph)", {}),
    "sum": ("a sum of signals (residual Add)", {"keeps_nonneg": True, "gate_path": True}),
    "affine": ("an element-wise map by a constant (Add/Sub/Mul/Div: input normalisation)", {"gate_path": True}),
    "gate": ("a product of a signal and a gate (squeeze-excitation, x * sigmoid(x))",
             {"keeps_nonneg": True, "gate_path": True}),
    "product": ("a product of two signals (MatMul of two activations, attention)", {}),
    "maxpool": ("a max over windows", {"keeps_nonneg": True}),
    "avgpool": ("a mean over windows or axes", {"keeps_nonneg": True}),
    "structure": ("moves or selects values without arithmetic (Reshape, Concat, Slice, Gather, ...)",
                  {"keeps_nonneg": True, "gate_path": True}),
    "shape": ("computes from the input's shape only, never from its values (Shape, Size)", {}),
    "head": ("turns the logits into probabilities at the output; the logits before it are explained", {}),
}

Check = bool | Callable  # a flag, or a predicate (unit, inits) -> bool


@dataclass(frozen=True)
class OpRecord:
    """Everything the converter knows about one op type.

    kind: one of KINDS, the unit's kind unless `classify` says otherwise.
    convert: fn(ctx, unit, rule, r_outs) -> one signal (or None) per input; None for ops that are never
        explained on the path (shape and head kinds).
    rules: {kind: rule names} the op accepts; a kind not listed accepts the rules whose units name it
        (rules.default_rules).
    category: the composite key (composites.py) when the unit has the record's kind; the kind if None.
    composite_key: a more specific composite key tried first (flex's 'relu').
    classify: fn(node, dynamic) -> kind, for ops whose kind depends on which inputs carry the signal
        (dynamic[i]: input i depends on the image); may raise UnsupportedModelError.
    nonneg_output: the output is never negative (ReLU, Sigmoid), or a predicate (unit, inits) -> bool.
    keeps_nonneg: a non-negative input gives a non-negative output, or a predicate (unit, inits) -> bool.
    guided: under guided methods (guided IG, GNL) only positive gradients pass it.
    gradient_rule: the rule gradient-family methods give it ('wta' for MaxPool).
    gate_source: its output can be the gate of a Mul (Sigmoid, HardSigmoid, Clip).
    gate_path: the search for a gate looks through it to its first input.
    derivative: fn(ctx, unit, x, y) -> dy/dx element-wise, for activations.
    affine: fn(value, signal_first) -> (factor, shift): the map x -> x * factor + shift it applies with
        the constant `value` (affine ops; bounds.py pushes the image range through it).
    domains: the ONNX domains the op type is looked up in.
    by_kind: {kind: converter} for kinds `classify` may give that `convert` does not handle (see extend).
    """

    op_type: str
    kind: str
    convert: Callable | None
    rules: Mapping = field(default_factory=dict)
    category: str | None = None
    composite_key: str | None = None
    classify: Callable | None = None
    nonneg_output: Check = False
    keeps_nonneg: Check = False
    guided: bool = False
    gradient_rule: str = "gradient"
    gate_source: bool = False
    gate_path: bool = False
    derivative: Callable | None = None
    affine: Callable | None = None
    domains: tuple = ("", "ai.onnx")
    by_kind: Mapping = field(default_factory=dict)

    def converter(self, kind: str) -> Callable | None:
        """The function that carries the signal back through a unit of this op and kind."""
        return self.by_kind.get(kind, self.convert)

    def rules_for(self, kind: str) -> frozenset:
        """The rule names a unit of this op and kind accepts."""
        return self.rules[kind] if kind in self.rules else default_rules(kind)

    def category_of(self, kind: str) -> str:
        return self.category if kind == self.kind and self.category else kind

    def check(self, flag: str, unit: "Unit", inits: Mapping) -> bool:
        value = getattr(self, flag)
        return bool(value(unit, inits)) if callable(value) else bool(value)


@dataclass
class Context:
    """What converters may read: the builder, static shapes, initializer values, tensor facts."""

    b: object  # graph.Builder
    shapes: dict
    inits: dict  # name -> numpy array
    signal: set  # tensors that depend on the image input
    nonneg: set = field(default_factory=set)  # tensors known to be >= 0 (ReLU outputs and what only moves them)
    message: str = "relevance"  # "gradient": LRP rules receive and return g = R / x (attn-lrp, cp-lrp)

    def value(self, name: str, unit: "Unit", what: str) -> np.ndarray:
        """The numpy value of a constant input, or a clear error naming the node."""
        if name not in self.inits:
            raise UnsupportedModelError(f"node '{unit.name}' ({unit.op}): its {what} ('{name}') must be a constant "
                                        "initializer; fold constants first (e.g. onnxsim) or re-export")
        return self.inits[name]

    def shape(self, name: str, unit: "Unit") -> list:
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape[1:]):
            raise UnsupportedModelError(f"node '{unit.name}' ({unit.op}): the shape of '{name}' is unknown or not "
                                        "static beyond the batch; export the model with fixed spatial sizes")
        return shape


RECORDS: dict[str, OpRecord] = {}


def register(*op_types: str, kind: str = None, rules: Iterable | Mapping = None, **flags) -> Callable:
    """Decorator: register the function as the converter of op_types, one record each (OpRecord's fields
    as keywords; the kind's default flags (KINDS) and rules (rules.default_rules) apply where not given; rules: a set for the
    record's kind or {kind: set}). The kind is required; an
    unknown kind, rule or field is an error at import time."""
    if kind not in KINDS:
        raise RegistryError(f"op(s) {', '.join(op_types)}: kind {kind!r} is not one of {', '.join(KINDS)}")
    flags = {**KINDS[kind][1], **flags}

    def decorate(fn):
        for op_type in op_types:
            add(OpRecord(op_type, kind, fn, {} if rules is None else rules, **flags))
        return fn

    return decorate


def add(record: OpRecord) -> OpRecord:
    """Register one record as given (also for ops without a converter: the shape and head kinds)."""
    if record.kind not in KINDS:
        raise RegistryError(f"op '{record.op_type}': kind {record.kind!r} is not one of {', '.join(KINDS)}")
    if record.op_type in RECORDS:
        raise RegistryError(f"op '{record.op_type}' is registered twice")
    record = replace(record, rules=_rules_by_kind(record.op_type, record.kind, record.rules))
    RECORDS[record.op_type] = record
    return record


def extend(op_type: str, kind: str, fn: Callable, rules: Iterable | None = None,
           classify: Callable | None = None) -> OpRecord:
    """Give a registered op a converter for another kind (e.g. MatMul of two signals: 'product', next to
    its 'linear' layers), with the rules that kind accepts and, if given, a new classify hook."""
    record = RECORDS[op_type]
    if kind not in KINDS or kind in record.by_kind or kind == record.kind:
        raise RegistryError(f"op '{op_type}': kind {kind!r} is unknown or already has a converter")
    new_rules = dict(record.rules)
    if rules is not None:
        new_rules.update(_rules_by_kind(op_type, kind, rules))
    RECORDS[op_type] = replace(record, by_kind={**record.by_kind, kind: fn}, rules=new_rules,
                               classify=classify or record.classify)
    return RECORDS[op_type]


def remove(op_type: str) -> OpRecord | None:
    """Unregister an op (tests register temporary ops); returns its record."""
    return RECORDS.pop(op_type, None)


def _rules_by_kind(op_type, kind, rules):
    by_kind = dict(rules) if isinstance(rules, Mapping) else {kind: rules}
    out = {}
    for k, names in by_kind.items():
        unknown = set(names) - set(RULES)
        if k not in KINDS or unknown:
            raise RegistryError(f"op '{op_type}': unknown kind {k!r} or rule(s) {sorted(unknown)}")
        out[k] = frozenset(names)
    return out


class RegistryError(LrpgraphError):
    """An op registered with a missing or unknown kind, rule or flag (a programming error, met at import)."""


def record_of(node: NodeProto) -> OpRecord | None:
    """The record of an onnx NodeProto (or anything with op_type and domain), None if the op is unknown."""
    record = RECORDS.get(node.op_type)
    return record if record is not None and getattr(node, "domain", "") in record.domains else None


def explainable(node: NodeProto) -> bool:
    """Whether relevance can be carried back through the node (a known op with a converter)."""
    record = record_of(node)
    return record is not None and (record.convert is not None or bool(record.by_kind))


def is_kind(node: NodeProto, kind: str) -> bool:
    record = record_of(node)
    return record is not None and record.kind == kind


def node_name(node: NodeProto) -> str:
    return node.name or node.output[0]


def check_rule(unit: "Unit", rule: Rule) -> None:
    """The walker's check: the rule is one the unit's record accepts for its kind."""
    if rule.name not in RECORDS[unit.op].rules_for(unit.kind):
        raise unsupported_rule(unit, rule)
