"""Issue 27's smaller points: explain --help lists every colour map, lrpgraph.save speaks to Python callers,
external weights get the .onnx file's permissions, convert says when it creates -o's folder, evaluate shows
progress when stderr is no terminal."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR
from lrpgraph.runtime.render import COLORMAPS

DEMO = Path(DEMO_DIR)


def test_explain_help_lists_every_colour_map():
    cmap = next(p for p in main.commands["explain"].params if p.name == "cmap")
    assert all(name in cmap.help for name in COLORMAPS), cmap.help
    shown = " ".join(CliRunner().invoke(main, ["explain", "--help"]).output.split())
    assert " ".join(cmap.help.split()) in shown


def _tiny():
    weight = numpy_helper.from_array(np.ones((3, 400), np.float32), "w")  # over save's 1 KiB external threshold
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 400])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_save_speaks_to_python_callers_and_data_files_get_the_usual_mode(tmp_path):
    path = tmp_path / "m.onnx"
    old = os.umask(0o022)
    try:
        lrpgraph.save(_tiny(), path, external=True)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"m.onnx": 0o644, "m.onnx.data": 0o644}, {k: oct(v) for k, v in modes.items()}
    with pytest.raises(lrpgraph.LrpgraphError) as error:
        lrpgraph.save(_tiny(), path)
    assert "force=True" in str(error.value) and "--force" not in str(error.value)


def test_convert_says_it_created_the_output_folder(tmp_path):
    out = tmp_path / "new" / "dir" / "m.lrp.onnx"
    result = CliRunner().invoke(main, ["convert", str(DEMO / "model.onnx"), "-o", str(out)])
    assert result.exit_code == 0 and f"created the folder {out.parent}" in result.output, result.output
    again = CliRunner().invoke(main, ["convert", str(DEMO / "model.onnx"), "-o", str(out), "--force"])
    assert "created the folder" not in again.output


def test_evaluate_shows_progress_without_a_terminal(tmp_path):
    model = tmp_path / "m.lrp.onnx"
    assert CliRunner().invoke(main, ["convert", str(DEMO / "model.onnx"), "-o", str(model)]).exit_code == 0
    images = sorted((DEMO / "images").glob("*.png"))[:3]
    result = CliRunner().invoke(main, ["evaluate", str(model), *map(str, images), "--metrics", "deletion",
                                       "--out", str(tmp_path / "ev"), "--no-plots", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "evaluated 2 of 3 images" in result.output and "evaluated 3 of 3 images" in result.output
