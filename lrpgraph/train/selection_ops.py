"""Importer ops (registered into onnx_ops.OPS) that select or copy values by index: GatherND and ScatterND
(adaptive average pooling as the dynamo exporter writes it, and its relevance path) and Resize (nearest: a
selection per axis; linear and cubic: the interpolation matrix per axis that the converter reads)."""

from types import SimpleNamespace

import torch

from lrpgraph.converters.resize import interpolation_matrices, nearest_index_maps
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.train.onnx_ops import torch_op


@torch_op("GatherND")
def gather_nd(ctx, data, indices, batch_dims=0):
    if batch_dims:
        raise UnsupportedModelError("GatherND: only batch_dims 0 is supported")
    return data[tuple(indices.long().unbind(-1))]


@torch_op("ScatterND")
def scatter_nd(ctx, data, indices, updates, reduction="none"):
    if reduction not in ("none", "add"):
        raise UnsupportedModelError(f"ScatterND: reduction '{reduction}' is not supported (none or add)")
    return data.index_put(tuple(indices.long().unbind(-1)), updates, accumulate=reduction == "add")


@torch_op("Resize")
def resize(ctx, x, roi=None, scales=None, sizes=None, **attrs):
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise UnsupportedModelError(f"Resize: mode '{mode}' is not supported")
    given = {"roi": roi, "scales": scales, "sizes": sizes}
    names = ["x"] + [k if v is not None and v.numel() else "" for k, v in given.items()]
    unit = SimpleNamespace(inputs=names, attrs=attrs)
    inits_of = lambda name, what: given[name].detach().cpu().numpy()  # noqa: E731
    if mode != "nearest":  # y = A_h x A_w^T
        mats = [torch.as_tensor(m, dtype=x.dtype, device=x.device)
                for m in interpolation_matrices(unit, inits_of, list(x.shape))]
        x = torch.matmul(x, mats[-1].T)
        return torch.matmul(mats[0], x) if len(mats) == 2 else x
    maps = nearest_index_maps(unit, inits_of, list(x.shape))
    for axis, index in enumerate(maps, start=2):
        x = x.index_select(axis, torch.as_tensor(index, device=x.device))
    return x
