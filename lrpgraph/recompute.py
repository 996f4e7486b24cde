"""A causal LM's attention probabilities computed again in the relevance pass instead of kept from the forward.

The relevance pass reads each layer's attention probabilities s = Softmax(q k^T * scale + mask) (the product
rule of s v, the softmax rule), and so, read from the forward pass, every layer's s [N, H, L, L] stays in memory
until the relevance reaches that layer: 235 MB a layer at 2048 tokens for Qwen2-0.5B, 5.6 GB for its 24 layers
(benchmarks/llm_memory.py). q and k are kept anyway (the product rule of q k^T reads them), so the relevance pass
can compute s again from them when it reaches the layer, and one layer's s is alive at a time.

attention_probabilities, after the walk, for each Softmax whose output the relevance nodes read:

- the forward nodes that compute it are copied (named <prefix>/recompute/...) when they go back, through at most
  MAX_NODES nodes of ops whose record says `recompute` (element-wise arithmetic, MatMul, Softmax, Where, Cast),
  to tensors that are there anyway (initializers, graph inputs, tensors the relevance nodes read, tensors that
  two or more of these chains read: the mask, one for all layers) or smaller than s (q and k under cp-lrp,
  whose relevance pass reads s but not them); otherwise that Softmax is left as it was;
- the copy waits for the relevance arriving at the layer: its first nodes read an input through
  Builder.wait(x, d) (Expand(x, Slice(Shape(d), 0, 0)): an empty shape, so Expand gives x), where d is the last
  tensor computed from the relevance seed that the nodes up to three readers from s take besides what comes from
  s (a forward tensor that a rule transposes would not wait for anything). onnxruntime runs a node once its
  inputs are there, so without this the copy would run during the forward pass and keep every layer's s again.
  (d's shape holds the symbolic length, so onnxruntime's constant folding cannot remove the wait; with a static
  length it may, and the relevance is the same, only the memory is not saved.)

The copy computes the same float32 values as the forward nodes (the same ops on the same inputs), so the
relevance does not change. Used on the explained rows' walk of a causal LM (pipeline.heatmap)."""

import onnx

from lrpgraph.catalog.ops import attention_softmax
from lrpgraph.catalog.records import record_of
from lrpgraph.graph import Builder, size_order, topological

MAX_NODES = 6


def attention_probabilities(b: Builder, forward_nodes: list, available: set, shapes: dict, seed: str) -> int:
    """Rewrite b's nodes so that each Softmax output they read is computed again from kept tensors (see the
    module's text). available: the initializers' and graph inputs' names; shapes: the tensors' shapes (symbolic
    axes not int); seed: the tensor the relevance pass starts from. Returns the number rewritten."""
    producer = {o: n for n in forward_nodes for o in n.output}
    kept = {t for n in b.nodes for t in n.input if t in producer}
    found = {id(n) for n in (attention_softmax(t, producer) for t in kept) if n and n.output[0] in kept}
    softmaxes = [n for n in forward_nodes if id(n) in found]
    reached = {}
    for s in softmaxes:
        for t in _reach(s, producer, kept | available):
            reached[t] = reached.get(t, 0) + 1
    leaves = kept | available | {t for t, count in reached.items() if count > 1}
    rewritten, relevance = 0, _downstream(b, seed)
    for s in softmaxes:
        size = size_order(shapes.get(s.output[0]) or [])
        smaller = {t for t in _reach(s, producer, leaves)
                   if shapes.get(t) is not None and size_order(shapes[t]) < size}
        chain, wait = _chain(s, producer, leaves | smaller), _arrival(b, s.output[0], relevance)
        if chain is not None and wait is not None:
            _copy(b, chain, s.output[0], wait, producer)
            rewritten += 1
    return rewritten


def _cheap(node) -> bool:
    record = record_of(node)
    return record is not None and record.recompute


def _reach(softmax, producer: dict, stop: set) -> set:
    """The tensors that the walk back from softmax through ops whose record says `recompute` (MAX_NODES nodes at
    most) reads, short of stop."""
    seen, todo, nodes = set(), [softmax], 0
    while todo and nodes < MAX_NODES:
        node, nodes = todo.pop(), nodes + 1
        for t in node.input:
            if t and t not in stop and t not in seen:
                seen.add(t)
                if t in producer and _cheap(producer[t]):
                    todo.append(producer[t])
    return seen


def _chain(softmax, producer: dict, leaves: set) -> list | None:
    """The forward nodes from leaves to softmax's output, in the forward order; None past MAX_NODES nodes or
    through an op whose record does not say `recompute`."""
    chain, todo = [], [softmax]
    while todo:
        node = todo.pop()
        if not _cheap(node) or len(chain) >= MAX_NODES:
            return None
        if any(t and t not in leaves and t not in producer for t in node.input):
            return None
        if all(node is not n for n in chain):
            chain.append(node)
        todo += [producer[t] for t in node.input if t and t not in leaves]
    order = {id(n): i for i, n in enumerate(producer.values())}
    return sorted(chain, key=lambda n: order[id(n)])


def _downstream(b: Builder, tensor: str) -> set:
    """The tensors of b's nodes computed from tensor (and tensor itself); b's nodes are in order."""
    found = {tensor}
    for n in b.nodes:
        if any(t in found for t in n.input):
            found.update(n.output)
    return found


def _arrival(b: Builder, s: str, relevance: set, hops: int = 3) -> str | None:
    """The last tensor of the relevance (in b's node order: among `relevance`, what the seed computes) that the
    nodes up to `hops` readers away from s take besides what comes from s: the relevance arriving at s's layer
    (not a forward tensor that a rule transposes, nor the K-target view's repeat count). None when there is none."""
    index = {o: i for i, n in enumerate(b.nodes) for o in n.output}
    from_s, reached, near = _downstream(b, s), {s}, []
    for _ in range(hops):
        step = [n for n in b.nodes if set(n.input) & reached and all(n is not m for m in near)]
        near += step
        reached = {o for n in step for o in n.output}
    arriving = {t for n in near for t in n.input if t in relevance and t in index and t not in from_s}
    return max(arriving, key=index.get) if arriving else None


def _copy(b: Builder, chain: list, s: str, wait: str, producer: dict) -> None:
    """Insert the copy of chain before the first relevance node that reads s (each of its first nodes reading
    one input through the wait on `wait`), point the readers of s at the copy's output, and restore an order
    in which every node comes after its inputs' producers (b's own order wherever it already is one)."""
    scope, b.scope = b.scope, "recompute"
    start = len(b.nodes)
    renamed = {}
    for node in chain:
        inputs = [renamed.get(t, t) for t in node.input]
        if not any(t in renamed for t in node.input):  # a first node: it waits
            i = next((i for i, t in enumerate(inputs) if t in producer), 0)
            inputs[i] = b.wait(inputs[i], wait)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = b.fresh(node.op_type.lower())
        del copy.input[:], copy.output[:]
        copy.input.extend(inputs)
        copy.output.extend(copy.name if i == 0 else f"{copy.name}:{i}" for i in range(len(node.output)))
        renamed.update(zip(node.output, copy.output))
        b.nodes.append(copy)
    b.scope = scope
    added = b.nodes[start:]
    del b.nodes[start:]
    for n in b.nodes:
        n.input[:] = [renamed[s] if t == s else t for t in n.input]
    at = next(i for i, n in enumerate(b.nodes) if renamed[s] in n.input)
    b.nodes[at:at] = added
    b.nodes[:] = topological(b.nodes, set(), keep_order=True)  # (no cycle: the wait never comes from s)

