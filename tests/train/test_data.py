"""MaskedImageFolder on tiny image/mask folders: labels, binary masks, and every up-front error."""

import numpy as np
import pytest
import torch
from PIL import Image

from lrpgraph.errors import LrpgraphError
from lrpgraph.train.data import MaskedImageFolder


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask_array(h, w, value=255):
    m = np.zeros((h, w), dtype=np.uint8)
    m[1 : h - 1, 1:3] = value
    return m


@pytest.fixture
def tree(tmp_path):
    """images/{cat,dog}/..., masks/... ; cat is class 0 and dog class 1 (sorted names)."""
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    arrays = {
        "dog/b.png": rgb(rng, 4, 5),
        "cat/a.png": rgb(rng, 4, 5),
        "dog/sub/c.png": rgb(rng, 6, 3),
    }
    for name, array in arrays.items():
        save(images / name, array)
    save(masks / "dog/b.png", mask_array(4, 5, 255))
    save(masks / "cat/a.png", mask_array(4, 5, 1))  # any nonzero value is foreground
    save(masks / "dog/sub/c.png", mask_array(6, 3, 7))
    return images, masks, arrays


def test_valid_folder_loads_labels_images_and_binary_masks(tree):
    images, masks, arrays = tree
    data = MaskedImageFolder(images, masks)
    assert data.classes == ["cat", "dog"]
    assert data.class_to_idx == {"cat": 0, "dog": 1}
    assert len(data) == 3
    seen = {}
    for i in range(len(data)):
        image, mask, label = data[i]
        name = data.samples[i][0].relative_to(images).as_posix()
        seen[name] = label
        array = arrays[name]
        assert image.dtype == torch.float32 and mask.dtype == torch.float32
        assert image.shape == (3, *array.shape[:2]) and mask.shape == (1, *array.shape[:2])
        np.testing.assert_allclose(image.numpy(), array.transpose(2, 0, 1) / 255.0, rtol=1e-6)
        assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
        expected = (mask_array(*array.shape[:2]) > 0).astype(np.float32)
        np.testing.assert_array_equal(mask.numpy()[0], expected)
    assert seen == {"cat/a.png": 0, "dog/b.png": 1, "dog/sub/c.png": 1}


def test_grayscale(tree):
    images, masks, arrays = tree
    data = MaskedImageFolder(images, masks, grayscale=True)
    image, _, _ = data[0]
    name = data.samples[0][0].relative_to(images).as_posix()
    want = np.asarray(Image.fromarray(arrays[name]).convert("L"), dtype=np.float32) / 255.0
    assert image.shape == (1, *want.shape)
    np.testing.assert_allclose(image.numpy()[0], want, rtol=1e-6)


def test_resize_keeps_masks_binary_and_any_foreground(tmp_path):
    rng = np.random.default_rng(1)
    save(tmp_path / "im/a/x.png", rgb(rng, 8, 8))
    m = np.zeros((8, 8), dtype=np.uint8)
    m[5, 1] = 200  # one pixel inside the 4x4 block (1, 0)
    save(tmp_path / "mk/a/x.png", m)
    image, mask, label = MaskedImageFolder(tmp_path / "im", tmp_path / "mk", size=(2, 2))[0]
    assert image.shape == (3, 2, 2) and label == 0
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    np.testing.assert_array_equal(mask.numpy()[0], [[0, 0], [1, 0]])
    image, mask, _ = MaskedImageFolder(tmp_path / "im", tmp_path / "mk", size=5)[0]
    assert image.shape == (3, 5, 5) and mask.shape == (1, 5, 5)
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}


def test_jpeg_image_takes_png_mask_and_rgb_mask_any_channel(tmp_path):
    rng = np.random.default_rng(2)
    save(tmp_path / "im/a/x.jpg", rgb(rng, 4, 4))
    m = np.zeros((4, 4, 3), dtype=np.uint8)
    m[0, 0, 0] = 1  # red only: grey conversion would round this to 0
    m[2, 3, 2] = 1  # blue only
    save(tmp_path / "mk/a/x.png", m)
    _, mask, _ = MaskedImageFolder(tmp_path / "im", tmp_path / "mk")[0]
    want = np.zeros((4, 4))
    want[0, 0] = want[2, 3] = 1
    np.testing.assert_array_equal(mask.numpy()[0], want)


def test_sample_list(tree):
    images, masks, _ = tree
    samples = [(images / "cat/a.png", masks / "cat/a.png", 4), (str(images / "dog/b.png"), str(masks / "dog/b.png"), 2)]
    data = MaskedImageFolder(samples=samples)
    assert [data[i][2] for i in range(2)] == [4, 2]
    assert data.classes is None


# ---------------------------------------------------------------- errors, all in the constructor


def test_missing_mask(tree):
    images, masks, _ = tree
    (masks / "dog/b.png").unlink()
    with pytest.raises(LrpgraphError, match=r"image dog/b\.png has no mask.*add the mask"):
        MaskedImageFolder(images, masks)


def test_mask_of_another_size(tree):
    images, masks, _ = tree
    save(masks / "dog/sub/c.png", mask_array(5, 3))
    with pytest.raises(LrpgraphError, match=r"mask .*c\.png is 3x5 but its image .*c\.png is 3x6.*make the mask"):
        MaskedImageFolder(images, masks)


def test_image_outside_class_folder(tree):
    images, masks, _ = tree
    save(images / "stray.png", np.zeros((4, 4, 3)))
    with pytest.raises(LrpgraphError, match=r"stray\.png is not inside a class folder; move it"):
        MaskedImageFolder(images, masks)


def test_unreadable_image(tree):
    images, masks, _ = tree
    (images / "cat/a.png").write_bytes(b"not an image")
    with pytest.raises(LrpgraphError, match=r"a\.png cannot be read as an image"):
        MaskedImageFolder(images, masks)


def test_roots_that_are_not_folders(tmp_path, tree):
    images, masks, _ = tree
    with pytest.raises(LrpgraphError, match="image root .* is not a folder"):
        MaskedImageFolder(tmp_path / "nope", masks)
    with pytest.raises(LrpgraphError, match="mask root .* is not a folder"):
        MaskedImageFolder(images, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LrpgraphError, match="has no class folders"):
        MaskedImageFolder(tmp_path / "empty", masks)
    (tmp_path / "hollow/a").mkdir(parents=True)
    with pytest.raises(LrpgraphError, match="holds no PNG or JPEG images"):
        MaskedImageFolder(tmp_path / "hollow", masks)


def test_bad_sample_lists(tree):
    images, masks, _ = tree
    good = (images / "cat/a.png", masks / "cat/a.png", 0)
    with pytest.raises(LrpgraphError, match="label -1"):
        MaskedImageFolder(samples=[good, (good[0], good[1], -1)])
    with pytest.raises(LrpgraphError, match=r"mask .*missing\.png does not exist"):
        MaskedImageFolder(samples=[(good[0], masks / "missing.png", 0)])
    with pytest.raises(LrpgraphError, match="triples"):
        MaskedImageFolder(samples=[(good[0], 0)])
    with pytest.raises(LrpgraphError, match="is empty"):
        MaskedImageFolder(samples=[])
    with pytest.raises(LrpgraphError, match="not both"):
        MaskedImageFolder(images, masks, samples=[good])
    with pytest.raises(LrpgraphError, match=r"mask .*b\.png is 5x4 but its image .*c\.png is 3x6"):
        MaskedImageFolder(samples=[(images / "dog/sub/c.png", masks / "dog/b.png", 1)])
