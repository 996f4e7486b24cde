"""The command line's rule options, derived from the rule and composite units (lrpgraph/rules/): --composite,
--rule (its help lists the rules registered when it is shown), --stabilizer and one flag per rule parameter
that a composite reads from an option. Imports neither onnx nor the converters."""

from collections.abc import Callable

import click

from lrpgraph.rules import RuleOptions, listing
from lrpgraph.rules.composites import names as composite_names
from lrpgraph.rules.options import STABILIZER_HELP, flag, option_params

COMPOSITE_NAMES = composite_names()
DEFAULTS = RuleOptions()


class RuleOverride(click.Option):
    """--rule, whose help lists the rules registered when it is shown."""

    def get_help_record(self, ctx: click.Context) -> tuple | None:
        self.help = ("override by op type or node name, e.g. Gemm=epsilon:0.25, /features/conv0=zplus (repeatable); "
                     "RULE one of: " + ", ".join(line.split()[0] for line in listing()))
        return super().get_help_record(ctx)


def rule_options(fn: Callable) -> Callable:
    """Decorator: --composite, --rule, --stabilizer and one flag per option of the rules' parameters."""
    options = [
        click.option("--composite", "-c", type=click.Choice(COMPOSITE_NAMES), default="epsilon-plus", show_default=True,
                     help="rule preset (zennit's names)"),
        click.option("--rule", "rules", cls=RuleOverride, multiple=True, metavar="KEY=RULE"),
        click.option("--stabilizer", type=float, default=DEFAULTS.stabilizer, show_default=True, help=STABILIZER_HELP),
        click.option("--zero-params", type=click.Choice(["bias"]), default=None,
                     help="leave the linear layers' biases out of the rules (zennit's zero_params=['bias'])"),
        *(click.option(flag(name), type=float, default=getattr(DEFAULTS, name), show_default=name != "epsilon",
                       help=param.help) for name, (_, param) in option_params().items()),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def options_given(kw: dict) -> RuleOptions:
    """The rule options given on the command line (a command's keywords), as the one object the converter takes."""
    values = {k: kw[k] for k in RuleOptions.names()}
    values["zero_params"] = (values["zero_params"],) if values.get("zero_params") else None
    return RuleOptions(**values)
