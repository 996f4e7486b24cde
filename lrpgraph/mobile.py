"""ORT format (`lrpgraph convert --format ort`): a converted model for onnxruntime's mobile and reduced builds.

onnxruntime's own converter (onnxruntime.tools.convert_onnx_models_to_ort, fixed optimizations at level
'all', no hardware-specific layout) writes MODEL.ort and MODEL.required_operators.config, the op list that
a reduced onnxruntime build (build.py --include_ops_by_config) needs. The lrpgraph metadata travels with
the model: ExplainSession opens the .ort file as it opens the .onnx one.
"""

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

from lrpgraph.errors import LrpgraphError


def ort_paths(onnx_path: str | os.PathLike) -> tuple[Path, Path]:
    """(MODEL.ort, MODEL.required_operators.config) beside MODEL.onnx, as onnxruntime's converter names them."""
    path = Path(onnx_path)
    return path.with_suffix(".ort"), path.with_suffix(".required_operators.config")


def save_ort(onnx_path: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """Write the ORT-format model and its required-operators config beside onnx_path (built in a temporary
    folder, then renamed into place); refuse to overwrite either without force."""
    targets = ort_paths(onnx_path)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise LrpgraphError(f"{existing[0]} exists; pass --force to overwrite it or -o to write elsewhere")
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    source = Path(onnx_path).resolve()
    work = Path(tempfile.mkdtemp(prefix=".ort.", dir=source.parent))
    try:
        log = io.StringIO()
        logging.disable(logging.INFO)  # the converter logs and prints each step
        try:
            with contextlib.redirect_stdout(log):
                convert_onnx_models_to_ort(source, output_dir=work, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as error:  # onnxruntime raises its own types
            last = (str(error) or log.getvalue() or type(error).__name__).strip().splitlines()[-1]
            raise LrpgraphError(f"onnxruntime could not write the ORT format of {onnx_path}: {last}") from None
        finally:
            logging.disable(logging.NOTSET)
        built = ort_paths(work / source.name)
        config = built[1].read_text(encoding="utf-8").replace(str(built[0]), targets[0].name)
        built[1].write_text(config, encoding="utf-8")
        for made, target in zip(built, targets):
            os.replace(made, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return targets
