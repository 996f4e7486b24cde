"""The emitting half of every op: the functions that emit ONNX nodes, attached by op type to the records of
the catalog (lrpgraph/catalog/), which hold everything else. Each family module attaches its functions when
it is imported:

    @converts("Gather")                         # structure ops: carries the message back, per input
    def gather(ctx, unit, rule, r_outs): ...

    @derivative_of("Relu")                      # activations.py: an activation's derivative
    def relu(ctx, unit, x, y): ...              # dy/dx as emitted ONNX nodes

A converter is called as fn(ctx, unit, rule, r_outs) and returns the message for each of unit.inputs
(None where the input gets none: weights, constants, a squeeze-excitation gate).

An op the catalog does not know (an extension's, a test's) is added with one registration that gives
both halves: `register` (a record and its converter), `activations.activation_op` (a record and its
derivative), `linear.linear_op` (a record, its attribute reader and its forward and adjoint passes)."""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lrpgraph.catalog import RECORDS, UNEXPLAINED, OpRecord, RegistryError, Unit, add, add_kind, record
from lrpgraph.catalog import remove as remove_record
from lrpgraph.rules import RULES


@dataclass
class Emitters:
    """What the converters attach to one op type of the catalog.

    by_kind: {kind: converter fn(ctx, unit, rule, r_outs)}, one for each kind of its record relevance crosses.
    derivative: an activation's fn(ctx, unit, x, y) -> dy/dx element-wise.
    forward, adjoint: a linear op's passes, fn(b, layer, x, w, bias) -> y and fn(b, layer, s, w) -> the
        gradient of sum(s * y) with respect to x (converters/linear.py).
    weight_layout: a linear op's fn(b, layer, w, bias) -> (w, bias) that brings its stored weight to the layout
        its passes take, where it needs one (Gemm's transB, alpha and beta).
    """

    by_kind: dict = field(default_factory=dict)
    derivative: Callable | None = None
    forward: Callable | None = None
    adjoint: Callable | None = None
    weight_layout: Callable | None = None


EMITTERS: dict[str, Emitters] = {}


def attach(op_type: str, kind: str | None = None, converter: Callable | None = None, **parts) -> Emitters:
    """Attach emitting functions to the catalog's record of op_type: a converter for one of its kinds (its
    record's kind if None) and any of Emitters' other fields. An op without a record, or a kind the record
    does not list, is an error."""
    known = RECORDS.get(op_type)
    if known is None:
        raise RegistryError(f"op '{op_type}' has no record in the catalog (lrpgraph/catalog/); add its record first")
    kind = kind or known.kind
    if converter is not None and (kind not in known.kinds or kind in UNEXPLAINED):
        raise RegistryError(f"op '{op_type}': its record gives no explained kind {kind!r} (kinds: "
                            f"{', '.join(known.kinds)})")
    unknown = [name for name in parts if name not in Emitters.__dataclass_fields__ or name == "by_kind"]
    if unknown:
        raise RegistryError(f"op '{op_type}': {', '.join(unknown)} not among the emitters (Emitters' fields)")
    emitters = EMITTERS.setdefault(op_type, Emitters())
    if converter is not None:
        emitters.by_kind[kind] = converter
    for name, fn in parts.items():
        setattr(emitters, name, fn)
    return emitters


def converts(*op_types: str, kind: str | None = None) -> Callable:
    """Decorator: attach the function as the converter of op_types for one kind (each record's own kind if
    None)."""

    def decorate(fn):
        for op_type in op_types:
            attach(op_type, kind, fn)
        return fn

    return decorate


def converter_of(unit: Unit) -> Callable:
    """The function that carries the message back through the unit (its op and kind)."""
    return EMITTERS[unit.op].by_kind[unit.kind]


def register(*op_types: str, kind: str = None, rules: Iterable | Mapping = None, **flags) -> Callable:
    """Decorator for an op the catalog does not know: add a record for each of op_types (catalog.record's
    keywords: the kind's defaults apply) and attach the function as its converter. An unknown kind, rule or
    field is an error before anything is added."""
    _known_rules(op_types, rules)
    new = [record(op_type, kind, rules=rules, **flags) for op_type in op_types]

    def decorate(fn):
        for one in new:
            add(one)
            attach(one.op_type, one.kind, fn)
        return fn

    return decorate


def extend(op_type: str, kind: str, fn: Callable, rules: Iterable | None = None,
           classify: Callable | None = None) -> OpRecord:
    """Give a known op another kind and its converter (e.g. MatMul of two signals: 'product', next to its
    'linear' layers), with the rules that kind accepts and, if given, a new classify hook."""
    _known_rules([op_type], rules)
    extended = add_kind(op_type, kind, rules, classify)
    attach(op_type, kind, fn)
    return extended


def _known_rules(op_types, rules):
    """Rule names an extension's record lists must be registered rules (the catalog itself names them blind)."""
    names = [n for names in (rules.values() if isinstance(rules, Mapping) else [rules or ()]) for n in names]
    unknown = sorted(set(names) - set(RULES))
    if unknown:
        raise RegistryError(f"op(s) {', '.join(op_types)}: unknown rule(s) {unknown}")


def remove(op_type: str) -> tuple:
    """Take an op out of the catalog and the converters (tests register temporary ops): (op_type, its record
    or None, its emitters or None), for `restore`."""
    return op_type, remove_record(op_type), EMITTERS.pop(op_type, None)


def restore(removed: tuple) -> None:
    """Undo `remove`: whatever was registered under the op type since is taken out, the old record and
    emitters are put back."""
    op_type, old, emitters = removed
    remove_record(op_type)
    EMITTERS.pop(op_type, None)
    if old is not None:
        RECORDS[op_type] = old
    if emitters is not None:
        EMITTERS[op_type] = emitters
