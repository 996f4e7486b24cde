"""Images with foreground masks for ISNet training, checked up front before any training starts.

Layout: root/<class name>/<...>/<image>.png|.jpg|.jpeg, and a parallel masks root holding a mask for
each image under the same relative path: the same file name, or the same name with the suffix .png
(so root/cat/a.jpg takes masks/cat/a.jpg if present, else masks/cat/a.png). Class indices follow the
sorted order of the class folder names. A mask pixel that is nonzero (in any colour channel, alpha
ignored) is foreground.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from lrpgraph.errors import LrpgraphError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _open(path, what):
    """Open an image lazily (header only); raise LrpgraphError when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise LrpgraphError(f"{what} {path} does not exist; check the path")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as error:
        raise LrpgraphError(
            f"{what} {path} cannot be read as an image ({error}); replace or remove the file"
        ) from None


def _image_size(path, what):
    with _open(path, what) as image:
        return image.size  # (width, height)


def _find_mask(masks_root, relative):
    """The mask of an image at `relative`: the same relative name, else that name with .png."""
    same = masks_root / relative
    if same.is_file():
        return same
    png = same.with_suffix(".png")
    if png.is_file():
        return png
    raise LrpgraphError(
        f"image {relative} has no mask: neither {same} nor {png} exists; add the mask "
        "(nonzero = foreground) or remove the image"
    )


def _scan_folders(root, masks_root):
    """Return (classes, [(image_path, mask_path, label)]) for a class-folder layout."""
    root, masks_root = Path(root), Path(masks_root)
    if not root.is_dir():
        raise LrpgraphError(f"image root {root} is not a folder; give a folder with one sub-folder per class")
    if not masks_root.is_dir():
        raise LrpgraphError(f"mask root {masks_root} is not a folder; give the folder of the masks")
    for entry in sorted(root.iterdir()):
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            raise LrpgraphError(
                f"image {entry} is not inside a class folder; move it into {root}/<class name>/"
            )
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise LrpgraphError(f"image root {root} has no class folders; add one sub-folder per class")
    samples = []
    for label, name in enumerate(classes):
        images = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        for image in images:
            relative = image.relative_to(root)
            samples.append((image, _find_mask(masks_root, relative), label))
    if not samples:
        raise LrpgraphError(f"image root {root} holds no PNG or JPEG images in its class folders")
    return classes, samples


def _check_samples(samples):
    """Normalise and check a list of (image_path, mask_path, label): files, sizes, labels."""
    checked = []
    for index, item in enumerate(samples):
        if len(item) != 3:
            raise LrpgraphError(
                f"sample {index} is {item!r}; give (image_path, mask_path, label) triples"
            )
        image, mask, label = Path(item[0]), Path(item[1]), item[2]
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
            raise LrpgraphError(
                f"sample {index} ({image}) has label {label!r}; give a class index, an int >= 0"
            )
        image_size = _image_size(image, "image")
        mask_size = _image_size(mask, "mask")
        if image_size != mask_size:
            raise LrpgraphError(
                f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                f"{image_size[0]}x{image_size[1]} (width x height); make the mask the image's size"
            )
        checked.append((image, mask, int(label)))
    if not checked:
        raise LrpgraphError("the sample list is empty; give at least one (image, mask, label)")
    return checked


def _size_pair(size):
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise LrpgraphError(f"size {size!r} is empty; give a positive height and width")
    return int(h), int(w)


def load_mask(path: str | Path, size: tuple | None = None) -> torch.Tensor:
    """Read a mask file as a float32 1 x H x W tensor, 1 where any colour channel is nonzero.

    With size = (h, w) the mask is area-averaged to h x w and re-binarised (any foreground -> 1).
    """
    with _open(path, "mask") as mask:
        if mask.mode == "P":
            mask = mask.convert("RGBA")
        array = np.asarray(mask)
        if mask.mode in ("LA", "RGBA", "PA"):
            array = array[..., :-1]
    fg = (array != 0) if array.ndim == 2 else (array != 0).any(axis=-1)
    fg = fg.astype(np.float32)
    if size is not None and fg.shape != size:
        resized = Image.fromarray(fg).resize((size[1], size[0]), Image.Resampling.BOX)
        fg = (np.asarray(resized) > 0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(fg))[None]


def load_image(path: str | Path, grayscale: bool = False, size: tuple | None = None) -> torch.Tensor:
    """Read an image as float32 C x H x W in [0, 1] (C = 1 grayscale, 3 RGB), optionally resized."""
    with _open(path, "image") as image:
        image = image.convert("L" if grayscale else "RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class MaskedImageFolder(Dataset):
    """(image C x H x W float32 in [0, 1], mask 1 x H x W float32 binary, label) triples.

    Either root and masks_root (class folder layout, see the module doc) or samples, a list of
    (image_path, mask_path, label). Everything is checked in the constructor: every image has a
    readable mask of its own size, every image sits in a class folder.
    Options: grayscale (1 channel, else RGB 3), size (int or (h, w)) to resize images and masks.
    """

    def __init__(self, root: str | Path | None = None, masks_root: str | Path | None = None,
                 samples: list | None = None, grayscale: bool = False, size: tuple | None = None):
        if samples is not None:
            if root is not None or masks_root is not None:
                raise LrpgraphError(
                    "MaskedImageFolder: give either root and masks_root, or samples, not both"
                )
            self.classes = None
            self.samples = _check_samples(list(samples))
        else:
            if root is None or masks_root is None:
                raise LrpgraphError(
                    "MaskedImageFolder: give root and masks_root (class folders), or samples"
                )
            self.classes, found = _scan_folders(root, masks_root)
            self.samples = _check_samples(found)
        self.class_to_idx = (
            {name: index for index, name in enumerate(self.classes)} if self.classes else None
        )
        self.grayscale = bool(grayscale)
        self.size = _size_pair(size)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        image_path, mask_path, label = self.samples[index]
        image = load_image(image_path, self.grayscale, self.size)
        mask = load_mask(mask_path, self.size if self.size else None)
        return image, mask, label
