"""The gradient-family methods' options as one typed object, from the CLI (or lrpgraph.convert's keywords)
to the methods that read them."""

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class MethodOptions:
    """steps, quadrature ('riemann' | 'gauss-legendre'), baseline ('zero' | 'blur' | 'input') and chunk (steps
    per cloned forward; None: all) of IG and guided IG; samples and noise_level (sigma / (max - min)) of
    SmoothGrad and SmoothTaylor."""

    steps: int = 32
    quadrature: str = "riemann"
    baseline: str = "zero"
    chunk: int | None = None
    samples: int = 16
    noise_level: float = 0.1

    @classmethod
    def names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    def check(self) -> "MethodOptions":
        """Raise LrpgraphError (one line) for counts that are not positive or a negative noise level."""
        from lrpgraph.checks import check_method_options

        check_method_options(self.steps, self.samples, self.noise_level, self.chunk)
        return self

    def to_dict(self) -> dict:
        """As the model's metadata records them."""
        return asdict(self)
