"""Output paths in a folder someone else can write to (issue 25): writes never follow a symlink planted at or
near the destination, output names derived from input names stay under --out, and --force deletes only what
lrpgraph wrote. On lrpgraph before these checks: save's external-data '.partial' file and write_optimized's
'.tmp' were opened through a planted symlink (creating or overwriting a file elsewhere), evaluate's curve
plots were written through a planted link, explain wrote through an output sub-folder linked elsewhere, and
`web --force` deleted a folder holding model.json and app.js with whatever else it held."""

import os
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR
from lrpgraph.pipeline import convert
from lrpgraph.errors import LrpgraphError
from lrpgraph.files import inside, optimized_path, save, write_optimized
from lrpgraph.web import ORT_FILES
from test_cli import assert_one_line_error

DEMO = Path(DEMO_DIR)
IMAGE = next((DEMO / "images").glob("*.png"))
VICTIM = b"not yours to overwrite"


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def converted():
    return convert(onnx.load(DEMO / "model.onnx"))


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "elsewhere" / "victim.bin"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


def test_save_never_writes_through_planted_links(tmp_path, converted, victim):
    out = tmp_path / "out"
    out.mkdir()
    path = out / "model.lrp.onnx"
    created = tmp_path / "elsewhere" / "created.bin"
    os.symlink(created, out / "model.lrp.onnx.data.partial")  # a dangling link where the data was staged
    os.symlink(victim, path)
    os.symlink(victim, out / "model.lrp.onnx.data")
    model = onnx.ModelProto()
    model.CopyFrom(converted)
    save(model, path, force=True, external=True)
    assert victim.read_bytes() == VICTIM and not created.exists()
    assert not path.is_symlink() and not (out / "model.lrp.onnx.data").is_symlink()
    assert onnx.load(path).graph.initializer  # the external data is read back from the folder


def test_write_optimized_never_writes_through_a_planted_link(tmp_path, converted, victim):
    path = tmp_path / "model.lrp.onnx"
    save(converted, path)
    os.symlink(victim, optimized_path(path) + ".tmp")
    write_optimized(path, repeats=1)
    assert victim.read_bytes() == VICTIM


def test_explain_never_leaves_out_through_a_linked_sub_folder(tmp_path, victim):
    model = tmp_path / "model.lrp.onnx"
    assert cli("convert", DEMO / "model.onnx", "-o", model)[0] == 0
    (tmp_path / "images" / "cats").mkdir(parents=True)
    (tmp_path / "images" / "cats" / "a.png").write_bytes(IMAGE.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim.parent, out / "cats")
    code, output = cli("explain", model, tmp_path / "images", "-o", out, "-q")  # after the providers line
    assert code == 2 and output.strip().splitlines()[-1].startswith("lrpgraph: error:") and "symlink" in output
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.bin"]
    os.remove(out / "cats")
    (out / "cats").mkdir()
    os.symlink(victim, out / "cats" / "a.relevance.png")  # a planted link at the file itself is replaced
    assert cli("explain", model, tmp_path / "images", "-o", out, "-q")[0] == 0
    assert victim.read_bytes() == VICTIM and not (out / "cats" / "a.relevance.png").is_symlink()


def test_evaluate_curves_never_follow_a_planted_link(tmp_path, victim):
    pytest.importorskip("matplotlib")
    model = tmp_path / "model.lrp.onnx"
    assert cli("convert", DEMO / "model.onnx", "-o", model)[0] == 0
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(IMAGE.read_bytes())
    (tmp_path / "ev" / "curves").mkdir(parents=True)
    os.symlink(victim, tmp_path / "ev" / "curves" / "a.curves.png")
    assert cli("evaluate", model, tmp_path / "images", "-o", tmp_path / "ev", "--metrics", "deletion")[0] == 0
    assert victim.read_bytes() == VICTIM and (tmp_path / "ev" / "curves" / "a.curves.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "/etc/x.png", "..\\x.png", "C:\\x.png"])
def test_output_names_from_archives_or_columns_cannot_leave_out(tmp_path, name):
    with pytest.raises(LrpgraphError, match="would leave"):
        inside(tmp_path, name)
    assert inside(tmp_path, "..%2F..%2Fx.png") == os.path.join(tmp_path, "..%2F..%2Fx.png")  # a plain name


@pytest.fixture
def ort_files(tmp_path, monkeypatch):
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ORT_FILES:
        (dist / name).write_text(f"// {name}")
    monkeypatch.setenv("LRPGRAPH_ORT_WEB", str(dist))


def test_web_force_deletes_only_what_it_wrote(tmp_path, ort_files):
    model = tmp_path / "model.lrp.onnx"
    assert cli("convert", DEMO / "model.onnx", "-o", model)[0] == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("model.json", "app.js", "thesis.tex"):
        (mine / name).write_text("the user's")
    assert_one_line_error(*cli("web", model, "-o", mine, "--force"), "is no lrpgraph site")
    assert (mine / "thesis.tex").read_text() == "the user's"
    site = tmp_path / "site"
    assert cli("web", model, "-o", site, "--samples", DEMO / "images")[0] == 0
    (site / "samples" / "notes.txt").write_text("the user's")
    assert_one_line_error(*cli("web", model, "-o", site, "--force"), "'samples/notes.txt'", "did not write")
    assert (site / "samples" / "notes.txt").exists()
    os.remove(site / "samples" / "notes.txt")
    assert cli("web", model, "-o", site, "--force")[0] == 0 and not (site / "samples").exists()


def test_bulk_runs_write_only_under_out_whatever_the_ids_and_names(tmp_path):
    """Bulk runs (issue 24's Parquet output): ids with '../', absolute paths or encoded slashes, in a Parquet id
    column and as image file names, stay data in the rows; every file written lies under --out."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    hostile = ["../../escaped.png", "..%2F..%2Fx.png", str(tmp_path / "abs.png"), "a/../../../up.png"]
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "..%2F..%2Fx.png").write_bytes(IMAGE.read_bytes())
    table = pa.table({"id": hostile, "image": [IMAGE.read_bytes()] * len(hostile), "path": hostile})
    pq.write_table(table, data / "records.parquet")
    model = tmp_path / "model.lrp.onnx"
    save(convert(onnx.load(DEMO / "model.onnx")), model)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "deep" / "out"
    for inputs in ([data / "records.parquet"], [data / "images" / "..%2F..%2Fx.png"]):  # a file given by name
        code, output = cli("explain", model, *inputs, "--out", out, "--format", "png", "-q", "--parquet", "--resume")
        assert code == 0, output
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == out or out in p.parents or p == out.parent for p in written), sorted(written)
    ids = pq.read_table(out / "rows").column("id").to_pylist()
    assert sorted(ids) == sorted(hostile + [str(data / "images" / "..%2F..%2Fx.png")])


def _shapes_left_open():
    """A model whose shapes onnxruntime's symbolic inference cannot complete (an op of an unknown domain)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["y"], domain="custom"), helper.make_node("Relu", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(300, np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])


def test_symbolic_shape_inference_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic inference saves 'sym_shape_infer_temp.onnx' and a '<uuid>.data' file into the
    current directory when it cannot infer every shape (the 10,000-case fuzz run left ten of them in the
    repository); lrpgraph runs it where that lands in a temporary directory."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from lrpgraph import shapes, symbolic

    model = _shapes_left_open()
    monkeypatch.chdir(tmp_path)
    assert symbolic.infer(model) is None and shapes.symbolic_shapes(model) == {}
    assert os.listdir(tmp_path) == []
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):  # what it does by itself
        SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    assert "sym_shape_infer_temp.onnx" in os.listdir(tmp_path)
