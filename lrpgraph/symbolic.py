"""onnxruntime's symbolic shape inference, run so that it leaves nothing behind: where it cannot infer every
shape it saves the model as 'sym_shape_infer_temp.onnx' plus an external-data file into the current directory
before it raises. It runs here in a temporary directory of its own (one call at a time: the working directory
is the process's), so a user's folder never gets those files."""

import os
import tempfile
import threading

import onnx

_LOCK = threading.Lock()


def infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The model with every shape onnxruntime's symbolic inference finds (auto_merge on), or None where it cannot
    run (onnxruntime missing, an op it does not know, shapes left open)."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return None
    with _LOCK, tempfile.TemporaryDirectory(prefix="lrpgraph-shapes-") as scratch:
        here = os.getcwd()
        os.chdir(scratch)
        try:
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
        except Exception:  # noqa: BLE001  it raises plain exceptions (and asserts) on ops it does not know
            return None
        finally:
            os.chdir(here)
