"""lrpgraph.datasets: background-biased Fashion-MNIST (masks, correlations, determinism, folders)."""

import hashlib

import numpy as np
import pytest

from lrpgraph import datasets
from lrpgraph.errors import LrpgraphError

pytestmark = pytest.mark.skipif(not (datasets.fashion_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
CLASSES = (0, 2, 4, 6)


def small(mode, split="test", **kw):
    return datasets.biased_fashion_mnist(split, mode, per_class=kw.pop("per_class", 25), classes=CLASSES, **kw)


def artefact_pixels(k, size):
    box = np.zeros((size, size), bool)
    top, left = datasets.artefact_box(k, size)
    box[top:top + datasets.ARTEFACT, left:left + datasets.ARTEFACT] = True
    return box


def test_shapes_and_balance():
    data = small("biased")
    assert data.images.shape == data.masks.shape == (100, 36, 36)
    assert data.images.dtype == data.masks.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [25] * 4
    assert set(np.unique(data.masks)) == {0, 255}


def test_masks_cover_the_garment_and_not_the_artefact():
    raw, raw_labels = datasets.load_fashion_mnist("test")
    data = small("biased")
    for j in range(len(data.labels)):
        garment = raw[np.flatnonzero(raw_labels == CLASSES[data.labels[j]])[j // 4]]
        solid = datasets.garment_mask(garment)
        assert (solid >= (garment > 0)).all()  # covers every garment pixel (and its enclosed holes)
        assert (data.masks[j] > 0).sum() == solid.sum()
        inside = data.masks[j] > 0
        # mask pixels show the garment's own values, all of its nonzero ones
        assert np.array_equal(np.sort(data.images[j][inside]), np.sort(garment[solid]))
        box = artefact_pixels(data.artefacts[j], 36)
        assert not (inside & box).any()
    # artefact places of all classes lie outside every mask (the garment stays in the inner region)
    ring = np.zeros((36, 36), bool)
    for k in range(10):
        ring |= artefact_pixels(k, 36)
    assert not (data.masks.astype(bool) & ring).any()


def test_garment_mask_fills_holes():
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 9
    ring[3, 3] = 0  # a hole
    ring[0, 3] = 0  # border, stays background
    solid = datasets.garment_mask(ring)
    assert solid[3, 3] and solid[1:6, 1:6].all() and solid.sum() == 25


def test_artefact_is_drawn_where_promised():
    data = small("biased")
    for j in range(len(data.labels)):
        k = data.artefacts[j]
        top, left = datasets.artefact_box(k, 36)
        patch = data.images[j, top:top + 3, left:left + 3]
        assert np.array_equal(patch, np.where(datasets.SHAPES[k], 255, 0))


def test_the_three_test_sets_have_the_promised_correlations():
    biased, unbiased, confounded = (small(m) for m in datasets.MODES)
    assert np.array_equal(biased.artefacts, biased.labels)  # biased: always the own class
    assert (unbiased.artefacts == -1).all()  # unbiased: none
    assert (confounded.artefacts >= 0).all() and (confounded.artefacts != confounded.labels).all()
    # confounded: a different class, and every other class occurs (drawn, not a fixed shift)
    assert len({(int(a) - int(y)) % 4 for a, y in zip(confounded.artefacts, confounded.labels)}) == 3
    # the sets differ only in the artefact: same garments, masks, textures elsewhere
    for a in (biased, confounded):
        assert np.array_equal(a.masks, unbiased.masks) and np.array_equal(a.labels, unbiased.labels)
        changed = a.images != unbiased.images
        for j in range(len(a.labels)):
            assert not (changed[j] & ~artefact_pixels(a.artefacts[j], 36)).any()
    # no artefact pixels are drawn in the unbiased set (a 3 x 3 shape of 255 on a black box is not there)
    for j in range(len(unbiased.labels)):
        for k in range(4):
            top, left = datasets.artefact_box(k, 36)
            assert not np.array_equal(unbiased.images[j, top:top + 3, left:left + 3],
                                      np.where(datasets.SHAPES[k], 255, 0))


def test_bias_probability_in_training():
    data = small("biased", split="train", per_class=100, bias=0.8)
    carried = data.artefacts >= 0
    assert (data.artefacts[carried] == data.labels[carried]).all()
    assert 0.7 < carried.mean() < 0.9


def digest(data):
    h = hashlib.sha256()
    for array in (data.images, data.masks, data.labels, data.artefacts):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes():
    assert digest(small("confounded", seed=3)) == digest(small("confounded", seed=3))
    assert digest(small("confounded", seed=3)) != digest(small("confounded", seed=4))


def test_same_seed_same_files(tmp_path):
    for run in ("a", "b"):
        datasets.write_benchmark(tmp_path / run, train_per_class=3, test_per_class=2, val_per_class=1, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * (4 * 3 + 4 * 1 + 3 * 4 * 2)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_folders_are_read_by_the_trainer(tmp_path):
    from lrpgraph.train.data import MaskedImageFolder

    images, masks = datasets.write_benchmark(tmp_path, train_per_class=2, test_per_class=1)["train"]
    data = MaskedImageFolder(images, masks, grayscale=True)
    assert data.classes == ["0_t-shirt", "1_trouser", "2_sandal", "3_bag"]
    x, m, y = data[2]  # sorted by class folder: two images of class 0 first
    assert x.shape == m.shape == (1, 36, 36) and y == 1


def test_validation_is_disjoint_from_training():
    train = datasets.biased_fashion_mnist("train", "unbiased", 5, classes=CLASSES)
    val = datasets.biased_fashion_mnist("train", "unbiased", 5, classes=CLASSES, offset=5)
    assert not any(np.array_equal(a, b) for a in train.masks for b in val.masks)


def test_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("LRPGRAPH_FASHION_MNIST", str(tmp_path))
    with pytest.raises(LrpgraphError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train")
    monkeypatch.delenv("LRPGRAPH_FASHION_MNIST")
    for bad in ({"mode": "odd"}, {"size": 30}, {"classes": (1,)}, {"bias": 1.5}):
        with pytest.raises(LrpgraphError):
            datasets.biased_fashion_mnist("test", **{"per_class": 1, **bad})


def test_make_dataset_command(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lrpgraph.cli import main

    result = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "d"), "--classes", "1,8", "--train-per-class",
                                       "2", "--test-per-class", "1", "--size", "40"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["test-biased", "test-confounded", "test-unbiased",
                                                                   "train"]
    assert sorted(p.name for p in (tmp_path / "d" / "train" / "masks").iterdir()) == ["0_trouser", "1_bag"]
    monkeypatch.setenv("LRPGRAPH_FASHION_MNIST", str(tmp_path / "none"))
    result = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "e")])
    assert result.exit_code == 2 and "apt-get install dataset-fashion-mnist" in result.output
    assert "Traceback" not in result.output


def test_ood_set_has_other_backgrounds_and_artefact_places():
    """The other hospital: the in-distribution confounded set's garments, but every background pixel drawn anew
    (rings, not stripes) and every artefact box at a ring place that overlaps none of the ten training places."""
    ood, confounded = datasets.ood_set(25, CLASSES, 40, seed=3), small("confounded", size=40, seed=3)
    assert np.array_equal(ood.labels, confounded.labels) and (ood.artefacts != ood.labels).all()
    assert ood.places.shape == (100, 2) and (ood.places >= 0).all()
    taken = np.zeros((40, 40), bool)
    for k in range(10):
        taken |= artefact_pixels(k, 40)
    inner = np.zeros((40, 40), bool)
    inner[datasets.MARGIN:-datasets.MARGIN, datasets.MARGIN:-datasets.MARGIN] = True
    for j, (top, left) in enumerate(ood.places):
        box = np.zeros((40, 40), bool)
        box[top:top + 3, left:left + 3] = True
        assert not (box & taken).any() and not (box & inner).any()  # on the ring, off every training place
        expected = np.where(datasets.SHAPES[ood.artefacts[j]], 255, 0)
        assert np.array_equal(ood.images[j][top:top + 3, left:left + 3], expected)
        assert not (ood.masks[j].astype(bool) & box).any()
    background = (ood.masks == 0) & (confounded.masks == 0)
    assert (ood.images[background] != confounded.images[background]).mean() > 0.9
    assert ood.images[background].astype(float).mean() > confounded.images[background].astype(float).mean() + 10
    again = datasets.ood_set(25, CLASSES, 40, seed=3)
    assert hashlib.sha256(again.images.tobytes()).digest() == hashlib.sha256(ood.images.tobytes()).digest()


def test_make_dataset_writes_the_ood_set(tmp_path):
    from click.testing import CliRunner

    from lrpgraph.cli import main

    result = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "d"), "--train-per-class", "1",
                                       "--test-per-class", "2", "--ood"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "test-ood" / "images" / "3_bag").is_dir()
    assert len(list((tmp_path / "d" / "test-ood" / "masks").rglob("*.png"))) == 8
