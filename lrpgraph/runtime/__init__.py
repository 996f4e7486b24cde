"""Running converted models without torch: ExplainSession (logits and heatmaps from ONNX Runtime), image
loading (images), explaining files (explain), rendering (render, page) and metrics over files (evaluate)."""


def __getattr__(name):
    if name == "ExplainSession":  # imported on first use, so `import lrpgraph.runtime.images` needs no onnxruntime
        from lrpgraph.runtime.session import ExplainSession

        return ExplainSession
    raise AttributeError(f"module 'lrpgraph.runtime' has no attribute {name!r}")


__all__ = ["ExplainSession"]
