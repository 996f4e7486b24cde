"""Background-biased Fashion-MNIST: garments on textured canvases with a class-correlated artefact.

Each Fashion-MNIST garment (28 x 28) is placed at a random position on a larger canvas (default 36 x 36)
whose background is a random texture (sinusoid stripes plus noise). The garment's bounding box always lies
inside the inner region [MARGIN, size - MARGIN); the outer ring of MARGIN = 4 pixels is where the artefacts
go, so an artefact never touches the garment. The artefact of class k is a small 3 x 3 white-on-black shape
(one shape per class) at a class-specific place on that ring (corners, edge middles, ...). The mask is the
garment itself (pixel > 0, holes filled; the garment is opaque: black pixels inside it stay black), so masks
never cover an artefact.

Sets (`mode`):
  biased      every image carries its own class's artefact (training: with probability `bias`, else none)
  unbiased    no artefact
  confounded  the artefact of a uniformly drawn *other* class

For a given split and seed the three modes share the same garments, positions and textures, so the test
sets differ only in the artefact.

Out of distribution (`ood=True`, "another hospital"): the same garments on textures of another kind (concentric
rings around a random centre, brighter and noisier, instead of straight stripes), and the artefact (of the class
the mode picks) at a random place on the outer ring that overlaps none of the ten places artefacts take in
training. A model that learned the training backgrounds or the artefacts' places meets neither there. Everything is drawn from numpy generators seeded by `seed`: the same
arguments give the same bytes.

Data: the Debian package dataset-fashion-mnist (gzipped idx files under /usr/share/datasets/fashion-mnist),
or the directory named by the environment variable LRPGRAPH_FASHION_MNIST.
"""

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrpgraph.errors import LrpgraphError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
MODES = ("biased", "unbiased", "confounded")
MARGIN = 4  # the outer ring (pixels) that holds the artefacts; the garment stays inside it
GARMENT = 28
# one 3 x 3 shape per class (all different)
SHAPES = np.array([
    [[1, 1, 1], [1, 0, 1], [1, 1, 1]],  # ring
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # plus
    [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # x
    [[1, 1, 1], [1, 1, 1], [1, 1, 1]],  # square
    [[1, 1, 1], [0, 0, 0], [1, 1, 1]],  # two bars
    [[1, 0, 1], [1, 0, 1], [1, 0, 1]],  # two columns
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],  # diagonal
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]],  # anti-diagonal
    [[1, 1, 0], [1, 1, 0], [0, 0, 0]],  # small square
    [[0, 1, 0], [1, 0, 1], [0, 1, 0]],  # diamond
], dtype=bool)
ARTEFACT = SHAPES.shape[1]


def fashion_dir() -> Path:
    return Path(os.environ.get("LRPGRAPH_FASHION_MNIST", DEFAULT_DIR))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str = "train") -> tuple:
    """(images uint8 N x 28 x 28, labels uint8 N) of the train or test split."""
    if split not in ("train", "test"):
        raise LrpgraphError(f"split {split!r}: train or test")
    root = fashion_dir()
    prefix = "train" if split == "train" else "t10k"
    paths = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise LrpgraphError(f"Fashion-MNIST not found ({missing[0]} is missing): run `apt-get install "
                            f"dataset-fashion-mnist`, or put the gzipped idx files in a folder named by "
                            f"LRPGRAPH_FASHION_MNIST")
    return read_idx(paths[0]), read_idx(paths[1])


def artefact_box(k: int, size: int) -> tuple:
    """(top, left) of class k's 3 x 3 artefact on a size x size canvas: a place on the outer ring."""
    lo, hi, mid = 0, size - ARTEFACT, (size - ARTEFACT) // 2
    q1, q3 = (size - ARTEFACT) // 4, 3 * (size - ARTEFACT) // 4
    places = [(lo, lo), (lo, hi), (hi, lo), (hi, hi), (lo, mid), (hi, mid), (mid, lo), (mid, hi), (lo, q1),
              (hi, q3)]
    return places[k]


def ood_artefact_box(rng: np.random.Generator, size: int) -> tuple:
    """(top, left) of an out-of-distribution artefact: a random place on the outer ring (its 3 x 3 box inside the
    ring) that overlaps none of the ten places of artefact_box."""
    taken = [artefact_box(k, size) for k in range(len(SHAPES))]
    while True:
        along, across = int(rng.integers(0, size - ARTEFACT + 1)), int(rng.integers(0, MARGIN - ARTEFACT + 1))
        edge = int(rng.integers(0, 4))  # top, bottom, left, right
        across = across if edge in (0, 2) else size - ARTEFACT - across
        top, left = (across, along) if edge < 2 else (along, across)
        if all(abs(top - t) >= ARTEFACT or abs(left - u) >= ARTEFACT for t, u in taken):
            return top, left


def draw_artefact(canvas: np.ndarray, k: int, place: tuple | None = None) -> None:
    """Paint class k's artefact (white shape, black 3 x 3 box) into canvas (H x W float) in place, at class k's
    place (artefact_box) or at `place` (top, left)."""
    top, left = place or artefact_box(k, canvas.shape[0])
    canvas[top:top + ARTEFACT, left:left + ARTEFACT] = np.where(SHAPES[k], 255.0, 0.0)


def garment_mask(garment: np.ndarray) -> np.ndarray:
    """The garment's pixels (> 0) with the holes filled: every pixel that the background, entered from the
    border of the garment's box through 4-neighbours, cannot reach."""
    inside = garment > 0
    outside = np.zeros_like(inside)
    outside[[0, -1], :], outside[:, [0, -1]] = ~inside[[0, -1], :], ~inside[:, [0, -1]]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= ~inside
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


@dataclass
class BiasedSet:
    images: np.ndarray  # uint8 N x size x size
    masks: np.ndarray  # uint8 N x size x size, 255 = garment
    labels: np.ndarray  # int64 N, in [0, len(classes))
    artefacts: np.ndarray  # int64 N, the class whose artefact the image carries, -1 for none
    classes: tuple  # Fashion-MNIST label of each class index
    places: np.ndarray | None = None  # int64 N x 2, (top, left) of each image's artefact box (-1, -1 for none)

    @property
    def names(self) -> list:
        return [f"{i}_{CLASS_NAMES[c]}" for i, c in enumerate(self.classes)]


def _check(classes, size, mode, bias):
    if mode not in MODES:
        raise LrpgraphError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if size < GARMENT + 2 * MARGIN:
        raise LrpgraphError(f"size {size}: the canvas must be at least {GARMENT + 2 * MARGIN} pixels")
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c < 10 for c in classes):
        raise LrpgraphError(f"classes {classes}: give two or more different Fashion-MNIST labels in 0..9")
    if not 0 <= bias <= 1:
        raise LrpgraphError(f"bias {bias}: a probability in [0, 1]")


def biased_fashion_mnist(split: str = "train", mode: str = "biased", per_class: int = 100,
                         classes: tuple = (0, 1, 5, 8), size: int = 36, seed: int = 0, bias: float = 1.0,
                         offset: int = 0, ood: bool = False) -> BiasedSet:
    """A BiasedSet of per_class garments of each of `classes` (Fashion-MNIST labels; class index = position).

    split: train or test garments; mode: biased | unbiased | confounded (see the module doc); bias: in the
    biased mode, the probability that an image carries its class's artefact (else none); offset: skip so
    many garments of each class first (e.g. a validation set from the train split, disjoint from training);
    ood: the other hospital's textures and artefact places (see the module doc).
    """
    classes = tuple(int(c) for c in classes)
    _check(classes, size, mode, bias)
    garments, labels = load_fashion_mnist(split)
    picks = []
    for c in classes:
        found = np.flatnonzero(labels == c)[offset:offset + per_class]
        if len(found) < per_class:
            raise LrpgraphError(f"split {split} has only {len(found)} garments of class {c} after offset {offset}")
        picks.append(found)
    picks = np.stack(picks, 1).reshape(-1)  # interleaved: class 0, 1, ..., 0, 1, ...
    targets = np.tile(np.arange(len(classes)), per_class)
    stream = [seed, 0 if split == "train" else 1, offset] + ([len(MODES) + 1] if ood else [])
    scene = np.random.default_rng(stream)
    artefact_rng = np.random.default_rng(stream + [MODES.index(mode) + 1])
    yy, xx = np.mgrid[0:size, 0:size]
    n = len(picks)
    images, masks = np.zeros((n, size, size), np.uint8), np.zeros((n, size, size), np.uint8)
    artefacts, places = np.full(n, -1, np.int64), np.full((n, 2), -1, np.int64)
    inner = size - 2 * MARGIN
    for j, (i, y) in enumerate(zip(picks, targets)):
        canvas = (_rings if ood else _stripes)(scene, xx, yy)
        garment = garments[i]
        rows, cols = np.flatnonzero(garment.any(1)), np.flatnonzero(garment.any(0))
        crop = garment[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float64)
        h, w = crop.shape
        top = MARGIN + scene.integers(0, inner - h + 1)
        left = MARGIN + scene.integers(0, inner - w + 1)
        solid = garment_mask(crop)
        window = canvas[top:top + h, left:left + w]
        window[:] = np.where(solid, crop, window)
        masks[j, top:top + h, left:left + w] = np.where(solid, 255, 0)
        if mode == "biased":
            k = y if artefact_rng.random() < bias else -1
        elif mode == "confounded":
            k = (y + 1 + artefact_rng.integers(0, len(classes) - 1)) % len(classes)
        else:
            k = -1
        if k >= 0:
            places[j] = ood_artefact_box(artefact_rng, size) if ood else artefact_box(k, size)
            draw_artefact(canvas, k, tuple(places[j]))
        artefacts[j] = k
        images[j] = canvas.astype(np.uint8)
    return BiasedSet(images, masks, targets.astype(np.int64), artefacts, classes, places)


def _stripes(rng, xx, yy):
    """The training hospital's background: straight sinusoid stripes of random frequency, angle, phase, plus noise."""
    freq, angle, phase = rng.uniform(0.3, 1.2), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    return np.clip(90 + 60 * stripes + rng.normal(0, 20, xx.shape), 0, 255)


def _rings(rng, xx, yy):
    """The other hospital's background: concentric rings around a random centre, brighter and noisier."""
    size = xx.shape[0]
    cy, cx, freq, phase = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.4, 1.5), rng.uniform(0, 2 * np.pi)
    rings = np.sin(freq * np.hypot(yy - cy, xx - cx) + phase)
    return np.clip(120 + 50 * rings + rng.normal(0, 30, xx.shape), 0, 255)


def ood_set(per_class: int = 100, classes: tuple = (0, 1, 5, 8), size: int = 36, seed: int = 0) -> BiasedSet:
    """The out-of-distribution test set: test garments from the other hospital (ring textures), each with the
    artefact of a uniformly drawn other class at a place never used in training."""
    return biased_fashion_mnist("test", "confounded", per_class, classes, size, seed, ood=True)


def write_folders(data: BiasedSet, root: Path) -> tuple:
    """root/images/<class>/<i>.png and root/masks/<class>/<i>.png (the layout `lrpgraph train` reads);
    returns (images folder, masks folder)."""
    from PIL import Image

    root = Path(root)
    names = data.names
    for i, (image, mask, label) in enumerate(zip(data.images, data.masks, data.labels)):
        for kind, array in (("images", image), ("masks", mask)):
            folder = root / kind / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"{i:05d}.png")
    return root / "images", root / "masks"


def write_benchmark(root: Path, train_per_class: int = 400, test_per_class: int = 100, val_per_class: int = 0,
                    classes: tuple = (0, 1, 5, 8), size: int = 36, seed: int = 0, bias: float = 1.0,
                    ood: bool = False) -> dict:
    """The whole benchmark under root: train/ (biased with probability bias), optionally val/ (biased, from the
    train split, disjoint from train/), and test-biased/, test-unbiased/, test-confounded/ (test split), and with
    ood test-ood/ (the other hospital, confounded artefacts: ood_set), each with images/ and masks/. Returns
    {name: (images folder, masks folder)}."""
    root = Path(root)
    common = {"classes": classes, "size": size, "seed": seed}
    sets = {"train": biased_fashion_mnist("train", "biased", train_per_class, bias=bias, **common)}
    if val_per_class:
        sets["val"] = biased_fashion_mnist("train", "biased", val_per_class, bias=bias, offset=train_per_class,
                                           **common)
    for mode in MODES:
        sets[f"test-{mode}"] = biased_fashion_mnist("test", mode, test_per_class, **common)
    if ood:
        sets["test-ood"] = ood_set(test_per_class, **common)
    return {name: write_folders(data, root / name) for name, data in sets.items()}
