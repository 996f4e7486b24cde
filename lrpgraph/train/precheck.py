"""What `lrpgraph train` checks before its first step, so that nothing it could only find at the end (after
hours of training) stops it there: the images against the model's input (size and channels), the masks
against the images (data.py), the default validation masks of `make-dataset`'s layout, and the importer
against onnxruntime on the start model (the same comparison export.write_back makes on the trained one).

When the final round trip still fails, failed_write_back says which written files are usable and what to do.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from lrpgraph.errors import LrpgraphError
from lrpgraph.ort import onnxruntime as ort

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import torch

_MODES = {1: ("L", "grayscale"), 3: ("RGB", "RGB")}


def default_val_masks(val: str | Path) -> Path:
    """The masks of validation images VAL: VAL_masks, or VAL/../masks when VAL is an `images` folder
    (`lrpgraph make-dataset`'s layout: ds/val/images and ds/val/masks)."""
    val = Path(str(val).rstrip("/"))
    beside = val.parent / "masks"
    if not Path(f"{val}_masks").is_dir() and val.name == "images" and beside.is_dir():
        return beside
    return Path(f"{val}_masks")


def check_images(samples: list, shape: list, fit: bool, what: str) -> str | None:
    """Compare every image's size and colour channels (file header only) with the model's input [N, C, H, W].

    A mismatch raises LrpgraphError unless fit is true (--fit-images); with fit the line returned says what
    the trainer does to them (None when nothing differs)."""
    from PIL import Image

    channels, size = shape[1], tuple(shape[2:])
    mode, colour = _MODES[channels]
    found = {}
    for image_path, _, _ in samples:
        with Image.open(image_path) as image:
            ours = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            found.setdefault((image.size[1], image.size[0], ours), image_path)
    odd = {k: v for k, v in found.items() if (all(size) and k[:2] != size) or k[2] != mode}
    if not odd:
        return None
    (h, w, their_mode), path = next(iter(odd.items()))
    theirs = f"{h}x{w} {_MODES[1 if their_mode == 'L' else 3][1]}"
    wanted = f"{channels}x{size[0]}x{size[1]} {colour}" if all(size) else f"{channels} channels ({colour})"
    if not fit:
        raise LrpgraphError(f"{what} image {path} is {theirs} but the model takes {wanted}; give images of that "
                            "size and colour, or pass --fit-images to resize (bilinear) and convert them")
    return f"{what} images: {len(odd)} size/colour kind(s) differ from the model's input (e.g. {theirs}); " \
           f"resized and converted to {wanted} (--fit-images)"


def check_start(module: "torch.nn.Module", explained: "onnx.ModelProto", example: "np.ndarray",
                tolerance: float = 1e-5) -> dict:
    """The importer against onnxruntime on the start model (before any step): {output: L1 relative error}.

    Raises LrpgraphError saying that nothing was trained when they differ beyond tolerance (the bound write_back
    holds the trained model to)."""
    from lrpgraph.train.export import _compare, probe_feeds

    session = ort.InferenceSession(explained.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = probe_feeds(module, session, example)
    try:
        return _compare(module, session, feeds, [o.name for o in session.get_outputs()], tolerance, "start")
    except LrpgraphError as err:
        raise LrpgraphError(f"before training: {err}; nothing was trained and no model was written, since the "
                            "trained model's round trip would fail the same way; report the model and this line "
                            "(lrpgraph.train.import_onnx and onnxruntime disagree on its relevance graph)") from None


def failed_write_back(error: str, out: Path, plain_ok: bool) -> str:
    """The one line for a failed final round trip: the error, which written files are usable, what to do."""
    plain = out / "model.onnx"
    usable = (f"{plain} (the trained classifier) is usable: its logits match the trained module's; "
              if plain_ok else f"{plain} does not match the trained module either; ")
    return (f"{error}; {usable}{out / 'model.lrp.onnx'}'s heatmaps differ from the ones training used, so convert "
            f"{plain} again (lrpgraph convert) for heatmaps, or load {out / 'checkpoints' / 'last.pt'} (the trained "
            "weights) with --resume after fixing the cause")


def folder_labels(labels: list | None, folders: list, classes: int) -> tuple:
    """(labels, note or None): the labels the trained model carries. Class folder k (in sorted order) trains
    output k, so outputs 0 .. len(folders) - 1 are named by the folders; an output no folder trains keeps the
    model's own label, or is named 'output K (no class folder)'. The note says which labels of the model the
    folders replaced (a pretrained head whose first outputs now mean the folders' classes)."""
    old = list(labels) if isinstance(labels, list) else []
    new = [str(f) for f in folders] + [str(old[k]) if k < len(old) else f"output {k} (no class folder)"
                                       for k in range(len(folders), classes)]
    replaced = [k for k in range(min(len(folders), len(old))) if str(old[k]) != new[k]]
    note = None
    if replaced:
        shown = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in replaced[:3]) + (", ..." if len(replaced) > 3
                                                                                     else "")
        note = (f"the class folders name outputs 0 to {len(folders) - 1}; {len(replaced)} of the model's labels "
                f"are replaced ({shown})")
    return new, note
