"""The composites' numeric options (RuleOptions): the stabilizer, and one field per rule parameter that names
an option (Param.option): epsilon, gamma, alpha, beta, low, high, flex_epsilon. Their CLI flags, help, defaults
and checks come from the parameters."""

from dataclasses import asdict, field, fields, make_dataclass

from lrpgraph.checks import finite
from lrpgraph.errors import LrpgraphError
from lrpgraph.rules.base import DEFAULT_STABILIZER, RULES

STABILIZER_HELP = "stabilizer of the other rules"


def option_params() -> dict:
    """{option name: (rule unit, Param)} for every rule parameter read from an option (the first rule naming it)."""
    found = {}
    for unit in RULES.values():
        for param in unit.params:
            if param.option is not None:
                found.setdefault(param.option, (unit, param))
    return found


def _params(self) -> dict:
    """{rule name: its parameters} that the composites give the rules they choose."""
    out = {}
    for unit in RULES.values():
        values = [getattr(self, p.option) if p.option else p.default for p in unit.params]
        out[unit.name] = tuple(self.stabilizer if v is None else v for v in values)  # epsilon unset: the stabilizer
    return out


def _to_dict(self) -> dict:
    """The options given (None left out), as the model's metadata records them."""
    return {k: v for k, v in asdict(self).items() if v is not None}


def _names(cls) -> tuple:
    return tuple(f.name for f in fields(cls))


def _option_fields():
    out = [("stabilizer", float, field(default=DEFAULT_STABILIZER)),
           ("zero_params", tuple | None, field(default=None))]  # zennit's zero_params: ('bias',) or None
    for name, (unit, param) in option_params().items():
        default = None if name == "epsilon" else param.default  # epsilon unset: the stabilizer
        out.append((name, float | tuple | None, field(default=default)))
    return out


RuleOptions = make_dataclass("RuleOptions", _option_fields(), frozen=True, namespace={
    "params": _params, "to_dict": _to_dict, "names": classmethod(_names),
    "__doc__": "The composites' numeric rule options, from the CLI (or lrpgraph.convert's keywords) to the rules: "
               "the stabilizer and one field per rule parameter with an option (rules.options.option_params)."})


def check_rule_options(options: "RuleOptions") -> None:
    """Each option finite and in its parameter's range (epsilon unset: the stabilizer), the stabilizer > 0, and
    each rule's joint check (alpha - beta = 1, low < high) on the values a composite would give it."""
    if finite(options.stabilizer, "--stabilizer")[0] <= 0:
        raise LrpgraphError(f"--stabilizer {options.stabilizer:g} must be > 0 (it keeps denominators away from zero; "
                            f"default {DEFAULT_STABILIZER:g})")
    if options.zero_params not in (None, (), ("bias",), ["bias"]):
        raise LrpgraphError(f"zero_params {options.zero_params!r}: only ('bias',) is supported (zennit's "
                            "zero_params=['bias']: the linear layers' biases left out of the rules)")
    for name, (unit, param) in option_params().items():
        value = getattr(options, name)
        if value is None:
            continue
        finite(value, f"{_joint(unit)} {param.name}" if unit.check else flag(name))
        if not param.allows(value):
            raise LrpgraphError(f"{flag(name)} {value:g} must be {param.bound()} (default {param.default:g})")
    for unit in RULES.values():
        if unit.check is not None and all(p.option for p in unit.params):
            unit.check([getattr(options, p.option) for p in unit.params], _joint(unit))


def flag(name: str) -> str:
    """The CLI flag of an option: flex_epsilon -> --flex-epsilon."""
    return "--" + name.replace("_", "-")


def _joint(unit):
    return "/".join(flag(p.option) for p in unit.params)
