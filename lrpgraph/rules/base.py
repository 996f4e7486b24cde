"""A rule is one unit (a RuleUnit): its name, its parameters (defaults, ranges, the composite option each is
read from), the kinds of unit it applies to, a docstring with its formula, and one emitter per kind.

Everything else asks the units: make_rule and parse_rule (the rule chosen for a node, checked), the
options of the composites and their CLI flags (options.py), which composite reads which option
(composites.py), `lrpgraph inspect` and the parameter table of docs/rules.md (parameter_table).

An emitter is called by the converter of a unit of that kind as fn(ctx, unit, rule, r_outs, op) and returns
the message (relevance, or the gradient-form g) for each of unit.inputs; `op` holds the op's own primitives, which the converter supplies:

- linear: the LinearLayer (forward, backward: the transposed map, weights, per_channel, x, out);
- activation, bn, affine, normaliser, avgpool: place(t) (t at the signal input, None elsewhere),
  gradient(t) (t times the op's derivative, or its adjoint), and for activations `guided`, for
  normalisers frozen(t) (the derivative with the statistics held constant), for a Softmax total(t) (the sum
  over its axis);
- sum: signals [(tensor or None, sign)] and place_all(parts);
- gate: place(t) and partial(i, t) (the product rule's share of operand i);
- product: gradients(t) (both operands' shares of the product rule), and for MatMul, Einsum and Mul its
  operands and output (the relevance form of AttnLRP's uniform rule);
- maxpool: route(t) (each window's t to its arg-max);
- structure: none: the converter moves the message as the op moves values (MOVE); a Resize gives x, y and
  transpose(t) (its adjoint) to a rule with an emitter of its own (epsilon)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lrpgraph.checks import finite
from lrpgraph.errors import LrpgraphError, UnsupportedModelError

if TYPE_CHECKING:
    from lrpgraph.catalog import OpRecord, Unit

DEFAULT_STABILIZER = 1e-6
MOVE = "move"  # an emitter entry: the converter moves the message as the op moves values, whatever the rule


@dataclass(frozen=True)
class Param:
    """A rule parameter: its name (as docs and errors write it), default, lowest allowed value (strict: above it),
    the composite option it is read from (a RuleOptions field and CLI flag; None: a composite gives the default)
    and the option's help."""

    name: str
    default: float | tuple
    minimum: float | None = None
    strict: bool = False
    option: str | None = None
    help: str = ""

    def bound(self) -> str:
        """The range as text, '>= 0', '> 0', or '' (any finite number)."""
        return "" if self.minimum is None else f"{'>' if self.strict else '>='} {self.minimum:g}"

    def allows(self, value: float | tuple) -> bool:
        if self.minimum is None or isinstance(value, tuple):
            return True
        return value > self.minimum if self.strict else value >= self.minimum


@dataclass
class RuleUnit:
    """One rule: name, parameters, docstring (its formula), emitters {kind: fn or MOVE}, the kinds whose ops
    accept it unless their record says otherwise (default_kinds), a check of its parameters together
    (fn(values, where), raising LrpgraphError), whether its parameters are the image's value range (low, high:
    carried through in-graph normalisation to a first layer), and for a linear rule its groups of terms
    (fn(*parameters) -> [terms.Group])."""

    name: str
    params: tuple = ()
    doc: str = ""
    emitters: dict = field(default_factory=dict)
    default_kinds: frozenset = frozenset()
    check: Callable | None = None
    image_range: bool = False
    groups: Callable | None = None

    @property
    def kinds(self) -> tuple:
        """The kinds of unit the rule has an implementation for."""
        return tuple(sorted(self.emitters))

    def emits(self, *kinds: str) -> Callable:
        """Decorator: fn is this rule's emitter for the kinds."""
        def decorate(fn):
            for kind in kinds:
                self.emitters[kind] = fn
            return fn

        return decorate

    def spelling(self) -> str:
        """How --rule writes it, e.g. 'alpha-beta:ALPHA:BETA'."""
        return ":".join([self.name] + [p.name.upper() for p in self.params])

    def validate(self, values: tuple, where: str) -> None:
        """Finite values in each parameter's range, then the joint check; one LrpgraphError per failure."""
        for param, value in zip(self.params, values):
            finite(value, f"{where}: parameter")
            if not param.allows(value):
                raise LrpgraphError(f"{where}: {param.name} {value:g} must be {param.bound()}, e.g. "
                                    f"{self.name}:{param.default:g}")
        if self.check is not None:
            self.check(values, where)


RULES: dict = {}


def register_rule(unit: RuleUnit) -> RuleUnit:
    """Add a rule (its emitters may be attached after, with unit.emits)."""
    if unit.name in RULES:
        raise LrpgraphError(f"rule '{unit.name}' is registered twice")
    RULES[unit.name] = unit
    return unit


def unregister_rule(name: str) -> RuleUnit | None:
    """Remove a rule (tests register temporary ones); returns it."""
    return RULES.pop(name, None)


def default_rules(kind: str) -> frozenset:
    """The rule names a unit of this kind accepts unless its op record lists others."""
    return frozenset(name for name, unit in RULES.items() if kind in unit.default_kinds)


def accepted(record: "OpRecord", kind: str) -> frozenset:
    """The rule names a unit of this op record and kind accepts: the record's own list, else the kind's default."""
    return record.rules[kind] if kind in record.rules else default_rules(kind)


def check_rule(record: "OpRecord", unit: "Unit", rule: "Rule") -> None:
    """The walker's check: the rule is one the unit's op record accepts for its kind."""
    if rule.name not in accepted(record, unit.kind):
        raise unsupported_rule(unit, rule)


@dataclass(frozen=True)
class Rule:
    """A rule chosen for one node: its name and parameters (already parsed into floats)."""

    name: str
    params: tuple = ()
    stabilizer: float = DEFAULT_STABILIZER
    zero_bias: bool = False  # zennit's zero_params=['bias']: the layer's bias left out of the rule (RuleOptions)

    def __str__(self):
        return self.name + "".join(":" + _fmt(p) for p in self.params) + (" (bias left out)" if self.zero_bias else "")

    def emitter(self, kind: str, node: "Unit") -> Callable:
        """This rule's emitter for a unit of that kind; an error naming the node where it has none."""
        fn = RULES[self.name].emitters.get(kind)
        if fn is None or fn == MOVE:
            raise unsupported_rule(node, self)
        return fn


def unsupported_rule(unit: "Unit", rule: Rule) -> UnsupportedModelError:
    return UnsupportedModelError(f"node '{unit.name}' ({unit.op}): rule '{rule.name}' does not apply to this op; "
                                 "choose another with --rule")


def _fmt(p):
    return ",".join(f"{v:g}" for v in p) if isinstance(p, tuple) else f"{p:g}"


def _number(p, where):
    """A float, or for per-channel parameters (zbox bounds) a tuple of floats."""
    try:
        return tuple(float(v) for v in p) if isinstance(p, (list, tuple)) else float(p)
    except (TypeError, ValueError):
        raise LrpgraphError(f"{where}: rule parameters must be numbers (got {p!r})") from None


def make_rule(name: str, params: tuple = (), stabilizer: float = DEFAULT_STABILIZER, where: str = "rule",
              check: bool = True) -> Rule:
    """A Rule with its parameters checked (defaults fill missing ones); check=False: their count and type
    only (values a composite took from options that were checked already)."""
    if name not in RULES:
        raise LrpgraphError(f"{where}: unknown rule '{name}'; choose one of {', '.join(sorted(RULES))}")
    unit = RULES[name]
    if len(params) > len(unit.params):
        names = ", ".join(p.name for p in unit.params) or "none"
        raise LrpgraphError(f"{where}: rule '{name}' takes {len(unit.params)} parameter(s) ({names}), "
                            f"got {len(params)}")
    values = tuple(_number(p, where) for p in params) + tuple(p.default for p in unit.params[len(params):])
    if check:
        unit.validate(values, where)
    return Rule(name, values, stabilizer)


def parse_rule(text: str, stabilizer: float = DEFAULT_STABILIZER, where: str = "rule") -> Rule:
    """'alpha-beta:2:1' -> Rule('alpha-beta', (2.0, 1.0)), checked."""
    name, *params = text.strip().split(":")
    try:
        numbers = tuple(tuple(float(v) for v in p.split(",")) if "," in p else float(p) for p in params)
    except ValueError:
        raise LrpgraphError(f"{where}: parameters of '{text}' must be numbers, e.g. gamma:0.25 or "
                            "zbox:-2.1:2.6 (per channel: zbox:-2.1,-2.0,-1.8:2.2,2.4,2.6)") from None
    return make_rule(name, numbers, stabilizer, where)


def listing() -> list:
    """One line per rule for `lrpgraph inspect` and --help: its --rule spelling, defaults and kinds."""
    lines = []
    for unit in RULES.values():
        defaults = ", ".join(f"{p.name}={_fmt(p.default)}" for p in unit.params)
        lines.append(f"{unit.spelling():<22} {defaults:<22} {', '.join(unit.kinds)}")
    return lines


def parameter_table() -> str:
    """The parameter table of docs/rules.md (Markdown), one row per rule parameter."""
    rows = ["| rule | parameter | default | range | composite option | applies to |",
            "| --- | --- | --- | --- | --- | --- |"]
    for unit in RULES.values():
        kinds = ", ".join(unit.kinds)
        for p in unit.params or (None,):
            if p is None:
                rows.append(f"| `{unit.name}` | - | - | - | - | {kinds} |")
                continue
            option = f"`--{p.option.replace('_', '-')}`" if p.option else "-"
            bound = p.bound() or (unit.check.__doc__ if unit.check is not None else "") or "finite"
            rows.append(f"| `{unit.name}` | {p.name} | {_fmt(p.default)} | {bound} | {option} | {kinds} |")
    return "\n".join(rows) + "\n"


TABLE_BEGIN = "<!-- rule parameters: written by `python -m lrpgraph.rules docs/rules.md` from the rule units -->"
TABLE_END = "<!-- end of rule parameters -->"


def with_parameter_table(text: str) -> str:
    """A Markdown page (docs/rules.md) with the text between TABLE_BEGIN and TABLE_END replaced by
    parameter_table()."""
    before, begin, rest = text.partition(TABLE_BEGIN)
    _, end, after = rest.partition(TABLE_END)
    if not begin or not end:
        raise LrpgraphError(f"the page has no '{TABLE_BEGIN}' ... '{TABLE_END}' markers")
    return f"{before}{TABLE_BEGIN}\n{parameter_table()}{TABLE_END}{after}"
