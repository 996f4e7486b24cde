"""The ends of the explained path: the logits before an output head (Softmax, LogSoftmax), and the integer
inputs that index a constant embedding table (token ids)."""

from collections.abc import Mapping

import onnx

from lrpgraph.catalog import is_kind


def logits_of(graph: onnx.GraphProto) -> tuple:
    """(the tensor to explain, whether the first output is probabilities): the first output, or the input of
    a head that produces it (through Identity nodes; also as opset < 13 writes it once upgraded:
    Reshape(Softmax(Flatten(x)), Shape(x)), explained as Flatten(x))."""
    producer = {o: n for n in graph.node for o in n.output}
    name = graph.output[0].name
    node = producer.get(name)
    while node is not None and node.op_type == "Identity":
        node = producer.get(node.input[0])
    if node is not None and node.op_type == "Reshape":
        inner = producer.get(node.input[0])
        if inner is not None and is_kind(inner, "head") and getattr(producer.get(inner.input[0]), "op_type", "") \
                == "Flatten":
            node = inner
    if node is not None and is_kind(node, "head"):
        return node.input[0], True
    return name, False


def embedding_indices(graph: onnx.GraphProto, inits: Mapping) -> set:
    """The tensors that index a constant table with Gather (an embedding's token ids), and those they were
    moved from (structure ops: GPT-2's input_ids.view(-1, L))."""
    producer = {o: n for n in graph.node for o in n.output}
    found = set()
    for n in graph.node:
        if n.op_type != "Gather" or n.input[0] not in inits:
            continue
        tensor, steps = n.input[1], 0
        while tensor not in found and steps < 8:
            found.add(tensor)
            source = producer.get(tensor)
            if source is None or not is_kind(source, "structure"):
                break
            tensor, steps = source.input[0], steps + 1
    return found
