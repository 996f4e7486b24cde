"""What is explained: the seed put at the logits y [N, C] (docs/rules.md, Targets).

Each mode gives a relevance seed (LRP rule sets) and a gradient seed (gradient-family rule sets and
LRP-Flex, whose relevance is input x modified gradient): top and index give y_c at the class and the
one-hot vector; all gives y and ones; seed takes a tensor from a new input and uses it as either."""

from typing import TYPE_CHECKING

from onnx import TensorProto, helper

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    from lrpgraph.graph import Builder

TARGETS = ("top", "index", "seed", "all")
TARGET_INPUT = "target"
SEED_INPUT = "relevance_seed"


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
