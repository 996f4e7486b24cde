"""Checks of user-given numbers and preprocessing, shared by the Python API and the command line: each
failure is one LrpgraphError naming the value, what is allowed and what to do."""

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    from lrpgraph.methods.units import Option

CHANNELS = {"L": 1, "RGB": 3}


def finite(value: object, name: str) -> tuple:
    """The value as a tuple of numbers (one, or one per channel); an error naming it unless every one is finite."""
    values = tuple(np.asarray(value).ravel().tolist()) if np.ndim(value) > 0 else (value,)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise LrpgraphError(f"{name} {value!r} is not a finite number; give a finite value")
    return values


def check_bounds(low: float | tuple, high: float | tuple, where: str) -> None:
    """zbox bounds: finite, and low < high (per channel where they are tuples)."""
    lows, highs = finite(low, f"{where} low"), finite(high, f"{where} high")
    if len(lows) > 1 and len(highs) > 1 and len(lows) != len(highs):
        raise LrpgraphError(f"{where}: {len(lows)} low values but {len(highs)} high values; give one per channel")
    pairs = zip(lows * (len(highs) if len(lows) == 1 else 1), highs * (len(lows) if len(highs) == 1 else 1))
    for lo, hi in pairs:
        if not lo < hi:
            raise LrpgraphError(f"{where}: low {lo:g} is not below high {hi:g}; zbox needs the lowest input value "
                                "below the highest (e.g. --low 0 --high 1, or zbox:-2.1:2.6)")


def check_method_option(option: "Option", value: object) -> None:
    """A method option's value against its declaration (methods.units.Option): an integer count at least its
    minimum, a finite number at least its minimum, a string among its choices; None where the default is None."""
    if value is None and option.default is None:
        return
    if option.type is int:
        if not isinstance(value, int) or isinstance(value, bool) or (option.minimum is not None
                                                                      and value < option.minimum):
            at_least = "a positive integer" if option.minimum == 1 else f"an integer >= {option.minimum}"
            raise LrpgraphError(f"{option.flag} {value!r} must be {at_least}")
    elif option.type is float:
        number = finite(value, option.flag)[0]
        if option.minimum is not None and number < option.minimum:
            below = "is negative" if option.minimum == 0 else f"is below {option.minimum:g}"
            raise LrpgraphError(f"{option.flag} {number:g} {below}; give {option.meaning or option.name} >= "
                                f"{option.minimum:g}, e.g. {option.example or option.default}")
    elif option.choices and value not in option.choices:
        names = ", ".join(option.choices[:-1]) + " or " + option.choices[-1]
        raise LrpgraphError(f"unknown {option.name} {value!r}; use {names}")


def _sizes(value, name):
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise LrpgraphError(f"{name} {value!r}: give one positive size (the shorter side) or two (height width)")
    return items


def check_preprocess(preprocess: dict | None, input_shape: tuple | list, where: str = "the model") -> None:
    """Preprocessing that the model's input can take: input_shape (C, H, W), None where not static."""
    pre = preprocess or {}
    channels, height, width = (tuple(input_shape) + (None, None, None))[:3]
    if pre.get("scale") is not None and not finite(pre["scale"], "--scale")[0] > 0:
        raise LrpgraphError(f"--scale {pre['scale']:g} must be > 0 (pixel values are divided by it; default 255)")
    mode = pre.get("mode")
    if mode is not None and str(mode).upper() not in CHANNELS:
        raise LrpgraphError(f"--mode {mode!r} is not supported; use L (grayscale) or RGB")
    count = CHANNELS[str(mode).upper()] if mode is not None else channels
    if mode is not None and channels is not None and count != channels:
        raise LrpgraphError(f"--mode {mode} gives {count} channel(s) but {where} takes {channels}; "
                            f"use --mode {'L' if channels == 1 else 'RGB'}")
    for key in ("mean", "std"):
        values = pre.get(key)
        if values is None:
            continue
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        for v in values:
            finite(v, f"--{key}")
        if count is not None and len(values) not in (1, count):
            raise LrpgraphError(f"--{key} is given {len(values)} times but {where} takes {count} channel(s); "
                                f"give it once or {count} times")
        if key == "std" and any(v <= 0 for v in values):
            raise LrpgraphError(f"--std {values}: every std must be > 0")
    size = None
    if pre.get("crop") is not None:
        size = _sizes(pre["crop"], "--crop")
    if pre.get("resize") is not None:
        resize = _sizes(pre["resize"], "--resize")
        size = size or resize
    if size is not None and height is not None and width is not None:
        if len(size) == 2 and (size[0], size[1]) != (height, width):
            raise LrpgraphError(f"preprocessing gives {size[0]}x{size[1]} images but {where} takes {height}x{width}; "
                                f"use --resize/--crop {height} {width}")
        square = len(size) == 1 and (pre.get("crop") is not None or height == width)  # else the aspect decides
        if square and (size[0], size[0]) != (height, width):
            raise LrpgraphError(f"preprocessing gives {size[0]}x{size[0]} images but {where} takes {height}x{width}; "
                                f"use --resize/--crop {height} {width}")


def check_labels(labels: list | None, classes: int | None, where: str = "the model") -> None:
    """Class names: one per class of the model (classes None: not static, not checked)."""
    if labels is not None and classes is not None and len(labels) != classes:
        raise LrpgraphError(f"--labels gives {len(labels)} class names but {where} has {classes} classes; "
                            "give one name per line, one line per class")
