"""lrpgraph: Layer-wise Relevance Propagation compiled into ONNX graphs.

    import lrpgraph
    model = lrpgraph.convert("model.onnx", composite="epsilon-plus")   # an onnx.ModelProto
    lrpgraph.save(model, "model.lrp.onnx")
    session = lrpgraph.ExplainSession("model.lrp.onnx")                # needs an onnxruntime build
    logits, relevance = session.explain(batch)

lrpgraph.convert is lrpgraph.pipeline.convert (the pipeline's other steps, check, fix_image_size, ..., live in
lrpgraph.pipeline); lrpgraph.save is lrpgraph.files.save.
"""

from lrpgraph import files
from lrpgraph.errors import LrpgraphError
from lrpgraph.pipeline import convert
from lrpgraph.version import __version__

save = files.save


def __getattr__(name):
    if name == "ExplainSession":  # imported on first use: it needs onnxruntime, the converter does not
        from lrpgraph.runtime.session import ExplainSession

        return ExplainSession
    raise AttributeError(f"module 'lrpgraph' has no attribute {name!r}")


__all__ = ["ExplainSession", "LrpgraphError", "__version__", "convert", "save"]
