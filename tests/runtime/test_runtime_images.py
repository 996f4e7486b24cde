from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.images import find_images, list_images, load_image, load_image_and_display


def write_image(path, width, height, mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(path)
    return path


def test_folders_are_walked_recursively_and_sorted(tmp_path):
    names = ["b.png", "a.JPG", "sub/z/c.webp", "sub/d.tiff", "notes.txt", ".hidden.png", ".cache/e.png", "out/x.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    single = tmp_path / "single.dat"
    single.write_bytes(b"")
    found = find_images([tmp_path, single, tmp_path / "b.png"], exclude=tmp_path / "out")
    relative = [r.as_posix() for _, r in found]
    assert relative == ["a.JPG", "b.png", "sub/d.tiff", "sub/z/c.webp", "single.dat"]
    assert list_images(tmp_path / "sub") == [tmp_path / "sub/d.tiff", tmp_path / "sub/z/c.webp"]
    with pytest.raises(LrpgraphError, match="missing.png does not exist"):
        find_images([tmp_path / "missing.png"])


def test_preprocess_matches_a_numpy_computation(tmp_path):
    path = write_image(tmp_path / "wide.png", 40, 30)
    preprocess = {"resize": 20, "crop": 16, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "channel_order": "BGR"}
    array, display = load_image_and_display(path, preprocess, (3, 16, 16))
    # shorter side 30 -> 20, so 40 x 30 becomes 26 x 20; centre crop 16 starts at top 2, left 5
    resized = np.asarray(Image.open(path).convert("RGB").resize((26, 20), Image.BILINEAR), dtype=np.float32)
    cropped = resized[2:18, 5:21]
    bgr = (cropped / np.float32(255.0))[:, :, ::-1]
    want = ((bgr - np.float32([0.4, 0.5, 0.6])) / np.float32([0.2, 0.25, 0.3])).transpose(2, 0, 1)
    assert array.dtype == np.float32 and array.shape == (3, 16, 16)
    np.testing.assert_allclose(array, want, rtol=1e-6, atol=1e-6)
    assert display.dtype == np.uint8 and display.shape == (16, 16, 3)
    assert np.array_equal(display, cropped.astype(np.uint8))


def test_without_preprocess_the_aspect_ratio_is_kept(tmp_path):
    """No stored preprocessing: scaled to just cover H x W, then a centre crop (not a squash to H x W)."""
    path = write_image(tmp_path / "a.png", 9, 7)
    array = load_image(path, None, (3, 6, 5))
    resized = Image.open(path).resize((8, 6), Image.BILINEAR)  # 9 x 7 by max(6/7, 5/9): 8 x 6 (w x h, rounded)
    want = np.asarray(resized, dtype=np.float32)[0:6, 2:7] / 255.0  # centre crop 6 x 5: top 0, left round(1.5) = 2
    np.testing.assert_allclose(array, want.transpose(2, 0, 1), rtol=1e-6)
    from lrpgraph.runtime import describe

    assert "resized to cover 6x5 (aspect ratio kept), centre crop 6x5" in describe.preprocessing(None, (3, 6, 5))


def test_grey_model_loads_grey_images(tmp_path):
    path = write_image(tmp_path / "colour.png", 5, 6)
    array = load_image(path, None, (1, 6, 5))
    want = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    assert array.shape == (1, 6, 5)
    np.testing.assert_allclose(array[0], want, rtol=1e-6)


def test_channel_count_that_images_cannot_give(tmp_path):
    path = write_image(tmp_path / "a.png", 5, 6)
    with pytest.raises(LrpgraphError, match="takes 4 channels"):
        load_image(path, None, (4, 6, 5))
    with pytest.raises(LrpgraphError, match="gives 3 channels but the model takes 1"):
        load_image(path, {"mode": "RGB"}, (1, 6, 5))


def test_preprocess_that_misses_the_model_size(tmp_path):
    path = write_image(tmp_path / "a.png", 9, 9)
    with pytest.raises(LrpgraphError, match="gives 8x8 but the model takes 6x5"):
        load_image(path, {"resize": 8}, (3, 6, 5))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"plain text"])
def test_unreadable_file_is_named(tmp_path, content):
    path = tmp_path / "broken image.png"
    path.write_bytes(content)
    with pytest.raises(LrpgraphError, match="cannot read image .*broken image.png"):
        load_image(path, None, (3, 6, 5))


def test_paletted_and_transparent_images_load(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 6), (10, 20, 30, 0)).save(rgba)
    palette = tmp_path / "p.gif"
    Image.new("RGB", (5, 6), (200, 0, 0)).convert("P").save(palette)
    assert load_image(rgba, None, (3, 6, 5))[:, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert load_image(Path(palette), None, (3, 6, 5)).shape == (3, 6, 5)


@pytest.mark.parametrize("size", [(40, 30), (30, 41), (64, 64)])
def test_matches_torchvision_imagenet_transform(tmp_path, size):
    transforms = pytest.importorskip("torchvision.transforms")
    path = write_image(tmp_path / "a.jpg", *size, seed=3)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pipeline = transforms.Compose([
        transforms.Resize(24), transforms.CenterCrop(20), transforms.ToTensor(), transforms.Normalize(mean, std),
    ])
    want = pipeline(Image.open(path).convert("RGB")).numpy()
    got = load_image(path, {"resize": [24], "crop": 20, "mean": mean, "std": std}, (3, 20, 20))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
