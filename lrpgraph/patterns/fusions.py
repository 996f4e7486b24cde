"""FUSIONS, the rule set `fuse` runs in order: transformer blocks written out in elementary ops (LayerNorm and
RMSNorm, patterns/norms.py; GELU in its erf and tanh forms, patterns/gelu.py) and an Einsum of a signal and a
constant matrix (patterns/einsum.py). The forward graph is not changed: the matched nodes are replaced, in
the list the walker explains, by one LayerNormalization, RMSNormalization, Gelu, MatMul or Gemm node reading
the pattern's input and writing its output (the rules apply to the whole unit). A pattern whose check fails
after its anchor matched is a near-miss: `fuse` returns it with its reason, and `lrpgraph inspect` prints
it (why a written-out norm did not fuse)."""

from collections.abc import Mapping

from lrpgraph.patterns.einsum import EINSUM_LAYER
from lrpgraph.patterns.gelu import GELU, GELU_TANH
from lrpgraph.patterns.match import Graph, NearMiss, described, leak, name_of
from lrpgraph.patterns.norms import LAYER_NORM, RMS_NORM, RMS_NORM_BY_PRODUCT

# tried in this order at each node; the first that matches wins (a LayerNorm's division also reads as an
# RMSNorm of the deviation, so LayerNorm comes first)
FUSIONS = (LAYER_NORM, RMS_NORM, RMS_NORM_BY_PRODUCT, GELU, GELU_TANH, EINSUM_LAYER)


def fuse(nodes: list, inits: Mapping, patterns: tuple = FUSIONS) -> tuple:
    """(nodes with every match of patterns replaced by its synthetic node, in the place of its last node;
    [NearMiss] for the patterns that did not fuse, with the reason)."""
    graph = Graph(nodes, inits)
    anchored = {}
    for pattern in patterns:
        anchored.setdefault(pattern.anchor, []).append(pattern)
    replaced, extra, near_misses, fused_by = set(), {}, [], {}
    for node in nodes:
        for pattern in anchored.get(node.op_type, []):
            found = pattern.check(graph, node)
            if found is None:
                continue
            if isinstance(found, str):
                near_misses.append(NearMiss(name_of(node), pattern.name, found))
                continue
            taken = next((n for n in found.members if id(n) in replaced), None)
            reason = f"{described(taken)} is already part of an earlier fusion" if taken is not None \
                else leak(found, graph)
            if reason is not None:
                near_misses.append(NearMiss(name_of(node), pattern.name, reason))
            else:
                replaced.update(map(id, found.members))
                fused_by.update((name_of(n), pattern.name) for n in found.members)
                extra[id(found.members[-1])] = pattern.rewrite(found)
            break
    fused = [extra[id(n)] if id(n) in extra else n for n in nodes if id(n) not in replaced or id(n) in extra]
    # a node that a pattern later fused is no near-miss of that pattern (1 / Sqrt inside an RMSNorm)
    return fused, [miss for miss in near_misses if fused_by.get(miss.node) != miss.pattern]
