"""lrpgraph: Layer-wise Relevance Propagation compiled into ONNX graphs.

    import lrpgraph
    model = lrpgraph.convert("model.onnx", composite="epsilon-plus")   # an onnx.ModelProto
    lrpgraph.save(model, "model.lrp.onnx")
    session = lrpgraph.ExplainSession("model.lrp.onnx")                # needs an onnxruntime build
    logits, relevance = session.explain(batch)

`lrpgraph.convert` is the pipeline module made callable: lrpgraph.convert(...) runs lrpgraph.convert.convert,
and the module's other names (lrpgraph.convert.check, .fix_image_size, ...) stay reachable; lrpgraph.save is
lrpgraph.files.save.
"""

import types

from lrpgraph import convert as _pipeline, files
from lrpgraph.errors import LrpgraphError
from lrpgraph.version import __version__


class _CallableModule(types.ModuleType):
    """The module lrpgraph.convert, callable as its function convert (so neither hides the other)."""

    def __call__(self, model_or_path, *args, **kwargs):
        return self.convert(model_or_path, *args, **kwargs)

    __call__.__doc__ = _pipeline.convert.__doc__


_pipeline.__class__ = _CallableModule
convert = _pipeline
save = files.save


def __getattr__(name):
    if name == "ExplainSession":  # imported on first use: it needs onnxruntime, the converter does not
        from lrpgraph.runtime.session import ExplainSession

        return ExplainSession
    raise AttributeError(f"module 'lrpgraph' has no attribute {name!r}")


__all__ = ["ExplainSession", "LrpgraphError", "__version__", "convert", "save"]
