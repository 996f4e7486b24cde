"""zbox bounds at the first linear layer: the image's value range pushed through the normalisation a graph
applies before that layer.

A model exported with its preprocessing inside, (x - mean) / std, feeds its first Conv normalised values,
so the bounds zbox needs there are ((0 - mean) / std, (1 - mean) / std) per channel, not the pixel range
[0, 1]. The chain from the image to a first linear layer is followed when it holds only elementwise
Add/Sub/Mul/Div by constants that are scalars or per channel (shape [C, 1, 1] or [1, C, 1, 1]); the
bounds are pushed through it. Any other op on the way (a Resize, a standalone BatchNormalization, ...)
leaves the layer the bounds as given."""

from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.catalog import RECORDS, Canonical

if TYPE_CHECKING:
    from lrpgraph.rules import RuleOptions


def first_layer_maps(canon: Canonical) -> dict:
    """{first linear unit name: function (low, high) -> (low, high)} for every first layer behind an
    elementwise normalisation (none where the image feeds the layer directly)."""
    producer = {t: unit for unit in canon.units for t in unit.outputs}
    maps = {}
    for unit in canon.units:
        if not unit.first:
            continue
        chain, tensor = [], unit.inputs[0]
        while tensor != canon.input:
            step = producer.get(tensor)
            if step is None or step.kind != "affine" or RECORDS[step.op].affine is None:
                chain = None
                break
            chain.append(step)
            tensor = next(t for t in step.inputs[:2] if t in canon.signal)
        if chain:
            steps = [_step(s, canon) for s in reversed(chain)]
            if all(s is not None for s in steps):
                maps[unit.name] = _composed(steps)
    return maps


def _step(unit, canon):
    """(factor, shift) of the step x -> x * factor + shift, each a scalar or a per-channel vector (the op
    record's affine map of its constant), or None."""
    signal_first = unit.inputs[0] in canon.signal
    const = unit.inputs[1] if signal_first else unit.inputs[0]
    if const not in canon.inits:
        return None
    value = np.asarray(canon.inits[const], np.float64)
    rank = len(canon.shapes.get(canon.input) or ())
    if value.ndim > rank or rank < 2:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(n != 1 for i, n in enumerate(shape) if i != 1):
        return None  # varies along a spatial axis: not a per-channel normalisation
    value = value.reshape(-1) if value.size > 1 else value.reshape(())
    return RECORDS[unit.op].affine(value, signal_first)


def _composed(steps):
    def push(low, high):
        lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
        for factor, shift in steps:
            a, b = lo * factor + shift, hi * factor + shift
            lo, hi = np.minimum(a, b), np.maximum(a, b)
        return _param(lo), _param(hi)

    return push


def _param(values):
    """A float where every channel has the same bound, else a tuple (zbox's per-channel form)."""
    flat = np.atleast_1d(values).astype(np.float64)
    return float(flat[0]) if np.all(flat == flat[0]) else tuple(float(v) for v in flat)


def from_preprocess(preprocess: dict | None, options: "RuleOptions") -> "RuleOptions":
    """The rule options with low/high derived from the stored preprocessing (`--mean/--std/--scale`): pixels
    in [0, 255 / scale] become ((0 - mean_c) / std_c, (255 / scale - mean_c) / std_c) per channel, the range
    of the model's input that zbox (and LRP-Flex's first layer) needs. Options whose low/high were given
    (not the defaults 0 and 1), or preprocessing with neither mean, std nor scale, are returned as they are."""
    import dataclasses

    from lrpgraph.rules import DEFAULT_HIGH, DEFAULT_LOW

    pre = preprocess or {}
    if options is None or not any(pre.get(k) is not None for k in ("mean", "std", "scale")):
        return options
    if options.low != DEFAULT_LOW or options.high != DEFAULT_HIGH:
        return options
    top = 255.0 / float(pre.get("scale") or 255.0)
    mean = np.asarray(pre.get("mean") if pre.get("mean") is not None else 0.0, np.float64).reshape(-1)
    std = np.asarray(pre.get("std") if pre.get("std") is not None else 1.0, np.float64).reshape(-1)
    return dataclasses.replace(options, low=_param((0.0 - mean) / std), high=_param((top - mean) / std))
