"""The forward path cloned over an expanded batch: the model evaluated at m points per sample, laid
along the batch axis as [m * N, ...] (point-major), with its units renamed for the backward walk."""

import copy
from typing import TYPE_CHECKING

from lrpgraph.catalog import Canonical
from lrpgraph.errors import LrpgraphError
from lrpgraph.graph import Builder, needed_nodes
from lrpgraph.patterns.constants import fixed_batch_reshapes

if TYPE_CHECKING:
    import onnx


def clone_path(model: "onnx.ModelProto", canon: Canonical, new_input: str, prefix: str, b: "Builder | None" = None,
               m: int | None = None) -> tuple:
    """Copy every node between the image input and the logits (shape computations included) so that it
    reads new_input instead; returns (nodes, canonical view of the clone for the walker). With a builder b
    and the number of points m, the model's other inputs with a batch axis (a text model's token ids,
    attention mask and segments, whose explained input is the word embeddings) are repeated m times along
    it and the nodes that read them cloned too, the embeddings' own Gather excepted (nodes added to b)."""
    graph = model.graph
    repeated = _repeated_inputs(b, graph, canon, m) if b is not None else {}
    dependent = {canon.input} | set(repeated)

    def folded(node):  # a shape computation known at the image size (shapes.py): a constant of the clone too
        return all(t in canon.inits for t in node.output if t)

    for node in graph.node:  # graph order is topological (checked on load)
        if canon.input not in node.output and not folded(node) and any(t in dependent for t in node.input):
            dependent.update(t for t in node.output if t)
    keep = needed_nodes(graph.node, [canon.logits], keep=lambda node: canon.input not in node.output
                        and not folded(node) and any(t in dependent for t in node.input))
    _check_batch_free(keep, dependent, canon)
    rename = {t: f"{prefix}:{t}" for t in dependent}  # ":" keeps clones apart from the builder's own names
    rename[canon.input] = new_input
    rename.update(repeated)
    nodes = []
    for node in keep:
        clone = copy.deepcopy(node)
        clone.name = f"{prefix}/{node.name or node.output[0]}"
        clone.input[:] = [rename.get(t, t) for t in node.input]
        clone.output[:] = [rename.get(t, t) for t in node.output]
        nodes.append(clone)
    return nodes, renamed(canon, rename, prefix)


def _check_batch_free(nodes, dependent, canon):
    """Refuse a Reshape of an image-dependent tensor to a constant shape with a fixed batch (a static-batch
    export, e.g. ultralytics' [1, 144, -1]): the clone runs m points along the batch, which it would mix up."""
    batch = canon.input_shape[0] if canon.input_shape else None
    if not isinstance(batch, int) or batch < 1:  # a symbolic batch: the Reshapes follow it (0 or -1, or computed)
        return
    for node in fixed_batch_reshapes(nodes, dependent, canon.inits, canon.shapes, batch)[:1]:
        raise LrpgraphError(f"node '{node.name}' (Reshape) fixes the batch at {batch}; integrated gradients and "
                            "SmoothGrad run the model at several points along the batch: export it with a dynamic "
                            "batch (ultralytics: dynamic=True; convert with --image-size H,W)")


def _repeated_inputs(b, graph, canon, m):
    """{graph input: its copy repeated m times along the batch, [m * N, ...] point-major} for the inputs other
    than the explained one whose first axis is dynamic (the batch)."""
    weights = {i.name for i in graph.initializer}
    out = {}
    for info in graph.input:
        dims = info.type.tensor_type.shape.dim
        if info.name in weights or info.name == canon.input or not dims or dims[0].dim_value:
            continue
        points = b.op("Expand", [b.op("Unsqueeze", [info.name, b.ints([0])], "unsqueeze"),
                                 b.ints([m] + [1] * len(dims))], "repeat")
        out[info.name] = expand(b, points, info.name)
    return out


def renamed(canon: Canonical, rename: dict, prefix: str) -> Canonical:
    """canon with its tensors renamed ({old: new}) and its units named PREFIX_LAST/unit."""
    def r(t):
        return rename.get(t, t)

    units = []
    for unit in canon.units:
        u = copy.copy(unit)
        u.inputs, u.outputs = [r(t) for t in unit.inputs], [r(t) for t in unit.outputs]
        u.name = f"{prefix.rsplit('/', 1)[-1]}/{unit.name}"
        if unit.layer is not None:
            u.layer = copy.copy(unit.layer)
            u.layer._cache = {}
            u.layer.x, u.layer.out = r(unit.layer.x), r(unit.layer.out)
        units.append(u)
    shapes = dict(canon.shapes)
    shapes.update({r(t): s for t, s in canon.shapes.items() if t in rename})
    return Canonical(canon.model, units, r(canon.input), canon.input_shape, r(canon.logits),
                     canon.outputs_probabilities, shapes, canon.inits, {r(t) for t in canon.signal},
                     {r(t) for t in canon.nonneg})


def expand(b: "Builder", points: str, x: str) -> str:
    """[m, N, ...] -> [m * N, ...]."""
    rest = b.op("Slice", [b.op("Shape", [x], "shape"), b.ints([1]), b.ints([2**62])], "rest_shape")
    return b.op("Reshape", [points, b.op("Concat", [b.ints([-1]), rest], "shape", axis=0)], "expand_batch")


def fold(b: "Builder", t: str, x: str, m: int) -> str:
    """[m * N, ...] -> [m, N, ...]."""
    return b.op("Reshape", [t, b.op("Concat", [b.ints([m]), b.op("Shape", [x], "shape")], "shape", axis=0)],
                "fold_batch")


def tile(b: "Builder", seed: str, m: int, rank: int = 2) -> str:
    """A seed [N, C] (of any rank: [K * N, *S] with K targets) repeated for each of m points: [m * N, C],
    point-major."""
    return b.op("Tile", [seed, b.ints([m] + [1] * (rank - 1))], "tile_seed")


def per_target(b: "Builder", t: str, canon: Canonical, axis: int, rank: int) -> str:
    """t unchanged, or with K targets per sample (canon.k_targets) t repeated K times along axis: the image or
    a difference [N, ...] -> [K * N, ...] (axis 0), the points [m, N, ...] -> [m, K * N, ...] (axis 1), target
    major as the seeds are ([K * N, *S])."""
    if canon.k_targets is None:
        return t
    repeats = b.op("Concat", [b.ints([1] * axis), canon.k_targets, b.ints([1] * (rank - axis - 1))], "repeats",
                   axis=0)
    return b.op("Tile", [t, repeats], "per_target")


def add_nodes(b: "Builder", nodes: list) -> None:
    b.nodes.extend(nodes)
