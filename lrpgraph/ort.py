"""onnxruntime, imported in one place: lrpgraph depends on neither onnxruntime build itself (the extras
`cpu` and `gpu` choose one), so a missing runtime is one clear error at first use, not a traceback."""

from lrpgraph.errors import MissingDependencyError

try:
    import onnxruntime
except ModuleNotFoundError as error:
    if error.name != "onnxruntime":
        raise
    raise MissingDependencyError(
        "onnxruntime is not installed; install lrpgraph with one build of it: "
        "pip install 'lrpgraph[cpu]' (or 'lrpgraph[gpu]' for CUDA)"
    ) from None

__all__ = ["onnxruntime"]
