"""Single-node patterns read by canonicalize and the QDQ view: what follows a linear layer and folds into it
(a bias Add, a BatchNormalization), and a DequantizeLinear node."""

from onnx import NodeProto


def is_bias_add(node: NodeProto | None) -> bool:
    """An Add that may hold a linear layer's bias (canonicalize checks its constant's shape)."""
    return node is not None and node.op_type == "Add"


def is_batch_norm(node: NodeProto | None) -> bool:
    """A BatchNormalization that may fold into the linear layer before it."""
    return node is not None and node.op_type == "BatchNormalization"


def is_dequantize(node: NodeProto) -> bool:
    """A DequantizeLinear node (QDQ models)."""
    return node.op_type == "DequantizeLinear"
