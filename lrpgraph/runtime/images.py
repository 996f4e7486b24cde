"""Find image files and turn them into the float32 C x H x W arrays a converted model expects.

Preprocessing follows the model's `lrpgraph.preprocess` metadata, with torchvision's semantics:
  mode            'L' or 'RGB' (default: from the model's channel count, 1 -> L, 3 -> RGB)
  resize          int: the shorter side becomes this (aspect kept); [h, w]: exactly this size
  crop            int or [h, w]: centre crop (zero padding where the image is smaller)
  scale           values are divided by this (default 255.0, giving [0, 1])
  channel_order   'RGB' (default) or 'BGR'; mean and std are given in this order
  mean, std       per channel (or one value), applied after scaling and reordering
Without resize and crop in the metadata the aspect ratio is kept: the image is scaled to just cover the
model's H x W (for a square input: the shorter side becomes H), then centre-cropped to H x W; values are
scaled to [0, 1] (runtime.describe says so in words).
Resizing is bilinear (PIL, antialiased), as torchvision's Resize on PIL images. EXIF orientation is
not applied (torchvision's loaders do not apply it either).

The display image kept for overlays is the resized and cropped one, so it lines up pixel for pixel
with the heatmap.
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image

from lrpgraph.errors import LrpgraphError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CHANNELS = {"L": 1, "RGB": 3}


def is_image_name(path: str | os.PathLike) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def find_images(paths: list, exclude: str | os.PathLike | None = None) -> list:
    """[(file, relative path)] for files and folders (walked recursively, sorted), in argument order.

    A file named directly is kept whatever its extension (it fails when loaded if it is no image);
    inside folders only image extensions count, and hidden files and folders are skipped. `relative`
    is the file's path below the folder it was found in (just its name for a file given directly).
    Anything under `exclude` (e.g. the output folder) is left out; a file met twice is kept once.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    skip = Path(exclude).resolve() if exclude is not None else None
    found, seen = [], set()

    def add(file, relative):
        real = file.resolve()
        if real in seen or (skip is not None and (real == skip or skip in real.parents)):
            return
        seen.add(real)
        found.append((file, relative))

    for given in paths:
        root = Path(given)
        if root.is_dir():
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and is_image_name(name):
                        file = Path(folder) / name
                        add(file, file.relative_to(root))
        elif root.is_file():
            add(root, Path(root.name))
        else:
            raise LrpgraphError(f"{given} does not exist; give image files or folders of images")
    return found


def list_images(paths: list, exclude: str | os.PathLike | None = None) -> list:
    """The image files found in paths (see find_images), as a list of Paths."""
    return [file for file, _ in find_images(paths, exclude)]


def _pair(value, what):
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise LrpgraphError(
        f"preprocess {what} must be an int or [h, w], got {value!r}; fix the model's preprocess metadata"
    )


def image_mode(preprocess: dict | None, input_shape: tuple) -> str:
    """'L' or 'RGB': from the preprocess metadata, else from the model's channel count."""
    channels = input_shape[0] if input_shape else None
    mode = (preprocess or {}).get("mode")
    if mode is None:
        mode = {1: "L", 3: "RGB"}.get(channels)
        if mode is None:
            raise LrpgraphError(
                f"the model takes {channels} channels; images load as 1 (L) or 3 (RGB) channels; "
                "feed arrays to ExplainSession.explain directly"
            )
    mode = str(mode).upper()
    if mode not in CHANNELS:
        raise LrpgraphError(f"preprocess mode {mode!r} is not supported; use 'L' or 'RGB'")
    if channels is not None and CHANNELS[mode] != channels:
        raise LrpgraphError(f"preprocess mode {mode!r} gives {CHANNELS[mode]} channels but the model takes {channels}")
    return mode


def open_image(path: str | os.PathLike, mode: str) -> Image.Image:
    """The image at path as a PIL image in mode ('L' or 'RGB'); the first frame of animations."""
    try:
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            return image.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LrpgraphError(f"cannot read image {path}: {reason}") from None


def resize_shorter(size: tuple, side: int) -> tuple:
    """(w, h) after resizing (w, h) so that the shorter side is `side`, as torchvision computes it."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = side, int(side * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def cover(size: tuple, height: int, width: int) -> tuple:
    """(w, h) of (w, h) scaled, aspect kept, to just cover height x width (app.js's 'cover' step alike)."""
    w, h = size
    factor = max(height / h, width / w)
    return max(width, int(w * factor + 0.5)), max(height, int(h * factor + 0.5))


def center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Centre crop to height x width, torchvision's offsets; areas outside the image become zero."""
    w, h = image.size
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def resize_and_crop(image: Image.Image, preprocess: dict | None, input_shape: tuple) -> Image.Image:
    """The PIL image after the preprocess resize and crop (or straight resize to the model's H x W)."""
    height, width = (input_shape[1], input_shape[2]) if input_shape else (None, None)
    resize = (preprocess or {}).get("resize")
    crop = (preprocess or {}).get("crop")
    if resize is None and crop is None:
        if height is None or width is None:
            raise LrpgraphError("the model's image size is dynamic and it stores no preprocess; resize images yourself")
        target = cover(image.size, height, width)  # the aspect ratio kept: just covering H x W, centre crop
        image = image.resize(target, Image.BILINEAR) if image.size != target else image
        return center_crop(image, height, width)
    if resize is not None:
        if isinstance(resize, (int, float)) or (isinstance(resize, (list, tuple)) and len(resize) == 1):
            target = resize_shorter(image.size, _pair(resize, "resize")[0])  # [s] is s, as in torchvision
        else:
            rh, rw = _pair(resize, "resize")
            target = (rw, rh)
        if image.size != target:
            image = image.resize(target, Image.BILINEAR)
    if crop is not None:
        ch, cw = _pair(crop, "crop")
        image = center_crop(image, ch, cw)
    return image


def to_array(image: Image.Image, preprocess: dict | None, channels: int | None = None) -> np.ndarray:
    """float32 C x H x W from a PIL image (mode L or RGB): scale, channel order, mean and std."""
    pre = preprocess or {}
    array = np.asarray(image, dtype=np.float32)
    array = array[:, :, None] if array.ndim == 2 else array
    array = array / np.float32(pre.get("scale") or 255.0)
    if str(pre.get("channel_order", "RGB")).upper() == "BGR":
        array = array[:, :, ::-1]
    count = array.shape[2]
    for key, op in (("mean", np.subtract), ("std", np.divide)):
        if pre.get(key) is not None:
            values = np.asarray(pre[key], dtype=np.float32).reshape(-1)
            if values.size not in (1, count):
                raise LrpgraphError(
                    f"preprocess {key} has {values.size} values for {count} channels; fix the model's metadata"
                )
            array = op(array, values)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


def load_image_and_display(path: str | os.PathLike, preprocess: dict | None, input_shape: tuple) -> tuple:
    """(float32 C x H x W model input, uint8 H x W x 3 display image) for one file."""
    mode = image_mode(preprocess, input_shape)
    image = resize_and_crop(open_image(path, mode), preprocess, input_shape)
    array = to_array(image, preprocess)
    want = tuple(input_shape[1:]) if input_shape else (None, None)
    if any(w is not None and w != g for w, g in zip(want, array.shape[1:])):
        raise LrpgraphError(
            f"{path}: preprocessing gives {array.shape[1]}x{array.shape[2]} but the model takes {want[0]}x{want[1]}; "
            "fix resize/crop in the model's preprocess metadata"
        )
    display = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return array, display


def load_image(path: str | os.PathLike, preprocess: dict | None, input_shape: tuple) -> np.ndarray:
    """float32 C x H x W for one image file, preprocessed as the model expects."""
    return load_image_and_display(path, preprocess, input_shape)[0]
