"""Graphs whose shapes are computed inside them convert: shufflenet_v2 from the TorchScript exporter with a dynamic
batch (torchvision's, pooled by a module as zennit's norm rule needs; its channel shuffle's Reshape and its chunk's Slice computed from Shape) matches zennit under the bounds
of test_parity_zennit; with symbolic spatial sizes it converts with an image size to the same heatmaps; a Swin
transformer from the dynamo exporter (roll, window partition, the relative position bias gathered from a constant
table, patch merging as strided Slices, adaptive pooling as Gather by computed indices) gives torch autograd's gradient;
and a refusal suggests --image-size only where the image has symbolic spatial sizes."""

import functools
import io
import warnings

import numpy as np
import pytest
import torch
import torchvision
from test_parity_zennit import check_parity

import lrpgraph
from lrpgraph.errors import LrpgraphError
from seeded_ref import run, seeded
from zennit_ref import ExactMergeBatchNorm, Pooled, export, l1, randomize_batch_norm, run_onnx

SIDE = 64


@functools.cache
def shufflenet(spatial=False):
    torch.manual_seed(0)
    net = torchvision.models.shufflenet_v2_x0_5(weights=None)
    model = Pooled(torch.nn.Sequential(net.conv1, net.maxpool, net.stage2, net.stage3, net.stage4, net.conv5), net.fc)
    with torch.no_grad():
        randomize_batch_norm(model, torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    axes = {0: "N", 2: "H", 3: "W"} if spatial else {0: "N"}
    target = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), target, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": axes})
    return model.eval(), x, target.getvalue()


@pytest.mark.parametrize("composite,eps", [("epsilon-plus", 1e-6), ("epsilon", 0.01)])
def test_shufflenet_dynamic_batch_matches_zennit(composite, eps):
    model, x, onnx_bytes = shufflenet()
    check_parity(model, [ExactMergeBatchNorm()], x, onnx_bytes, composite, eps, f"shufflenet_v2 {composite}")


def test_shufflenet_dynamic_size_with_image_size_equals_dynamic_batch():
    _, x, dynamic = shufflenet(spatial=True)
    with pytest.raises(LrpgraphError, match="symbolic spatial sizes.*--image-size H,W"):
        lrpgraph.convert(dynamic)
    _, heat = run_onnx(lrpgraph.convert(dynamic, image_size=(SIDE, SIDE)), x.numpy())
    _, ref = run_onnx(lrpgraph.convert(shufflenet()[2]), x.numpy())
    assert np.abs(ref).sum() > 0 and l1(heat, ref) <= 1e-6, l1(heat, ref)


def test_gather_by_constant_indices_of_any_rank():
    """Gather along axis 1 by 2-D constant indices with repeats: the gradient (and relevance) is scattered back and
    added, as numpy's add.at does."""
    from onnx import TensorProto, helper, numpy_helper

    index = np.array([[0, 2], [2, 5], [1, 1]], np.int64)
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2, 4])],
                              [numpy_helper.from_array(index, "i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32)
    seed = np.random.default_rng(1).normal(size=(2, 3, 2, 4)).astype(np.float32)
    y, heat = run(seeded(model, "gradient"), x, lambda y: seed)
    ref = np.zeros_like(x)
    np.add.at(ref, (slice(None), index.reshape(-1)), seed.reshape(2, 6, 4))
    assert np.array_equal(y, x[:, index]) and np.allclose(heat, ref, atol=1e-6)


def small_swin():
    """torchvision's SwinTransformer (v1 blocks, shifted windows, patch merging) at a small width."""
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10).eval()


def test_swin_gradient_matches_autograd():
    model = small_swin()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    onnx_bytes = export(model, x)

    def seed(y):
        s = np.zeros_like(y)
        s[:, 3] = 1.0
        return s
    y, heat = run(seeded(onnx_bytes, "gradient"), x.numpy(), seed)
    xx = x.double().requires_grad_(True)
    (ref,) = torch.autograd.grad(model.double()(xx)[:, 3].sum(), xx)
    assert np.allclose(y, model.float()(x).detach().numpy(), atol=1e-4)
    assert l1(heat, ref.numpy()) <= 1e-4, l1(heat, ref.numpy())
