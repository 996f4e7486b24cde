"""Training with the heatmap in the loss (Faster ISNet), in torch: needs `pip install 'lrpgraph[train]'`.

    from lrpgraph.train import import_onnx, ISNetLoss, train, TrainConfig
    module = import_onnx("model.lrp.onnx")        # an nn.Module: (logits, relevance) = module(x)
    result = train(TrainConfig(model="model.onnx", images=..., masks=..., out="runs/exp1"))

The names are imported on first use, so `import lrpgraph.train` works (and says what to install) without torch.
"""

from typing import NoReturn

from lrpgraph.errors import MissingDependencyError

PUBLIC = {
    "import_onnx": "lrpgraph.train.importer",
    "LrpModule": "lrpgraph.train.importer",
    "ISNetLoss": "lrpgraph.train.loss",
    "heatmap_loss": "lrpgraph.train.loss",
    "train": "lrpgraph.train.loop",
    "TrainConfig": "lrpgraph.train.config",
}
TRAIN_PACKAGES = ("torch", "torchvision", "matplotlib")


def require_torch(error: ModuleNotFoundError) -> NoReturn:
    """Turn a ModuleNotFoundError for torch (or another [train] package) into one clear line; else re-raise."""
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in TRAIN_PACKAGES:
        raise MissingDependencyError(
            f"lrpgraph's training needs {error.name.split('.')[0]}, which is not installed: "
            "pip install 'lrpgraph[train]' (the runtime-only install has convert, explain, evaluate and demo)"
        ) from None
    raise error


def __getattr__(name):
    if name not in PUBLIC:
        raise AttributeError(f"module 'lrpgraph.train' has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(PUBLIC[name])
    except ModuleNotFoundError as error:
        require_torch(error)
    return getattr(module, name)


__all__ = sorted(PUBLIC)
