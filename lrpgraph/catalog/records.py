"""The op records: an OpRecord per op type, the kinds they name, and the look-ups analysis code asks.

A record says what kind of step the op is (KINDS), which rules it accepts where not the kind's default, how it treats signs, and the
hooks that read a node of it (which kind a node is, how a linear layer reads its attributes). It holds
no emitting code: the converters attach the functions that emit ONNX nodes by op type
(lrpgraph/converters/registry.py). The built-in records are tables in this package (ops.py, linear.py)."""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from onnx import NodeProto

from lrpgraph.catalog.layer import LinearOp
from lrpgraph.errors import LrpgraphError

# kind -> (what it is, flags every op of that kind gets unless its record says otherwise). The rules a kind
# accepts by default are those whose units name it (lrpgraph.rules.accepted): the catalog names rules, the rule
# units say where they apply, and the catalog imports none of them.
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
    "index": ("computes integer or boolean indices from the input's values (Equal, Not, ArgMax: a decoder "
              "classifier's last non-padding token); what it computes carries no relevance", {}),
    "head": ("turns the logits into probabilities at the output; the logits before it are explained", {}),
}
UNEXPLAINED = frozenset({"shape", "index", "head"})  # kinds relevance never crosses: they need no converter
NO_SIGNAL = frozenset({"shape", "index"})  # kinds whose outputs carry no signal, whatever their inputs

Check = bool | Callable  # a flag, or a predicate (unit, inits) -> bool


@dataclass(frozen=True)
class OpRecord:
    """Everything the catalog knows about one op type.

    kind: one of KINDS, the unit's kind unless `classify` says otherwise.
    kinds: every kind a unit of this op may have, `kind` first (classify picks among them).
    rules: {kind: rule names} the op accepts; a kind not listed accepts the rules whose units name that kind
        (lrpgraph.rules.accepted).
    keys: the composite keys (rules/composites.py) a unit of the record's kind is looked up by, most specific
        first (Relu: ('relu', 'activation'), Conv: ('conv',)); a unit of another kind, or an empty keys, is
        looked up by its kind.
    classify: fn(node, dynamic) -> kind, for ops whose kind depends on which inputs carry the signal
        (dynamic[i]: input i depends on the image); may raise UnsupportedModelError.
    nonneg_output: the output is never negative (ReLU, Sigmoid), or a predicate (unit, inits) -> bool.
    keeps_nonneg: a non-negative input gives a non-negative output, or a predicate (unit, inits) -> bool.
    guided: under guided methods (guided IG, GNL) only positive gradients pass it.
    gradient_rule: the rule gradient-family methods give it ('wta' for MaxPool).
    gate_source: its output can be the gate of a Mul (Sigmoid, HardSigmoid, Clip).
    gate_path: the search for a gate looks through it to its first input.
    affine: fn(value, signal_first) -> (factor, shift): the map x -> x * factor + shift it applies with
        the constant `value` (affine ops; bounds.py pushes the image range through it).
    linear: how a node of a linear op reads as a layer (a LinearOp), for the linear kind.
    domains: the ONNX domains the op type is looked up in.
    recompute: cheap enough to compute again in the relevance pass rather than keep its output from the forward
        (element-wise arithmetic, MatMul, Softmax: recompute.py copies a causal LM's attention probabilities).
    """

    op_type: str
    kind: str
    kinds: tuple = ()
    rules: Mapping = field(default_factory=dict)
    keys: tuple = ()
    classify: Callable | None = None
    nonneg_output: Check = False
    keeps_nonneg: Check = False
    guided: bool = False
    gradient_rule: str = "gradient"
    gate_source: bool = False
    gate_path: bool = False
    affine: Callable | None = None
    linear: LinearOp | None = None
    domains: tuple = ("", "ai.onnx")
    recompute: bool = False

    def keys_of(self, kind: str) -> tuple:
        """The composite keys of a unit of this op with this kind, most specific first."""
        return self.keys if kind == self.kind and self.keys else (kind,)


RECORDS: dict[str, OpRecord] = {}


def record(op_type: str, kind: str = None, kinds: Iterable = (), rules: Iterable | Mapping = None,
           **flags) -> OpRecord:
    """A checked record of op_type: OpRecord's fields as keywords, the kind's default flags and rules (KINDS)
    where not given; kinds: the other kinds classify may give; rules: a set for the record's kind or
    {kind: set}. An unknown kind, rule or field is an error (RegistryError, TypeError)."""
    if kind not in KINDS:
        raise RegistryError(f"op '{op_type}': kind {kind!r} is not one of {', '.join(KINDS)}")
    flags = {**KINDS[kind][1], **flags}
    all_kinds = tuple(dict.fromkeys((kind, *kinds)))
    unknown = [k for k in all_kinds if k not in KINDS]
    if unknown:
        raise RegistryError(f"op '{op_type}': kind(s) {unknown} not in {', '.join(KINDS)}")
    return OpRecord(op_type, kind, all_kinds, _rules_by_kind(op_type, kind, {} if rules is None else rules), **flags)


def add(new: OpRecord) -> OpRecord:
    """Put one record into the catalog (the built-in tables, or an extension's op)."""
    if new.kind not in KINDS:
        raise RegistryError(f"op '{new.op_type}': kind {new.kind!r} is not one of {', '.join(KINDS)}")
    if new.op_type in RECORDS:
        raise RegistryError(f"op '{new.op_type}' is registered twice")
    if (new.kind == "linear" or "linear" in new.kinds) and new.linear is None:
        raise RegistryError(f"op '{new.op_type}': a linear op's record needs its LinearOp (linear=...), how a node "
                            "of it reads as a layer")
    new = replace(new, kinds=tuple(dict.fromkeys((new.kind, *new.kinds))),
                  rules=_rules_by_kind(new.op_type, new.kind, new.rules))
    RECORDS[new.op_type] = new
    return new


def add_kind(op_type: str, kind: str, rules: Iterable | None = None, classify: Callable | None = None) -> OpRecord:
    """Give a record another kind (e.g. MatMul of two signals: 'product', next to its 'linear' layers), with
    the rules that kind accepts and, if given, a new classify hook."""
    old = RECORDS[op_type]
    if kind not in KINDS or kind in old.kinds:
        raise RegistryError(f"op '{op_type}': kind {kind!r} is unknown or already one of its kinds")
    new_rules = dict(old.rules)
    if rules is not None:
        new_rules.update(_rules_by_kind(op_type, kind, rules))
    RECORDS[op_type] = replace(old, kinds=old.kinds + (kind,), rules=new_rules, classify=classify or old.classify)
    return RECORDS[op_type]


def remove(op_type: str) -> OpRecord | None:
    """Take an op's record out of the catalog (tests register temporary ops); returns it."""
    return RECORDS.pop(op_type, None)


def _rules_by_kind(op_type, kind, rules):
    by_kind = dict(rules) if isinstance(rules, Mapping) else {kind: rules}
    out = {}
    for k, names in by_kind.items():
        if k not in KINDS:
            raise RegistryError(f"op '{op_type}': unknown kind {k!r}")
        out[k] = frozenset(names)
    return out


class RegistryError(LrpgraphError):
    """An op registered with a missing or unknown kind, rule or flag (a programming error, met at import)."""


def record_of(node: NodeProto) -> OpRecord | None:
    """The record of an onnx NodeProto (or anything with op_type and domain), None if the op is unknown."""
    found = RECORDS.get(node.op_type)
    return found if found is not None and getattr(node, "domain", "") in found.domains else None


def explainable(node: NodeProto) -> bool:
    """Whether relevance can be carried back through the node: a known op with a kind relevance crosses."""
    found = record_of(node)
    return found is not None and any(kind not in UNEXPLAINED for kind in found.kinds)


def is_kind(node: NodeProto, kind: str) -> bool:
    found = record_of(node)
    return found is not None and found.kind == kind


def stops_signal(node: NodeProto) -> bool:
    """Whether the node's outputs carry no signal even when its inputs do (NO_SIGNAL kinds)."""
    found = record_of(node)
    return found is not None and found.kind in NO_SIGNAL


def node_name(node: NodeProto) -> str:
    return node.name or node.output[0]
