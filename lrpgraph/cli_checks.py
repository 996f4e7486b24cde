"""Command-line checks that need click or the file system: options that would be ignored, and output paths
that cannot be written. Each failure is one LrpgraphError (the CLI prints one line and exits 2)."""

import os

import click
from click.core import ParameterSource

from lrpgraph.errors import LrpgraphError
from lrpgraph.methods.units import option_users as method_option_users
from lrpgraph.rules.composites import option_users

# which composites read which numeric option (the rest would silently ignore it), from the composites' tables
RULE_OPTION_USERS = option_users()


def given(ctx: click.Context | None = None) -> set:
    """Names of the parameters the user gave on the command line (or through the environment)."""
    ctx = ctx or click.get_current_context()
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-") if name != "rules" else "--rule"


def check_ignored(chosen: set, specs: list) -> None:
    """Refuse options that no composite or method in specs (the explained composites/methods) would read."""
    if "explain" in chosen:
        for name in ("method", "composite"):
            if name in chosen:
                raise LrpgraphError(f"{flag(name)} is ignored with --explain; name every heatmap in --explain "
                                    "NAME=SPEC (e.g. --explain lrp=epsilon-plus --explain ig=ig) instead")
    elif "method" in chosen and "composite" in chosen:
        raise LrpgraphError("--method and --composite exclude each other: --method replaces LRP by a gradient "
                            "method; give one (or several heatmaps with --explain NAME=SPEC)")
    for table in (RULE_OPTION_USERS, method_option_users()):  # which method reads which option: the method units
        for name, users in table.items():
            if name in chosen and not users & set(specs):
                raise LrpgraphError(f"{flag(name)} is ignored by {', '.join(sorted(set(specs)))}: it is read only by "
                                    f"{', '.join(sorted(users))}; leave it out or choose one of those")


def default_output(model: str) -> str:
    """convert's output path when -o is not given: MODEL with .lrp.onnx."""
    root, ext = os.path.splitext(model)
    return root + ".lrp.onnx" if ext == ".onnx" else model + ".lrp.onnx"


def check_output_file(path: str | os.PathLike, option: str, source: str | os.PathLike | None = None) -> None:
    """An output file that can be written: its folder exists or can be made, it is not a folder, and it is
    not the input model itself (refused even with --force)."""
    if os.path.isdir(path):
        example = os.path.join(path, "model.lrp.onnx")
        raise LrpgraphError(f"{option} {path} is a folder; give a file name, e.g. {example}")
    if source is not None and os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
        raise LrpgraphError(f"{option} {path} is the input model itself; write the converted model to another file")
    check_output_dir(os.path.dirname(os.path.abspath(path)), option, shown=path)


def check_output_dir(path: str | os.PathLike, option: str, shown: str | None = None) -> None:
    """A folder that exists or can be created: the nearest existing ancestor is a writable folder."""
    shown = shown if shown is not None else path
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    if not os.path.isdir(current):
        raise LrpgraphError(f"{option} {shown}: {current} is a file, not a folder; choose another path")
    if not os.access(current, os.W_OK | os.X_OK):
        raise LrpgraphError(f"{option} {shown}: cannot write in {current} (no permission); choose another path")


def make_output_dir(path: str | os.PathLike, option: str) -> None:
    """Create the output folder (after check_output_dir); an OSError becomes one line."""
    check_output_dir(path, option)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise LrpgraphError(f"{option} {path}: cannot create the folder ({error.strerror}); choose another path") \
            from None


def write_error(error: OSError, option: str, path: str | os.PathLike) -> LrpgraphError:
    """One line for an OSError met while writing under path."""
    where = error.filename or path
    return LrpgraphError(f"{option} {path}: cannot write {where} ({error.strerror or error}); choose another path")


def image_size(ctx: click.Context, param: click.Parameter, text: str | None) -> tuple | None:
    """--image-size H,W as a tuple of ints (click callback); whether it fits the model, convert checks."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise LrpgraphError(f"--image-size {text}: write the image's height and width as integers, e.g. "
                            "--image-size 224,224") from None


IMAGE_SIZE = click.option("--image-size", callback=image_size, metavar="H,W", help="fix the spatial sizes of a "
                          "model exported with symbolic ones (the batch stays dynamic)")
