"""`lrpgraph inspect` on a converted model shows what it carries (composite, rule per node with the zbox
bounds, target mode and its input, preprocessing, labels, inputs and outputs named by what they are); on a
plain model it names an upgraded opset, and its advice names only options inspect accepts."""

import re
from pathlib import Path

import onnx
from click.testing import CliRunner
from onnx import helper

from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR

DEMO = Path(DEMO_DIR)


def test_inspect_shows_the_record_of_a_converted_model(tmp_path):
    runner = CliRunner()
    model = tmp_path / "m.lrp.onnx"
    done = runner.invoke(main, ["convert", str(DEMO / "model.onnx"), "-o", str(model), "--composite",
                                "epsilon-gamma-box", "--target", "index", "--labels", str(DEMO / "labels.txt"),
                                "--mean", "0.5", "--std", "0.5"])
    assert done.exit_code == 0, done.output
    shown = runner.invoke(main, ["inspect", str(model)])
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "heatmaps: relevance = LRP composite epsilon-gamma-box (target index)" in text
    assert "int64 input 'target' [N]" in text and re.search(r"logits +\[batch, 10\] +logits", text)
    assert re.search(r"relevance +\[batch, 1, 28, 28\] +heatmap \(epsilon-gamma-box\)", text)
    assert "minus mean [0.5], divided by std [0.5]" in text and "labels: 10 (T-shirt/top" in text
    assert re.search(r"node_Conv_70 +zbox:", text) and re.search(r"node_linear +epsilon:1e-06", text)


def test_inspect_says_the_opset_was_upgraded_and_advises_accepted_options(tmp_path):
    import numpy as np
    from onnx import TensorProto, numpy_helper

    weight = numpy_helper.from_array(np.ones((3, 12), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"],
                                                                                          transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), tmp_path / "op15.onnx")
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "op15.onnx")])
    assert shown.exit_code == 0 and "opset 17 (upgraded from 15)" in shown.output, shown.output
    dynamic = onnx.load(DEMO / "model.onnx")  # symbolic height and width: inspect advises --image-size ...
    for d, name in zip(dynamic.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        d.dim_param = name
    for value in list(dynamic.graph.value_info):
        dynamic.graph.value_info.remove(value)
    onnx.save(dynamic, tmp_path / "dyn.onnx")
    advised = CliRunner().invoke(main, ["inspect", str(tmp_path / "dyn.onnx")])
    flags = set(re.findall(r"--[a-z][a-z-]+", advised.output))
    assert advised.exit_code == 2 and "--image-size" in flags, advised.output
    accepted = {o for p in main.commands["inspect"].params for o in p.opts}
    assert flags <= accepted, flags - accepted  # every option it advises, inspect takes
    fixed = CliRunner().invoke(main, ["inspect", str(tmp_path / "dyn.onnx"), "--image-size", "28,28"])
    assert fixed.exit_code == 0, fixed.output


def test_inspect_names_the_k_targets_of_a_model_converted_from_a_tensor(tmp_path):
    runner = CliRunner()
    model = tmp_path / "k.lrp.onnx"
    logits = onnx.load(str(DEMO / "model.onnx")).graph.output[0].name
    done = runner.invoke(main, ["convert", str(DEMO / "model.onnx"), "-o", str(model), "--from", logits,
                                "--target", "index"])
    assert done.exit_code == 0, done.output
    text = runner.invoke(main, ["inspect", str(model)]).output
    assert "K index tuples per sample into the explained tensor" in text and "the class to explain" not in text
    assert re.search(r"target +\[\S+, \S+, 1\] +targets per sample", text), text
    assert re.search(rf"{re.escape(logits)} +\[[^]]*\] +explained output \(the targets index into it\)", text), text
