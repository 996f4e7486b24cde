"""The command line's gradient-family options, read from the registered method units (methods.units): --method
with their names and one flag per option they declare (type, default, range and help from the Option). A
command built with MethodCommand gets them when it runs, so a method registered after import has its flags."""

import functools

import click

from lrpgraph.methods import METHODS, MethodOptions
from lrpgraph.methods.units import declared_options

METHOD_HELP = "a gradient-family method instead of LRP"


class MethodCommand(click.Command):
    """A click command whose --method (placed before its --explain) and method option flags (after it) come
    from the registered methods; the callback receives `method` and each option by its keyword."""

    def get_params(self, ctx: click.Context) -> list:
        params = super().get_params(ctx)
        at = next(i for i, p in enumerate(params) if p.name == "explain")
        choice, options = method_params(tuple(METHODS.values()))
        return params[:at] + [choice, params[at]] + options + params[at + 1:]


@functools.cache
def method_params(units: tuple) -> tuple:
    """(the --method option, [one click option per declared method option]) for these units (cached per set of
    units, so that click sees the same parameter objects while it parses)."""
    choice = click.Option(["--method", "-m"], type=click.Choice([u.name for u in units]), help=METHOD_HELP)
    options = []
    for option in declared_options(units).values():
        if option.type is int:
            kind = click.IntRange(min=option.minimum) if option.minimum is not None else int
        elif option.choices:
            kind = click.Choice(list(option.choices))
        else:
            kind = option.type
        options.append(click.Option([option.flag, option.name], type=kind, default=option.default,
                                    show_default=option.default is not None, help=option.help or None))
    return choice, options


def method_options(values: dict) -> MethodOptions:
    """The method options among a command's parameter values, as the one object the converter takes."""
    return MethodOptions(**{name: values[name] for name in MethodOptions.names()})
