"""onnxruntime, imported in one place: lrpgraph depends on neither onnxruntime build itself (the extras
`cpu` and `gpu` choose one), so a missing runtime is one clear error at first use, not a traceback.

Runner is the one wrapper around an onnxruntime session that ExplainSession, evaluate's HeatmapModel and
metrics' Classifier share: it opens the session (options, providers, a one-line error when it cannot load),
feeds the inputs a converted model may take besides its image (`target` class indices, a `relevance_seed`
one-hot or logit x one-hot seed, SmoothGrad's `noise_seed`), and runs it (a one-line error when that fails).
"""

import os

import numpy as np

from lrpgraph import untrusted
from lrpgraph.errors import LrpgraphError, MissingDependencyError

try:
    import onnxruntime
except ModuleNotFoundError as error:
    if error.name != "onnxruntime":
        raise
    raise MissingDependencyError(
        "onnxruntime is not installed; install lrpgraph with one build of it: "
        "pip install 'lrpgraph[cpu]' (or 'lrpgraph[gpu]' for CUDA)"
    ) from None

OPTIMIZATION = {
    "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
TARGET_INPUT = "target"  # as targets.TARGET_INPUT, SEED_INPUT and methods/smooth.py's SEED_INPUT name them
SEED_INPUT = "relevance_seed"
NOISE_SEED_INPUT = "noise_seed"


def session_options(threads: int | None = None, optimization: str = "all") -> "onnxruntime.SessionOptions":
    """Session options: the graph optimisation level, intra-op threads, memory pattern off."""
    options = onnxruntime.SessionOptions()
    if optimization not in OPTIMIZATION:
        raise LrpgraphError(f"unknown optimization {optimization!r}; use one of {', '.join(OPTIMIZATION)}")
    options.graph_optimization_level = OPTIMIZATION[optimization]
    # memory pattern off: resnet18 epsilon-plus at batch 32 peaks at 1421 instead of 2197 MiB, same CPU time
    # (benchmarks/speed.py --memory-settings, docs/speed.md)
    options.enable_mem_pattern = False
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise LrpgraphError(f"threads must be a positive integer, got {threads!r}")
        options.intra_op_num_threads = threads
    return options


def one_copy_of_weights(source: object, options: "onnxruntime.SessionOptions") -> list | None:
    """For a model whose weights are external data (over 1 GiB: an LLM), keep one copy of each weight: a converted
    graph reads W in the forward pass and Transpose(W) in the relevance pass, and onnxruntime would fold every
    Transpose into a second copy and prepack both (measured on Qwen2-0.5B: `benchmarks/llm_memory.py --extra`,
    docs/llm.md). With constant folding off, MatMul(s, Transpose(W)) becomes one
    FusedMatMul reading W transposed; with prepacking off, the weights stay in the memory-mapped file, which is
    read through once here (_read_through). Returns the optimizers to disable (None for other models)."""
    import onnx
    from onnx import external_data_helper

    if not isinstance(source, str):
        return None
    try:
        light = onnx.load(source, load_external_data=False)
    except Exception:  # an unreadable file: onnxruntime says why when it opens it
        return None
    external = [t for t in light.graph.initializer if external_data_helper.uses_external_data(t)]
    if not external:
        return None
    options.add_session_config_entry("session.disable_prepacking", "1")
    _read_through(os.path.dirname(os.path.abspath(source)), external)
    return ["ConstantFolding"]


def _read_through(folder: str, tensors: list) -> None:
    """Read the weight files once, as a session that copies its weights does while loading: the mapped weights
    are then in the page cache, and the first call does not wait on the disk for them. (untrusted.check_model
    has kept every location inside the model's folder.)"""
    from onnx import external_data_helper

    block = bytearray(64 * 2 ** 20)
    for location in sorted({external_data_helper.ExternalDataInfo(t).location for t in tensors}):
        try:
            with open(os.path.join(folder, location), "rb", buffering=0) as f:
                while f.readinto(block):
                    pass
        except OSError:  # a missing file: onnxruntime says which when it opens the model
            return


def source_of(path_or_model: object) -> tuple:
    """(what onnxruntime takes, a name for messages) for a path, an onnx.ModelProto or serialised bytes, each
    checked first (untrusted.check_model: external data inside the model's folder, sane sizes, a sound graph)."""
    if isinstance(path_or_model, (bytes, bytearray)):
        untrusted.check_source(bytes(path_or_model))  # before onnxruntime parses it
        return bytes(path_or_model), "the given model bytes"
    if hasattr(path_or_model, "SerializeToString"):
        untrusted.check_model(path_or_model, "the given model")
        return path_or_model.SerializeToString(), "the given model"
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        raise LrpgraphError(f"model file {path} does not exist; give the path of a converted .onnx file")
    untrusted.check_source(path)
    return path, path


class Runner:
    """One onnxruntime session of a model (path, ModelProto or bytes) with lrpgraph's way of feeding it.

    providers: the list onnxruntime takes (runtime.providers.choose_providers); noise_seed: what is fed to a
    `noise_seed` input (SmoothGrad/SmoothTaylor draw their noise from it: fixed, so runs are reproducible)."""

    def __init__(self, model: object, providers: list, threads: int | None = None, optimization: str = "all",
                 noise_seed: int = 0, name: str | None = None):
        source, self.name = source_of(model)
        self.name = name or self.name
        options = session_options(threads, optimization)
        disabled = one_copy_of_weights(source, options)
        try:
            self.session = onnxruntime.InferenceSession(source, sess_options=options, providers=providers,
                                                        disabled_optimizers=disabled)
        except Exception as error:  # ORT raises its own exception types
            raise LrpgraphError(f"onnxruntime cannot load {self.name}: {_first_line(error)}") from None
        self.providers = list(self.session.get_providers())
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.target_input = next((n for n in (TARGET_INPUT, SEED_INPUT) if n in self.inputs), None)
        self.noise_seed = np.array([int(noise_seed)], np.int64) if NOISE_SEED_INPUT in self.inputs else None

    def constant_feeds(self) -> dict:
        """Inputs fed the same value on every run: {noise_seed: [k]} on SmoothGrad/SmoothTaylor models."""
        return {} if self.noise_seed is None else {NOISE_SEED_INPUT: self.noise_seed}

    def target_feed(self, classes: np.ndarray, num_classes: int | None,
                    logits: np.ndarray | None = None) -> np.ndarray | None:
        """What the model's target input takes for the explained classes [N]: the indices for `target`; for
        `relevance_seed` the one-hot rows (a gradient seed), times each row's logits when logits [N, K] are
        given (a relevance seed, logit x one-hot). None for a model without a target input."""
        if self.target_input is None:
            return None
        classes = np.asarray(classes).astype(np.int64)
        if self.target_input == TARGET_INPUT:
            return classes
        if num_classes is None:
            raise LrpgraphError(
                f"{self.name}: the number of classes is not static; give a float seed array instead of class indices"
            )
        onehot = np.eye(num_classes, dtype=np.float32)[classes]
        return onehot if logits is None else onehot * np.asarray(logits, np.float32)

    def feeds(self, image_input: str, images: np.ndarray, target: np.ndarray | None = None, **more) -> dict:
        """The feed dict: the images (float32, contiguous), the target feed when there is one, the constant
        feeds, and any further inputs by name."""
        feeds = {image_input: np.ascontiguousarray(images, dtype=np.float32)}
        if target is not None:
            feeds[self.target_input] = target
        return {**feeds, **self.constant_feeds(), **more}

    def run(self, outputs: list | None, feeds: dict) -> list:
        """onnxruntime's run, its errors as one LrpgraphError line."""
        try:
            return self.session.run(outputs, feeds)
        except Exception as error:  # ORT raises its own exception types
            raise run_error(self.name, error) from None


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_error(name: str, error: Exception) -> LrpgraphError:
    """The one-line error for a failed onnxruntime run of the model `name`."""
    return LrpgraphError(f"onnxruntime failed running {name}: {_first_line(error)}")


__all__ = ["onnxruntime", "Runner", "session_options", "OPTIMIZATION"]
