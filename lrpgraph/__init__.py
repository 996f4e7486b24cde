"""lrpgraph: Layer-wise Relevance Propagation compiled into ONNX graphs."""

from lrpgraph.convert import convert  # the function shadows the submodule name on purpose
from lrpgraph.errors import LrpgraphError
from lrpgraph.version import __version__

__all__ = ["LrpgraphError", "__version__", "convert"]
