"""The gradient-family methods' options as one object, from the CLI (or lrpgraph.convert's keywords) to the
methods that read them. Its fields are the options the registered method units declare (methods.units)."""

import functools

from lrpgraph.methods.units import declared_options


class MethodOptions:
    """One value per option of the registered methods (e.g. steps, quadrature, baseline, chunk of IG; samples,
    noise_level of SmoothGrad), each its option's default unless given. Immutable; compares by value."""

    __slots__ = ("_given",)

    def __init__(self, **values: object) -> None:
        known = declared_options()
        unknown = [k for k in values if k not in known]
        if unknown:
            raise TypeError(f"MethodOptions() got an unexpected keyword argument {unknown[0]!r}")
        object.__setattr__(self, "_given", dict(values))

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(name)
        declared = declared_options()
        if name not in declared:
            raise AttributeError(f"no method reads an option '{name}'")
        return self._given.get(name, declared[name].default)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("MethodOptions is immutable; use replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MethodOptions) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.to_dict().items()))

    def __reduce__(self) -> tuple:  # copy and pickle rebuild it from the given values
        return functools.partial(MethodOptions, **self._given), ()

    def __repr__(self) -> str:
        return "MethodOptions(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

    @classmethod
    def names(cls) -> tuple:
        return tuple(declared_options())

    def replace(self, **values: object) -> "MethodOptions":
        """A copy with the given options replaced."""
        return MethodOptions(**{**self._given, **values})

    def check(self) -> "MethodOptions":
        """Raise LrpgraphError (one line) for a value outside its option's range."""
        from lrpgraph.checks import check_method_option

        for name, option in declared_options().items():
            check_method_option(option, getattr(self, name))
        return self

    def to_dict(self) -> dict:
        """As the model's metadata records them."""
        return {name: getattr(self, name) for name in declared_options()}
