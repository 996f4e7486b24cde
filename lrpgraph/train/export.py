"""Trained parameters back into ONNX: the same graphs, new initializer values, and a round-trip check.

write_back(module, plain, explained, out_plain, out_explained) writes every tensor the LrpModule holds
for an initializer into the explained model (the one the module was imported from) and into the plain
model (its initializers, or Constant nodes, of the same names: the converter keeps the original names),
then reloads both files and checks (1) every written initializer bit-exactly against the module and
(2) onnxruntime against the module: the plain model's logits and every output of the explained model,
L1 relative error within `tolerance`. A relevance map at a small stabilizer can be ill-conditioned in
float32 (single pixels where z ~ 0); there the bound is 4 x the module's own float32-vs-float64 error
on the same input, which a wrong graph or wrong weights exceed by orders of magnitude.
"""

import copy
import os
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from lrpgraph import targets
from lrpgraph.files import save
from lrpgraph.errors import LrpgraphError
from lrpgraph.ort import onnxruntime as ort
from lrpgraph.patterns.constants import is_constant

if TYPE_CHECKING:
    from lrpgraph.train.importer import LrpModule


def _value(module, name, like):
    """The module's tensor for initializer `name`, as a numpy array of the stored tensor's dtype and shape."""
    array = module.tensor(name).detach().cpu().numpy().astype(like.dtype)
    if array.shape != like.shape:
        raise LrpgraphError(f"initializer '{name}': the module holds shape {list(array.shape)}, the ONNX file "
                            f"{list(like.shape)}; give the ONNX files the module was imported from")
    return array


def _replace(model, module):
    """Replace initializers and Constant nodes named like the module's tensors; returns the names replaced."""
    held = set(module.initializer_names())
    done = []
    for init in model.graph.initializer:
        if init.name in held:
            init.CopyFrom(numpy_helper.from_array(_value(module, init.name, numpy_helper.to_array(init)), init.name))
            done.append(init.name)
    for node in model.graph.node:
        if is_constant(node) and node.output[0] in held and node.attribute[0].name == "value":
            old = numpy_helper.to_array(node.attribute[0].t)
            tensor = numpy_helper.from_array(_value(module, node.output[0], old), node.output[0])
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", tensor))
            done.append(node.output[0])
    return done


class RoundTripError(LrpgraphError):
    """The written files differ from the module; plain_ok: the plain model's logits still match."""

    def __init__(self, message: str, plain_ok: bool = False):
        super().__init__(message)
        self.plain_ok = plain_ok


def _l1(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    scale = np.abs(ref).sum()
    return float(np.abs(a - ref).sum() / scale) if scale > 0 else float(np.abs(a - ref).max(initial=0.0))


def _session(path):
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def probe_feeds(module: "LrpModule", session: ort.InferenceSession, example: np.ndarray | None = None,
                seed: int = 0) -> dict:
    """Inputs for the explained model: example (or uniform [0, 1) noise, batch 2) plus target / seed."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in session.get_inputs():
        if info.name == module.image_input:
            if example is not None:
                feeds[info.name] = np.asarray(torch.as_tensor(example).detach().cpu().float())
                continue
            shape = [2 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(info.shape)]
            if not all(isinstance(d, int) for d in shape):
                raise LrpgraphError(f"input '{info.name}' has the dynamic shape {info.shape}; pass example=... "
                                    "(an input batch) to write_back")
            feeds[info.name] = rng.random(shape, dtype=np.float32)
    batch = len(feeds[module.image_input])
    for info in session.get_inputs():
        if info.name == targets.TARGET_INPUT:
            classes = module.run({module.image_input: feeds[module.image_input]},
                                 [module.logits_output])[module.logits_output].shape[1]
            feeds[info.name] = rng.integers(0, classes, batch).astype(np.int64)
        elif info.name == targets.SEED_INPUT:
            feeds[info.name] = rng.standard_normal([batch, info.shape[1]]).astype(np.float32)
    return feeds


def _fresh_probes_agree(module, session, feeds, names, tolerance, probes=3):
    """Whether at least 2 of `probes` fresh single-image inputs (uniform over the failed batch's value range) pass.

    Where a derivative jumps (HardSwish at +-3, HardSigmoid and Clip at their bounds, ReLU at 0), a unit whose
    pre-activation lies within float32 rounding of the jump takes the other branch in onnxruntime (its fused or
    blocked kernels round differently) than in the module: one unit moves a gradient-rule heatmap past the bound
    (LRP-Flex on a trained Paddle MobileNetV3, tests/train/test_kink_flips.py). Such a unit is a property of the
    input, a wrong graph or wrong weights of every input: the mismatch stands only if most fresh inputs show it."""
    image = np.asarray(feeds[module.image_input])
    low, high = float(image.min()), float(image.max())
    passed = 0
    for seed in range(1, probes + 1):
        x = np.random.default_rng(seed).uniform(low, high, (1,) + image.shape[1:]).astype(np.float32)
        fresh = probe_feeds(module, session, x, seed=seed)
        with torch.no_grad():
            ours = {k: v.cpu().numpy() for k, v in module.run(fresh, names).items()}
            twin = copy.deepcopy(module)
            low_, high_ = (module, twin.double()) if module._float()[0] != torch.float64 else (twin.float(), module)
            a, b = low_.run(fresh, names), high_.run(fresh, names)
        theirs = dict(zip(names, session.run(names, fresh)))
        passed += all(_l1(theirs[k], ours[k]) <= max(tolerance, 4 * _l1(a[k].cpu().numpy(), b[k].cpu().numpy()))
                      for k in names)
    return 2 * passed > probes


def _compare(module, session, feeds, names, tolerance, what):
    """L1 errors of onnxruntime vs the module per output; raises beyond the bound (see the module doc)."""
    with torch.no_grad():
        ours = {k: v.cpu().numpy() for k, v in module.run(feeds, names).items()}
        theirs = dict(zip(names, session.run(names, feeds)))
        errors = {k: _l1(theirs[k], ours[k]) for k in names}
        bad = [k for k in names if errors[k] > tolerance]
        if bad:  # ill-conditioned in float32? measure the module's own float32 vs float64 error
            twin = copy.deepcopy(module)
            low, high = (module, twin.double()) if module._float()[0] != torch.float64 else (twin.float(), module)
            a, b = low.run(feeds, bad), high.run(feeds, bad)
            noise = {k: _l1(a[k].cpu().numpy(), b[k].cpu().numpy()) for k in bad}
            worse = {k: (errors[k], noise[k]) for k in bad if errors[k] > max(tolerance, 4 * noise[k])}
            if worse and not _fresh_probes_agree(module, session, feeds, list(worse), tolerance):
                raise LrpgraphError(f"round trip failed: onnxruntime on the written {what} model differs from the "
                                    "module (output: (L1 error, module float32 noise)) " + str(worse))
    return errors


def write_back(module: "LrpModule", plain_onnx_path: str | os.PathLike, explained_onnx_path: str | os.PathLike,
               out_plain: str | os.PathLike, out_explained: str | os.PathLike, example: np.ndarray | None = None,
               tolerance: float = 1e-5) -> dict:
    """Write the module's parameters (and buffers) into both ONNX files and check the round trip.

    Returns {"written": {"plain": n, "explained": n}, "errors": {output: L1 relative error}}."""
    plain, explained = onnx.load(os.fspath(plain_onnx_path)), onnx.load(os.fspath(explained_onnx_path))
    held = set(module.initializer_names())
    have = {i.name for i in explained.graph.initializer}
    if held - have - {n.output[0] for n in explained.graph.node if is_constant(n)}:
        raise LrpgraphError(f"{explained_onnx_path}: lacks initializers the module holds (e.g. "
                            f"{sorted(held - have)[:3]}); give the explained model the module was imported from")
    written = {"explained": len(_replace(explained, module)), "plain": len(_replace(plain, module))}
    if written["plain"] == 0:
        raise LrpgraphError(f"{plain_onnx_path}: shares no initializer with the module; give the plain model the "
                            "explained one was converted from")
    save(plain, out_plain, force=True)
    save(explained, out_explained, force=True)
    for path in (out_plain, out_explained):  # 1. bit-exact initializers
        reloaded = onnx.load(os.fspath(path))
        stored = {i.name: numpy_helper.to_array(i) for i in reloaded.graph.initializer}
        stored.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in reloaded.graph.node
                       if is_constant(n) and n.attribute and n.attribute[0].name == "value"})
        for name in held & set(stored):
            value = _value(module, name, stored[name])
            if stored[name].tobytes() != value.tobytes():
                raise LrpgraphError(f"{path}: initializer '{name}' does not hold the module's values after writing")
    session = _session(out_explained)  # 2. onnxruntime vs the module
    feeds = probe_feeds(module, session, example)
    try:
        errors, failed = _compare(module, session, feeds, [o.name for o in session.get_outputs()], tolerance,
                                  "explained"), None
    except LrpgraphError as err:
        errors, failed = {}, err
    plain_session = _session(out_plain)
    logits = plain_session.get_outputs()[0].name
    image = {module.image_input: feeds[module.image_input]}
    with torch.no_grad():
        ours = module.run(image, [module.logits_output])[module.logits_output].cpu().numpy()
    errors["plain:" + logits] = _l1(plain_session.run([logits], image)[0], ours)
    if failed is not None:
        raise RoundTripError(str(failed), plain_ok=errors["plain:" + logits] <= tolerance)
    if errors["plain:" + logits] > tolerance:
        raise RoundTripError(f"round trip failed: onnxruntime on the written plain model gives logits "
                            f"{errors['plain:' + logits]:.2e} (L1 relative) from the module's")
    return {"written": written, "errors": errors}
