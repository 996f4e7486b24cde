"""Importer ops of transformer graphs (registered into onnx_ops.OPS): LayerNormalization, RMSNormalization
Gelu and Einsum; Softmax,
MatMul of two tensors, Gather, Expand, Where and Erf are in onnx_ops already."""

import torch
import torch.nn.functional as F

from lrpgraph.train.onnx_ops import torch_op


@torch_op("LayerNormalization")
def layer_norm(ctx, x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
    axis = axis % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, epsilon)


@torch_op("Gelu")
def gelu(ctx, x, approximate="none"):
    return F.gelu(x, approximate=approximate)


@torch_op("RMSNormalization")
def rms_norm(ctx, x, scale, axis=-1, epsilon=1e-5, stash_type=1):
    axes = tuple(range(axis % x.dim(), x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(axes, keepdim=True) + epsilon) * scale


@torch_op("Einsum")
def einsum(ctx, *xs, equation):
    return torch.einsum(equation, *xs)
