"""Writing files so that a reader never sees half of one (a temporary file next to the target, then a rename):
atomic_write, and the converted model's files: save (with external data for large weights) and
write_optimized (onnxruntime's optimised copy)."""

import os
import secrets
from collections.abc import Callable

import onnx
from onnx import external_data_helper

from lrpgraph.errors import LrpgraphError

EXTERNAL_BYTES = 1 << 30  # weights above 1 GiB are saved as external data (protobuf's limit is 2 GiB)


def atomic_write(path: str | os.PathLike, write: Callable, binary: bool = True, durable: bool = False) -> None:
    """Call write(file) on a temporary file next to path, then rename it to path (creating the folder).

    The file gets the usual umask permissions (os.open with 0o666, not mkstemp's 0o600). durable: fsync
    before the rename (checkpoints), at the cost of a disk flush per file. Nothing is left behind on error."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def inside(root: str | os.PathLike, relative: str | os.PathLike) -> str:
    """root/relative for an output name derived from an input's name; LrpgraphError (one line) when it would
    leave root: an absolute name, a '..' part, or a folder under root that is a symlink to elsewhere."""
    parts = os.fspath(relative).replace("\\", "/").split("/")
    if os.path.isabs(relative) or ".." in parts or (parts and len(parts[0]) > 1 and parts[0][1] == ":"):
        raise LrpgraphError(f"output name {os.fspath(relative)!r} would leave {os.fspath(root)}; rename the input")
    target = os.path.join(root, relative)
    real_root, real_parent = os.path.realpath(root), os.path.realpath(os.path.dirname(target) or ".")
    if os.path.commonpath([real_root, real_parent]) != real_root:
        raise LrpgraphError(f"{os.path.dirname(target)} leads to {real_parent}, outside {os.fspath(root)} (a symlink); "
                            "remove the link or choose another --out")
    return target


def save(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False, external: bool | None = None) -> None:
    """Write atomically (temporary file, then rename); refuse to overwrite without force.

    external: weights in PATH.data next to the model (ONNX external data), as models over protobuf's 2 GB
    limit need; None: when the weights exceed EXTERNAL_BYTES. The relevance path reads the same
    initializers, so the data file is about the source model's. Converts `model` in place in that case."""
    path = os.fspath(path)
    location = os.path.basename(path) + ".data"
    data = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    if external is None:
        external = sum(len(i.raw_data) for i in model.graph.initializer) > EXTERNAL_BYTES
    for target in [path] + ([data] if external else []):
        if os.path.exists(target) and not force:
            raise LrpgraphError(f"{target} exists; pass force=True to overwrite it, or save to another path")
    if external:
        external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location,
                                                            size_threshold=1024)
        # a fresh name, created here (O_EXCL: never a file or symlink planted there), then appended to by onnx
        partial = os.path.join(os.path.dirname(data), f".{location}.{os.getpid()}.{secrets.token_hex(4)}.partial")
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        for tensor in external_data_helper._get_all_tensors(model):  # written under a temporary name first
            if external_data_helper.uses_external_data(tensor):
                external_data_helper.set_external_data(tensor, location=os.path.basename(partial))
        external_data_helper.write_external_data_tensors(model, os.path.dirname(data))
        for tensor in external_data_helper._get_all_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        if os.path.exists(partial):  # (no tensor over the threshold: no data file)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(partial, 0o666 & ~mask)  # the usual permissions, as the .onnx file gets (onnx writes 0600)
            os.replace(partial, data)
    atomic_write(path, lambda file: file.write(model.SerializeToString()))


def uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at path keeps its weights in external data files."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return False
    light = onnx.load(os.fspath(path), load_external_data=False)
    return any(external_data_helper.uses_external_data(t) for t in light.graph.initializer)


def optimized_path(path: str | os.PathLike) -> str:
    """Where write_optimized puts onnxruntime's optimised copy of a converted model: NAME.ort.onnx."""
    root, ext = os.path.splitext(os.fspath(path))
    return (root if ext == ".onnx" else os.fspath(path)) + ".ort.onnx"


def write_optimized(path: str | os.PathLike, force: bool = False, repeats: int = 3) -> tuple:
    """Also write onnxruntime's offline-optimised model (level 'extended': constant folding, e.g. w+ and the
    flipped kernels, and the CPU provider's fusions; no hardware-specific layouts) next to path, and keep
    it only when it loads faster. The graph's arithmetic is unchanged: the session would apply the same
    optimisations when loading. Returns (seconds to load path, seconds to load the copy, kept)."""
    import time

    from lrpgraph.ort import onnxruntime as ort

    out = optimized_path(path)
    if os.path.exists(out) and not force:
        raise LrpgraphError(f"{out} exists; pass --force to overwrite it")
    temporary = os.path.join(os.path.dirname(os.path.abspath(out)),
                             f".{os.path.basename(out)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # nothing planted
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = temporary
    try:
        ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])

        def load_s(model, level):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = level
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
                times.append(time.perf_counter() - start)
            return min(times)

        plain = load_s(os.fspath(path), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        # the optimised file needs no 'basic'/'extended' pass again; the layout pass ('all') still runs
        optimized = load_s(temporary, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if optimized < plain:
            os.replace(temporary, out)
            return plain, optimized, True
        return plain, optimized, False
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
