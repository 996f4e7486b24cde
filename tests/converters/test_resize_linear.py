"""Bilinear (and bicubic) Resize, a linear map y = A x: relevance and gradients go back through A^T, its
interpolation weights read from the node itself. Checked for every coordinate_transformation_mode the exporters
write, up and down, by scales and by sizes: against onnxruntime's own Resize (<seed, A x> = <A^T seed, x> for
every sample of a batch of random images and seeds), and against torch autograd of F.interpolate where torch has
the mode (half_pixel is align_corners=False, align_corners is align_corners=True)."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from seeded_ref import SEED, run, same_as_onnxruntime, seeded

MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
SHAPE = [4, 3, 6, 7]


def resize_model(mode, by, interpolation="linear"):
    inits = [numpy_helper.from_array(np.array([1, 1, 2.0, 1.5], np.float32), "scales"),
             numpy_helper.from_array(np.array([4, 3, 4, 5], np.int64), "sizes")]
    inputs = ["x", "", "scales"] if by == "scales" else ["x", "", "", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], mode=interpolation, coordinate_transformation_mode=mode)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
@pytest.mark.parametrize("by", ["scales", "sizes"])
@pytest.mark.parametrize("mode", MODES)
def test_resize_goes_back_through_its_transpose(mode, by, interpolation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE).astype(np.float32)
    seeds = {}

    def seed(y):
        seeds["s"] = rng.normal(size=y.shape).astype(np.float32)
        return seeds["s"]
    for spec in ("gradient", "epsilon"):  # the LRP composites move relevance as the gradient does here
        y, back = run(seeded(resize_model(mode, by, interpolation), spec), x, seed)
        forward = np.einsum("nchw,nchw->n", seeds["s"].astype(np.float64), y)
        adjoint = np.einsum("nchw,nchw->n", back.astype(np.float64), x)
        np.testing.assert_allclose(adjoint, forward, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["half_pixel", "align_corners"])
def test_bilinear_resize_matches_autograd(mode):
    x = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    seed = np.random.default_rng(2).normal(size=[4, 3, 4, 5]).astype(np.float32)
    y, back = run(seeded(resize_model(mode, "sizes"), "gradient"), x, lambda y: seed)
    xx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.interpolate(xx, size=(4, 5), mode="bilinear", align_corners=mode == "align_corners")
    (ref,) = torch.autograd.grad(out, xx, torch.tensor(seed, dtype=torch.float64))
    np.testing.assert_allclose(y, out.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(back, ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_importer_runs_bilinear_resize(mode):
    """lrpgraph.train's importer computes the resized image and its gradient as onnxruntime does."""
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    seed = np.random.default_rng(1).normal(size=[4, 3, 12, 10]).astype(np.float32)
    same_as_onnxruntime(seeded(resize_model(mode, "scales"), "gradient"), {"x": x, SEED: seed})
