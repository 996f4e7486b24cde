"""Heatmaps as pictures: symmetric colour maps in numpy, overlays, and atomic PNG / npy writes.

A heatmap is scaled by max |R|, so zero relevance is the middle colour of the map and the largest
magnitude of either sign reaches its end: with 'bwr' red is positive, blue negative, white zero.
"""

import os

import numpy as np
from PIL import Image

from lrpgraph.errors import LrpgraphError
from lrpgraph.files import atomic_write

# Each map: colours (r, g, b in [0, 1]) at evenly spaced positions from -max|R| to +max|R|.
COLORMAPS = {
    "bwr": ((0, 0, 1), (1, 1, 1), (1, 0, 0)),  # blue - white - red, as matplotlib's bwr
    "seismic": ((0, 0, 0.3), (0, 0, 1), (1, 1, 1), (1, 0, 0), (0.5, 0, 0)),  # as matplotlib's seismic
    "coldnhot": ((0, 1, 1), (0, 0, 1), (0, 0, 0), (1, 0, 0), (1, 1, 0)),  # cyan-blue-black-red-yellow, as zennit's
    "gray": ((0, 0, 0), (0.5, 0.5, 0.5), (1, 1, 1)),  # black negative, grey zero, white positive
}


def colorize(values: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """uint8 H x W x 3 colours for values in [-1, 1] (clipped), through a named symmetric map."""
    if cmap not in COLORMAPS:
        raise LrpgraphError(f"unknown colour map {cmap!r}; use one of {', '.join(COLORMAPS)}")
    colours = np.asarray(COLORMAPS[cmap], dtype=np.float64)
    stops = np.linspace(-1.0, 1.0, len(colours))
    flat = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0).reshape(-1)
    rgb = np.stack([np.interp(flat, stops, colours[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8).reshape(np.shape(values) + (3,))


def relevance_2d(relevance: np.ndarray) -> np.ndarray:
    """H x W relevance: C x H x W is summed over channels; NaN and infinities become 0."""
    array = np.asarray(relevance, dtype=np.float64)
    if array.ndim == 3:
        array = array.sum(axis=0)
    if array.ndim != 2:
        raise LrpgraphError(f"relevance for one image must be H x W or C x H x W, got shape {list(array.shape)}")
    return np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)


def heatmap_rgb(relevance: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """uint8 H x W x 3 heatmap of one image's relevance (H x W, or C x H x W summed over channels)."""
    array = relevance_2d(relevance)
    peak = np.abs(array).max() if array.size else 0.0
    return colorize(array / peak if peak > 0 else array, cmap)


def overlay(image_rgb: np.ndarray, heat_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 blend (1 - alpha) * image + alpha * heatmap; a grey H x W image is repeated to RGB."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise LrpgraphError(f"overlay alpha must be between 0 and 1, got {alpha}")
    image = np.asarray(image_rgb)
    image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    heat = np.asarray(heat_rgb)
    if image.shape != heat.shape:
        raise LrpgraphError(f"overlay: image is {list(image.shape)} but heatmap is {list(heat.shape)}; they must match")
    mixed = (1.0 - alpha) * image.astype(np.float64) + alpha * heat.astype(np.float64)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 1) -> None:
    """Write a uint8 H x W x 3 (or H x W) array as a PNG, atomically; floats are taken as [0, 1].

    compress_level 1 (zlib's fastest) is several times faster than PIL's default 6 on heatmaps and
    overlays, for files of about the same size."""
    data = np.asarray(array)
    if data.dtype != np.uint8:
        data = np.round(np.clip(data.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (1, 3, 4)):
        raise LrpgraphError(f"cannot save an array of shape {list(data.shape)} as PNG {path}; give H x W or H x W x 3")
    image = Image.fromarray(data[:, :, 0] if data.ndim == 3 and data.shape[2] == 1 else data)
    return atomic_write(path, lambda file: image.save(file, format="PNG", compress_level=compress_level))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as .npy, atomically."""
    return atomic_write(path, lambda file: np.save(file, np.asarray(array), allow_pickle=False))


def save_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file, atomically."""
    return atomic_write(path, lambda file: file.write(text), binary=False)
