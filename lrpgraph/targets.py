"""What is explained: the seed put at the explained tensor (docs/rules.md, Targets).

Each mode gives a relevance seed (LRP rule sets) and a gradient seed (gradient-family rule sets and
LRP-Flex, whose relevance is input x modified gradient): top and index give y_c at the class and the
one-hot vector; all gives y and ones; seed takes a tensor from a new input and uses it as either.

A classifier's logits y [N, C] take the classic layout (seed): `target` [N], `relevance_seed` [N, C],
relevance [N, *input]. Any other explained tensor y [N, *S] (a detector's head, an inner tensor named by
convert's from_tensor) takes K targets per sample (explained_seed): `target` [N, K, len(S)] index tuples
into S, `relevance_seed` [N, K, *S]; the K seeds are laid along the batch axis as [K * N, *S]
(target-major) and walked back through the forward activations tiled K times (tiled_view: the forward is
computed once), giving relevance [N, K, *input] (unfold).

A causal LM's logits y [N, L, V] from token ids (is_sequence) take `top` as the next-token target: the
argmax token at the last non-padding position (the last position where `attention_mask` is 1, else the last
position; sequence_seed), relevance [N, L]; `index` takes K (position, token) tuples per sample [N, K, 2]
and `seed` [N, K, L, V] (explained_seed with the length L dynamic), relevance [N, K, L]. Padding tokens get
exactly 0 (masked)."""

import math
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    import onnx

    from lrpgraph.catalog import Canonical
    from lrpgraph.graph import Builder

TARGETS = ("top", "index", "seed", "all")
TARGET_INPUT = "target"
SEED_INPUT = "relevance_seed"
MASK_INPUT = "attention_mask"  # a causal LM's padding mask [N, L] (1: token, 0: padding)


def seed(b: "Builder", logits: str, num_classes: int, mode: str, batch_dim: str | int, gradient: bool = False) -> tuple:
    """Emit the seed; returns (seed tensor, [new graph inputs])."""
    if mode not in TARGETS:
        raise LrpgraphError(f"unknown target mode '{mode}'; choose one of {', '.join(TARGETS)}")
    b.scope = "target"
    if mode == "seed":
        info = helper.make_tensor_value_info(SEED_INPUT, TensorProto.FLOAT, [batch_dim, num_classes])
        info.doc_string = "what to explain: relevance (LRP) or gradient (gradient methods, flex) at the logits, [N, C]"
        return SEED_INPUT, [info]
    if mode == "all":
        return (b.ones_like(logits) if gradient else logits), []
    if mode == "top":
        index = b.op("ArgMax", [logits], "argmax", axis=1, keepdims=0)
        inputs = []
    else:
        info = helper.make_tensor_value_info(TARGET_INPUT, TensorProto.INT64, [batch_dim])
        info.doc_string = "class index to explain per sample, [N], in [0, C)"
        index, inputs = TARGET_INPUT, [info]
    onehot = b.op("OneHot", [index, b.ints([num_classes]), b.const([0.0, 1.0])], "onehot", axis=-1)
    return (onehot if gradient else b.mul(logits, onehot)), inputs


def is_classic(shape: list | None, from_tensor: str | None) -> bool:
    """True for the classic layout: logits [N, C] found by convert itself (no from_tensor)."""
    return from_tensor is None and shape is not None and len(shape) == 2 and shape[1] is not None


def explained_shape(tensor: str, shape: list | None) -> list:
    """S of an explained tensor [N, *S], checked to be static."""
    if not shape or len(shape) < 2 or any(not isinstance(d, int) or d < 1 for d in shape[1:]):
        raise LrpgraphError(f"the explained tensor '{tensor}' must have a static shape [N, ...] (got {shape}); give "
                            "the image size (--image-size H,W) or name another tensor with --from")
    return list(shape[1:])


def explained_seed(b: "Builder", tensor: str, sizes: list, mode: str, batch_dim: str | int,
                   gradient: bool = False) -> tuple:
    """The K seeds at the explained tensor [N, *S] (S = sizes) laid along the batch: ([K * N, *S], K as an
    int64 [1] tensor, [new graph inputs])."""
    if mode not in TARGETS:
        raise LrpgraphError(f"unknown target mode '{mode}'; choose one of {', '.join(TARGETS)}")
    b.scope = "target"
    inputs, rank = [], len(sizes)
    if None in sizes:  # a causal LM's length L: the one-hot's depth read from the tensor
        size = b.op("Shape", [b.op("Reshape", [tensor, b.ints([0, -1])], "flat_all")], "size", start=1)
    else:
        size = b.ints([math.prod(sizes)])
    if mode == "seed":
        dims = [d if d is not None else "L" for d in sizes]
        info = helper.make_tensor_value_info(SEED_INPUT, TensorProto.FLOAT, [batch_dim, "K", *dims])
        info.doc_string = "what to explain: K relevance (LRP) or gradient seeds per sample at the explained tensor"
        mask, inputs, gradient = SEED_INPUT, [info], True
    elif mode == "all":
        mask = b.op("Unsqueeze", [b.ones_like(tensor), b.ints([1])], "all")
    else:
        if mode == "top":
            flat = b.op("ArgMax", [b.op("Reshape", [tensor, b.ints([0, -1])], "flat")], "argmax", axis=1,
                        keepdims=1)
        else:
            info = helper.make_tensor_value_info(TARGET_INPUT, TensorProto.INT64, [batch_dim, "K", rank])
            info.doc_string = f"K index tuples into the explained tensor's {sizes} per sample, [N, K, {rank}]"
            inputs = [info]
            strides = np.cumprod([1] + sizes[::-1][:-1])[::-1]  # the first size is never read
            flat = b.op("ReduceSum", [b.mul(TARGET_INPUT, b.ints(list(strides))), b.ints([-1])], "flat", keepdims=0)
        onehot = b.op("OneHot", [flat, size, b.const([0.0, 1.0])], "onehot", axis=-1)
        mask = b.op("Reshape", [onehot, b.ints([0, 0, *(-1 if d is None else d for d in sizes)])], "mask")
    value = mask if gradient else b.mul(mask, b.op("Unsqueeze", [tensor, b.ints([1])], "unsqueeze"))
    k = b.op("Shape", [value], "k", start=1, end=2)
    major = b.op("Transpose", [value], "target_major", perm=[1, 0, *range(2, rank + 2)])
    if None in sizes:
        shape = b.op("Concat", [b.ints([-1]), b.op("Shape", [tensor], "sizes", start=1)], "seed_shape", axis=0)
    else:
        shape = b.ints([-1, *sizes])
    return b.op("Reshape", [major, shape], "seed"), k, inputs


def is_sequence(shape: list | None, from_tensor: str | None, tokens: bool) -> bool:
    """True for a causal LM's logits [N, L, V] from token ids (V static), found by convert itself."""
    return (from_tensor is None and tokens and shape is not None and len(shape) == 3
            and isinstance(shape[2], int) and shape[2] > 0)


def sequence_seed(b: "Builder", logits: str, ids: str, mask: str | None, mode: str, gradient: bool) -> str:
    """The seed [N, L, V] of top (the argmax token at the last non-padding position: the last position where
    mask is 1, the last position without a mask) or all (every logit)."""
    b.scope = "target"
    if mode == "all":
        return b.ones_like(logits) if gradient else logits
    length = b.op("Shape", [ids], "length", start=1, end=2)
    last = b.op("Cast", [b.op("Squeeze", [length], "l")], "l_float", to=TensorProto.FLOAT)
    steps = b.op("Range", [b.const(1.0), b.add(last, b.const(1.0)), b.const(1.0)], "steps")  # 1 .. L
    present = b.op("Cast", [mask], "present", to=TensorProto.FLOAT) if mask else b.ones_like(ids)
    position = b.op("ArgMax", [b.mul(present, steps)], "last", axis=1, keepdims=0)
    at = b.op("OneHot", [position, length, b.const([0.0, 1.0])], "at", axis=-1)
    row = b.op("ReduceSum", [b.mul(logits, b.op("Unsqueeze", [at, b.ints([2])], "at3")), b.ints([1])], "row",
               keepdims=0)
    vocab = b.op("Shape", [logits], "vocab", start=2, end=3)
    token = b.op("OneHot", [b.op("ArgMax", [row], "token", axis=1, keepdims=0), vocab, b.const([0.0, 1.0])],
                 "token_onehot", axis=-1)
    onehot = b.mul(b.op("Unsqueeze", [at, b.ints([2])], "at_l"), b.op("Unsqueeze", [token, b.ints([1])], "at_v"))
    return onehot if gradient else b.mul(logits, onehot)


def mask_input(model: "onnx.ModelProto") -> str | None:
    """The padding mask input of a causal LM (MASK_INPUT, integer or bool), or None."""
    found = next((i for i in model.graph.input if i.name == MASK_INPUT), None)
    return found.name if found is not None and found.type.tensor_type.elem_type != TensorProto.FLOAT else None


def masked(b: "Builder", heat: str, mask: str | None, k: bool) -> str:
    """The relevance per token [N, L] (or [N, K, L] with k) with padding tokens exactly 0."""
    if mask is None:
        return heat
    b.scope = "output"
    present = b.op("Cast", [mask], "present", to=TensorProto.FLOAT)
    return b.mul(heat, b.op("Unsqueeze", [present, b.ints([1])], "present_k") if k else present)


def tiled_view(canon: "Canonical", prefix: str) -> tuple:
    """(view, {tiled name: forward tensor}): canon with every image-dependent tensor renamed to its copy
    tiled K times along the batch ([K * N, ...]); tile() emits the copies the walk read."""
    from lrpgraph.methods.paths import renamed

    rename = {t: f"{prefix}:{t}" for t in canon.signal}
    view = renamed(canon, rename, prefix)
    for t in rename.values():
        shape = view.shapes.get(t)
        if shape:
            view.shapes[t] = [None, *shape[1:]]
    view.float_input = canon.float_input
    return view, {v: t for t, v in rename.items()}


def tile(b: "Builder", tiled: dict, shapes: dict, k: str, start: int) -> None:
    """Insert, at b.nodes[start], Tile nodes for the tiled tensors that the nodes after start read."""
    read = {t for node in b.nodes[start:] for t in node.input} | {t for node in b.nodes[start:] for t in node.output}
    nodes, kept = [], b.nodes[start:]
    del b.nodes[start:]
    b.scope = "tile"
    for name, tensor in tiled.items():
        if name not in read:
            continue
        rank = len(shapes.get(tensor) or [])
        if rank < 1:
            raise LrpgraphError(f"the rank of '{tensor}' is unknown; K targets per sample need it")
        repeats = b.op("Concat", [k, b.ints([1] * (rank - 1))], "repeats", axis=0) if rank > 1 else k
        nodes.append(helper.make_node("Tile", [tensor, repeats], [name], name=f"{b.prefix}/tile/{name}"))
    b.nodes.extend(nodes)
    b.nodes.extend(kept)


def unfold(b: "Builder", heat: str, image: str, k: str, rank: int) -> str:
    """[K * N, *input] -> [N, K, *input]."""
    b.scope = "output"
    rest = b.op("Shape", [image], "shape")
    major = b.op("Reshape", [heat, b.op("Concat", [k, b.ints([-1]), b.op("Slice", [rest, b.ints([1]),
                                                                               b.ints([rank])], "rest")],
                                        "shape", axis=0)], "unfold")
    return b.op("Transpose", [major], "sample_major", perm=[1, 0, *range(2, rank + 1)])
