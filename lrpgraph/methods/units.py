"""A gradient-family method as one unit: its name, the options it reads and its emitter, registered by the
`@method(...)` decorator. The method list, the dispatch on images and on token ids, which method reads which
option, the option checks, the options object (MethodOptions) and the command line's --method and option
flags are all read from the units registered here."""

from collections.abc import Callable
from dataclasses import dataclass

PER_TOKEN = ("norm", "sum")  # how a text model's hidden axis is reduced: the L2 norm of a gradient, a sum


@dataclass(frozen=True)
class Option:
    """One option a method reads: its keyword (lrpgraph.convert's; the CLI flag is --name with dashes), its
    default, its type (int, float or str), the CLI help text, and its range: choices (str), minimum (numbers;
    None: any finite value); `meaning` and `example` complete a range error ("give <meaning> >= 0, e.g.
    <example>"). A default of None means the method picks the value; None is then accepted."""

    name: str
    default: object
    type: type = float
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None
    meaning: str = ""
    example: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Method:
    """A registered method. emit(b, model, canon, seed, options, walk) -> (heatmap shaped like canon.input,
    [new graph inputs]) emits it for the explained input of canon (walk(view, plan, seed) runs the backward
    walker with a rule plan). On a text model the same emitter runs on the word embeddings and per_token
    says how the hidden axis is reduced: 'norm' (the L2 norm, for methods that give a gradient) or 'sum'
    (methods that give an attribution); text_check(name, options), when given, refuses options that do not
    apply to token inputs."""

    name: str
    emit: Callable
    options: tuple = ()
    per_token: str = "sum"
    text_check: Callable | None = None


METHODS: dict = {}  # {name: Method}, in registration order


def method(name: str, options: tuple | list = (), per_token: str = "sum",
           text_check: Callable | None = None) -> Callable:
    """Decorator registering the decorated emitter as the method `name` (see Method); returns it unchanged."""

    def register(emit: Callable) -> Callable:
        add(Method(name, emit, tuple(options), per_token, text_check))
        return emit

    return register


def add(unit: Method) -> Method:
    """Register a method unit. A name may be registered once; an option name that other methods read too must
    be declared the same way (one default, type and range per option)."""
    if unit.name in METHODS:
        raise ValueError(f"method '{unit.name}' is registered already")
    if unit.per_token not in PER_TOKEN:
        raise ValueError(f"method '{unit.name}': per_token must be one of {', '.join(PER_TOKEN)}")
    declared = declared_options()
    for option in unit.options:
        if option.name in declared and declared[option.name] != option:
            raise ValueError(f"method '{unit.name}' declares option '{option.name}' unlike the methods before it")
    METHODS[unit.name] = unit
    return unit


def unregister(name: str) -> None:
    """Remove a registered method (tests register their own)."""
    del METHODS[name]


def is_method(name: str) -> bool:
    return name in METHODS


def declared_options(units: tuple | None = None) -> dict:
    """{option name: Option} over the registered methods (or the given units), in registration order."""
    out = {}
    for unit in METHODS.values() if units is None else units:
        for option in unit.options:
            out.setdefault(option.name, option)
    return out


def option_users() -> dict:
    """{option name: set of the method names that read it}."""
    out = {}
    for unit in METHODS.values():
        for option in unit.options:
            out.setdefault(option.name, set()).add(unit.name)
    return out
