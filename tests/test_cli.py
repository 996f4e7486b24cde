"""The command line: convert and inspect, and every bad input giving one clear line, exit code 2, no file."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph import metadata
from lrpgraph.cli import main


def small_cnn(middle_ops=("Relu",), input_type=TensorProto.FLOAT, input_shape=("N", 2, 6, 6)):
    """x -> Conv -> middle ops -> GlobalAveragePool -> Flatten -> Gemm -> logits [N, 3]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h0"], name="conv", pads=[1, 1, 1, 1])]
    for i, op in enumerate(middle_ops):
        nodes.append(helper.make_node(op, [f"h{i}"], [f"h{i + 1}"], name=f"{op.lower()}_{i}"))
    last = f"h{len(middle_ops)}"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", input_type, list(input_shape))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(small_cnn(), path)
    return path


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_one_line_error(code, output, *needles):
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lrpgraph: error:"), output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in output


def test_convert_writes_a_model_with_relevance(model_path):
    code, output = run("convert", model_path)
    assert code == 0, output
    out = model_path.with_suffix(".lrp.onnx")
    converted = onnx.load(out)
    onnx.checker.check_model(converted, full_check=True)
    config = metadata.read(converted)[metadata.CONFIG]
    assert config["composite"] == "epsilon-plus" and config["target"] == "top"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((5, 2, 6, 6), dtype=np.float32)
    logits, relevance = session.run(["logits", "relevance"], {"x": x})
    assert relevance.shape == x.shape and relevance.dtype == np.float32
    # the original output is unchanged
    plain = ort.InferenceSession(small_cnn().SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(plain.run(None, {"x": x})[0], logits)


def test_convert_options_reach_the_model(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    code, output = run("convert", model_path, "-o", out, "--composite", "epsilon-gamma-box", "--low", "-2.1",
                       "--high", "2.6", "--target", "index", "--rule", "Gemm=epsilon:0.25", "--rule", "conv=zplus")
    assert code == 0, output
    converted = onnx.load(out)
    config = metadata.read(converted)[metadata.CONFIG]
    assert config["rules"]["fc"] == "epsilon:0.25" and config["rules"]["conv"] == "zplus"
    assert config["options"]["low"] == -2.1 and config["options"]["high"] == 2.6
    target = next(i for i in converted.graph.input if i.name == "target")
    assert target.type.tensor_type.elem_type == TensorProto.INT64


def test_cli_offers_every_composite():
    from lrpgraph import cli, composites

    assert cli.COMPOSITE_NAMES == list(composites.COMPOSITES)


def test_inspect_lists_rules(model_path):
    code, output = run("inspect", model_path, "--composite", "epsilon-gamma-box")
    assert code == 0, output
    assert "zbox" in output and "[first layer]" in output and "epsilon" in output


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    code, output = run("convert", path)
    assert_one_line_error(code, output, str(path), "ONNX")
    assert not (tmp_path / "notes.lrp.onnx").exists()


def test_truncated_file(model_path, tmp_path):
    data = model_path.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    code, output = run("convert", path)
    assert_one_line_error(code, output, str(path))
    assert not (tmp_path / "cut.lrp.onnx").exists()


def test_truncated_bytes_are_one_error_everywhere_a_model_is_read(model_path):
    import lrpgraph
    from lrpgraph.errors import LrpgraphError
    from lrpgraph.metrics import Classifier
    from lrpgraph.train.importer import import_onnx

    cut = model_path.read_bytes()[:200]
    for read in (import_onnx, Classifier, lrpgraph.convert):
        with pytest.raises(LrpgraphError, match="the given model bytes: not a readable ONNX model"):
            read(cut)


def test_missing_file(tmp_path):
    code, output = run("convert", tmp_path / "nope.onnx")
    assert_one_line_error(code, output, "nope.onnx", "no such file")


def test_no_float_image_input(tmp_path):
    path = tmp_path / "ints.onnx"
    model = small_cnn()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    onnx.save(model, path)
    code, output = run("convert", path)
    assert_one_line_error(code, output, "no float32 image input", "x (INT64)")
    assert not (tmp_path / "ints.lrp.onnx").exists()


def test_unsupported_ops_are_all_named(tmp_path):
    path = tmp_path / "odd.onnx"
    onnx.save(small_cnn(middle_ops=("Cos", "Relu", "Sin", "Cos")), path)
    code, output = run("convert", path)
    assert_one_line_error(code, output, "Cos (cos_0, cos_3)", "Sin (sin_2)")
    assert not (tmp_path / "odd.lrp.onnx").exists()


def test_existing_output_needs_force(model_path):
    out = model_path.with_suffix(".lrp.onnx")
    out.write_bytes(b"keep me")
    code, output = run("convert", model_path)
    assert_one_line_error(code, output, "exists", "--force")
    assert out.read_bytes() == b"keep me"
    code, output = run("convert", model_path, "--force")
    assert code == 0, output
    onnx.checker.check_model(onnx.load(out))


@pytest.mark.parametrize("args, needle", [
    (["--rule", "Gemm"], "KEY=RULE"),
    (["--rule", "Nothing=zplus"], "no node, layer or op type 'Nothing'"),
    (["--rule", "Gemm=bogus"], "unknown rule 'bogus'"),
    (["--rule", "Relu=zplus"], "does not apply"),
    (["--rule", "Gemm=gamma:x"], "must be numbers"),
    (["--composite", "epsilon-alpha2-beta1", "--alpha", "3", "--beta", "1"], "alpha - beta = 1"),
])
def test_bad_rules(model_path, args, needle):
    code, output = run("convert", model_path, *args)
    assert_one_line_error(code, output, needle)
    assert not model_path.with_suffix(".lrp.onnx").exists()


def test_rule_by_layer_path(tmp_path):
    """torch exporters name weights after module paths: '/fc' and 'fc' address the Gemm via its weight."""
    model = small_cnn()
    for init in model.graph.initializer:
        if init.name == "fc":
            init.name = "classifier.fc.weight"
    for node in model.graph.node:
        node.input[:] = ["classifier.fc.weight" if t == "fc" else t for t in node.input]
    path = tmp_path / "named.onnx"
    onnx.save(model, path)
    code, output = run("inspect", path, "--rule", "/classifier/fc=epsilon:0.5")
    assert code == 0, output
    assert "epsilon:0.5" in output


def test_converted_model_is_named_not_converted_again(model_path):
    """convert refuses a model lrpgraph already converted (one line, exit 2, naming the original's input and
    output and writing nothing); inspect says who converted it instead of listing its own ops."""
    assert run("convert", model_path, "--composite", "epsilon")[0] == 0
    converted = model_path.with_suffix(".lrp.onnx")
    code, output = run("convert", converted, "-o", model_path.parent / "again.onnx")
    assert_one_line_error(code, output, "already converted by lrpgraph", "composite epsilon", "input 'x'",
                          "output 'logits'")
    assert not (model_path.parent / "again.onnx").exists()
    code, output = run("inspect", converted)  # the record (tests/test_inspect_converted.py), not its own ops
    assert code == 0 and "op coverage" not in output, output
    assert f"converted by lrpgraph {lrpgraph.__version__} with composite epsilon" in output.splitlines()[0]
