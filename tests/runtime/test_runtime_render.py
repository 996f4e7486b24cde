import os

import numpy as np
import pytest
from PIL import Image

from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.render import heatmap_rgb, overlay, save_npy, save_png


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_bwr_png_is_red_positive_blue_negative_white_zero(tmp_path):
    relevance = np.array([[2.0, -2.0], [0.0, 1.0]], dtype=np.float32)
    path = save_png(tmp_path / "heat.png", heatmap_rgb(relevance))
    image = pixels(path)
    assert image[0, 0].tolist() == [255, 0, 0]
    assert image[0, 1].tolist() == [0, 0, 255]
    assert image[1, 0].tolist() == [255, 255, 255]
    assert image[1, 1].tolist() == [255, 128, 128]  # half of max |R|: halfway from white to red


def test_channels_are_summed_and_scaled_by_max_abs():
    relevance = np.zeros((3, 1, 2), dtype=np.float32)
    relevance[:, 0, 0] = [1.0, 1.0, 1.0]  # sums to 3
    relevance[0, 0, 1] = -6.0
    heat = heatmap_rgb(relevance)
    assert heat[0, 1].tolist() == [0, 0, 255]
    assert heat[0, 0].tolist() == [255, 128, 128]


def test_zero_and_non_finite_relevance_is_white():
    assert (heatmap_rgb(np.zeros((3, 4))) == 255).all()
    heat = heatmap_rgb(np.array([[np.nan, 1.0]]))
    assert heat[0, 0].tolist() == [255, 255, 255] and heat[0, 1].tolist() == [255, 0, 0]


def test_other_colour_maps():
    relevance = np.array([[-1.0, 0.0, 1.0]])
    # 0.3 * 255 = 76.5 and 0.5 * 255 = 127.5 round to even
    assert heatmap_rgb(relevance, "seismic").tolist() == [[[0, 0, 76], [255, 255, 255], [128, 0, 0]]]
    assert heatmap_rgb(relevance, "coldnhot").tolist() == [[[0, 255, 255], [0, 0, 0], [255, 255, 0]]]
    with pytest.raises(LrpgraphError, match="unknown colour map 'jet'"):
        heatmap_rgb(relevance, "jet")


def test_overlay_blends():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    heat = np.full((2, 2, 3), 200, dtype=np.uint8)
    assert (overlay(image, heat, 0.25) == 125).all()
    assert overlay(np.full((2, 2), 100, dtype=np.uint8), heat).shape == (2, 2, 3)
    with pytest.raises(LrpgraphError, match="must match"):
        overlay(image[:1], heat)


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    folder = tmp_path / "deep" / "folder"
    save_png(folder / "a.png", np.zeros((2, 2, 3), dtype=np.uint8))
    save_npy(folder / "a.npy", np.arange(4.0))
    assert np.array_equal(np.load(folder / "a.npy"), np.arange(4.0))
    save_npy(folder / "a.npy", np.ones(2))  # replacing works
    with pytest.raises(ValueError):
        save_npy(folder / "b.npy", np.array([object()], dtype=object))  # fails mid-write
    assert sorted(os.listdir(folder)) == ["a.npy", "a.png"]
    assert np.array_equal(np.load(folder / "a.npy"), np.ones(2))
    mode = os.stat(folder / "a.png").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
