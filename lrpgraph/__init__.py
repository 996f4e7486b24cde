"""lrpgraph: Layer-wise Relevance Propagation compiled into ONNX graphs."""

__version__ = "0.1.0"

from lrpgraph.errors import LrpgraphError  # noqa: E402
from lrpgraph.convert import convert  # noqa: E402  (the function shadows the submodule name on purpose)

__all__ = ["LrpgraphError", "__version__", "convert"]
