"""The records of the built-in ops other than the linear layers (catalog/linear.py), one table per op family,
with the hooks that read a node of them (which kind it is, when its output stays non-negative, the affine map
of a constant). Each table's comment names the converters/ module that emits its ops' relevance."""

from onnx import NodeProto

from lrpgraph.catalog.records import OpRecord, node_name, record
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.graph import attrs_of


def _clip_min_nonneg(unit, inits):
    if len(unit.inputs) > 1 and unit.inputs[1]:
        value = inits.get(unit.inputs[1])
        return value is not None and float(value) >= 0
    return "min" in unit.attrs and float(unit.attrs["min"]) >= 0


# element-wise activations (converters/activations.py: each one's derivative)
ACTIVATIONS: list[OpRecord] = [
    record("Relu", "activation", rules={"pass", "gradient", "flex-relu", "guided", "identity"}, keys=("relu", "activation"),
           guided=True, nonneg_output=True),
    record("LeakyRelu", "activation", guided=True),
    record("PRelu", "activation", guided=True),
    record("Clip", "activation", guided=True, gate_source=True, nonneg_output=_clip_min_nonneg),
    record("Sigmoid", "activation", gate_source=True, nonneg_output=True),
    record("Tanh", "activation"),
    record("HardSigmoid", "activation", gate_source=True, nonneg_output=True),
    record("HardSwish", "activation"),
    record("Elu", "activation"),
    record("Selu", "activation"),
    record("Softplus", "activation"),
    record("Mish", "activation"),
    record("Gelu", "activation"),
]

# normalisations (converters/norm.py, converters/lrn.py)
NORMS: list[OpRecord] = [
    record("BatchNormalization", "bn"),
    record("LayerNormalization", "normaliser", keys=("layernorm",), rules={"identity", "gradient", "pass"}),
    record("RMSNormalization", "normaliser", keys=("layernorm",), rules={"identity", "gradient", "pass"}),
    record("LRN", "normaliser", rules={"pass", "gradient"}, keys=("lrn",), keeps_nonneg=True),
]


def _sum_or_affine(node, dynamic):
    """A sum of two signals (a residual), or a signal plus a constant."""
    return "sum" if all(dynamic[:2]) else "affine"


def _sum_of_signals(node, dynamic):
    """Sum (opset <= 7 residuals): of two or more signals, or one signal plus constants."""
    return "sum" if sum(dynamic) >= 2 else "affine"


def _gate_or_affine(node, dynamic):
    """A signal times a gate (both depend on the image), or a signal times a constant."""
    return "gate" if all(dynamic[:2]) else "affine"


def _divide_by_constant(node, dynamic):
    if dynamic[1]:
        raise UnsupportedModelError(f"node '{node_name(node)}' (Div): division by a tensor that depends on the image "
                                    "is not supported; only division by constants")
    return "affine"


def _not_affine(unit, inits):
    return unit.kind != "affine"


def _no_negative_constant(unit, inits):
    return not any(t in inits and (inits[t] < 0).any() for t in unit.inputs)


def _pads_with_zero(unit, inits):
    if len(unit.inputs) > 2 and unit.inputs[2]:
        value = inits.get(unit.inputs[2])
        return value is not None and float(value) == 0.0
    return True


PRODUCT_RULES = {"uniform", "cp", "gradient"}  # a product of two signals (converters/attention.py)

# sums, gates, maps by a constant, and ops that move values (converters/structure.py); ops never explained
STRUCTURE: list[OpRecord] = [
    record("Add", "sum", kinds=("affine",), classify=_sum_or_affine, keeps_nonneg=_not_affine,
           affine=lambda value, signal_first: (1.0, value), recompute=True),
    record("Sub", "sum", kinds=("affine",), classify=_sum_or_affine, keeps_nonneg=False,
           affine=lambda value, signal_first: (1.0, -value) if signal_first else (-1.0, value), recompute=True),
    record("Sum", "sum", kinds=("affine",), classify=_sum_of_signals, keeps_nonneg=_not_affine),
    # a Mul of two signals: a gate (unit.gate, canonicalize), or a product when neither operand is one
    record("Mul", "affine", kinds=("gate", "product"), classify=_gate_or_affine, keeps_nonneg=_not_affine,
           affine=lambda value, signal_first: (value, 0.0),
           rules={"product": PRODUCT_RULES, "gate": {"pass", "gradient", "cp"}}, recompute=True),
    record("Div", "affine", classify=_divide_by_constant, affine=lambda value, signal_first: (1.0 / value, 0.0),
           recompute=True),
    record("Neg", "affine"),  # x -> -x (a rotary embedding's rotate_half)
    *(record(op, "structure") for op in ("Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze")),
    record("Transpose", "structure"),
    record("Concat", "structure", keeps_nonneg=_no_negative_constant),
    record("Split", "structure"),
    record("Slice", "structure"),
    record("Pad", "structure", keeps_nonneg=_pads_with_zero),
    # known so that canonicalize can step over them
    record("Shape", "shape"),
    record("Size", "shape"),
    # indices computed from values (a decoder classifier's pooling: the last token that is not padding)
    *(record(op, "index") for op in ("Equal", "Not", "And", "Or", "Greater", "Less", "GreaterOrEqual",
                                     "LessOrEqual", "ArgMax", "ArgMin", "IsNaN", "IsInf")),
    # the head at the output; a Softmax inside the graph is a normaliser (converters/attention.py): its gradient
    # (transformers), relevance passed unchanged (the LRP composites' default; a detector's DFL Softmax), or
    # AttnLRP's softmax rule (the LRP composites' choice for attention probabilities: composite key 'attention')
    record("Softmax", "head", kinds=("normaliser",), rules={"normaliser": {"gradient", "pass", "softmax"}},
           nonneg_output=True, recompute=True,
           classify=lambda node, dynamic: "normaliser"),
    record("LogSoftmax", "head"),
]

# pooling (converters/pooling.py)
POOLING: list[OpRecord] = [
    record("MaxPool", "maxpool", guided=True, gradient_rule="wta"),
    *(record(op, "avgpool") for op in ("AveragePool", "GlobalAveragePool", "ReduceMean")),
    record("GatherND", "structure"),
]

# Resize in nearest mode (converters/resize.py); QuantizeLinear and DequantizeLinear (converters/quantized.py:
# a Q -> DQ pair keeps a non-negative activation non-negative, its clipping may only remove negatives)
QDQ = ("QuantizeLinear", "DequantizeLinear")
RESAMPLING: list[OpRecord] = [record("Resize", "structure", rules={"pass", "gradient", "epsilon"}), *(record(op, "structure") for op in QDQ)]


def _einsum_kind(node, dynamic):
    if all(dynamic[:2]):
        return "product"
    equation = attrs_of(node, decoded=True).get("equation", "")
    raise UnsupportedModelError(f"node '{node.name or node.output[0]}' (Einsum '{equation}'): an Einsum of the input "
                                "with a constant matrix is supported as x @ W or x @ W^T only, the constant on either "
                                "side ('...k,kc->...c', '...k,ck->...c', 'ck,...k->...c'); export it as MatMul")


def product_or_linear(node: NodeProto, dynamic: list) -> str:
    """A MatMul of two signals is a product (attention's Q K^T and A V), one with a constant a linear layer."""
    return "product" if all(dynamic[:2]) else "linear"


# transformer ops (converters/attention.py): products of two signals, selections, GELU
TRANSFORMER: list[OpRecord] = [
    record("Einsum", "product", rules=PRODUCT_RULES, classify=_einsum_kind),
    *(record(op, "structure") for op in ("Gather", "Expand", "Tile")),
    *(record(op, "structure", recompute=True) for op in ("Where", "Cast")),
]

# ops a Softmax output may pass on its way to the product that uses it as attention probabilities
_MOVES = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Dropout", "Identity", "Cast", "Expand", "Slice", "Gather",
          "Where"}  # Where: torch's exported SDPA zeroes NaN rows of the probabilities


def attention_softmax(tensor: str, producer: dict, depth: int = 0) -> "NodeProto | None":
    """The Softmax node that computes tensor (through shape ops: attention probabilities), or None."""
    n = producer.get(tensor)
    if n is None or depth > 8:
        return None
    if n.op_type == "Softmax":
        return n
    if n.op_type not in _MOVES:
        return None
    values = n.input[1:3] if n.op_type == "Where" else n.input[:1]  # Where(condition, a, b)
    return next((s for s in (attention_softmax(t, producer, depth + 1) for t in values) if s is not None), None)


def attention_operand(node: NodeProto, producer: dict) -> "int | None":
    """The index (0 or 1) of the operand of a product computed by a Softmax (through shape ops), or None."""
    found = [i for i in (0, 1) if attention_softmax(node.input[i], producer) is not None]
    return found[0] if len(found) == 1 else None
