"""A linear layer as data (LinearLayer: a Conv, ConvTranspose, Gemm or MatMul with its bias Add and
BatchNormalization folded in), and the interface through which the linear rules emit its passes
(LayerEmitters: converters/linear.py binds a layer to its op's emitters)."""

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
