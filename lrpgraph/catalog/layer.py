"""A linear layer as data (LinearLayer: a Conv, ConvTranspose, Gemm or MatMul with its bias Add and
BatchNormalization folded in), how a node of a linear op reads as one (LinearOp, in its op record), and the
interface through which the linear rules emit its passes (LayerEmitters: converters/linear.py binds a layer
to its op's emitters)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lrpgraph.graph import Builder


@dataclass
class LinearLayer:
    """The tensors and attributes of one linear layer, as canonicalize reads them (catalog.linear)."""

    op: str  # its op type: a record of the linear kind (Conv, ConvTranspose, Gemm, MatMul)
    x: str  # input tensor
    out: str  # output of the whole unit (after bias Add / BatchNormalization)
    weight: str
    bias: str = None
    bias_from_add: bool = False  # a bias Add's constant may be shaped [1, M, 1, 1]: flattened to [M]
    x_shape: list = None
    attrs: dict = field(default_factory=dict)  # Conv(Transpose): strides, pads, dilations, group, output_padding
    transpose_weight: bool = False  # Gemm transB = 0 stores W as [K, M]; 1 as [M, K]
    alpha: float = 1.0
    beta: float = 1.0
    bn: dict = None  # {scale, B, mean, var, epsilon} tensor names / value of a folded BatchNormalization
    w_shape: list = None  # the weight's static shape (Conv: [M, C/group, k...]), when known
    _cache: dict = field(default_factory=dict)  # the tensors emitted for it once (its folded weights)


@dataclass(frozen=True)
class LinearOp:
    """How a node of one linear op reads as a LinearLayer (canonicalize asks it; the bias Add and the
    BatchNormalization that may follow are found by canonicalize for every linear op alike).

    read: fn(node, attrs, shapes, name) -> {LinearLayer field: value}, from the node's own attributes; raises
        UnsupportedModelError for forms it does not support.
    out_channels: fn(layer, w_shape) -> the number of output channels (the size of a bias that folds in).
    channel_axis: the output's channel axis, 1 (convolutions) or -1 (dense layers); a bias varies along it only.
    bn_shape: fn(layer) -> the shape that puts a per-channel factor on the weight's output channels, where a
        following BatchNormalization (it normalises axis 1) folds into the weights; None where none does.
    """

    read: Callable
    out_channels: Callable
    channel_axis: int
    bn_shape: Callable


class LayerEmitters(Protocol):
    """A linear layer with its op's emitters, as the linear rules (rules.linear_relevance) use it."""

    x: str

    def weights(self, b: "Builder") -> tuple:
        """(W, bias) of the whole unit, emitted once."""

    def forward(self, b: "Builder", x: str, w: str, bias: "str | None") -> str:
        """The layer's map of x with weights w and bias."""

    def backward(self, b: "Builder", s: str, w: str) -> str:
        """The transposed map: the gradient of sum(s * layer(x, w)) with respect to x."""

    def per_channel(self, b: "Builder", value: "float | tuple") -> str:
        """A constant broadcastable over the input: one value, or one per input channel (axis 1)."""
