"""Pattern units: a LayerNorm written out in elementary ops fuses into one unit, and one written in a form that
does not fuse is a near-miss whose reason names the node and what was expected, both from `fuse` and in the
output of `lrpgraph inspect`."""

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from lrpgraph.canonicalize import canonicalize
from lrpgraph.cli import main
from lrpgraph.patterns.fusions import fuse

EPS = 1e-5


def written_out_norm(eps=(EPS,), var_axes=(-1,), extra_reader=False):
    """x [N, 8] -> (x - mean) / sqrt(mean((x - mean)^2) + eps) * gamma + beta -> MatMul -> logits [N, 3]; with
    extra_reader, the squared deviation is also added to the normalised values (read outside the norm)."""
    rng = np.random.default_rng(0)
    consts = {"eps": np.array(eps, np.float32).reshape(() if len(eps) == 1 else (len(eps),)),
              "two": np.array(2.0, np.float32), "gamma": rng.normal(size=8).astype(np.float32),
              "beta": rng.normal(size=8).astype(np.float32), "w": rng.normal(size=(8, 3)).astype(np.float32)}
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], name="mean", axes=[-1]),
             helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
             helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
             helper.make_node("ReduceMean", ["sq"], ["var"], name="var", axes=list(var_axes)),
             helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
             helper.make_node("Sqrt", ["var_eps"], ["std"], name="sqrt"),
             helper.make_node("Div", ["d", "std"], ["normed"], name="div"),
             helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="scale"),
             helper.make_node("Add", ["scaled", "beta"], ["shifted"], name="shift")]
    last = "shifted"
    if extra_reader:
        nodes.append(helper.make_node("Add", ["shifted", "sq"], ["mixed"], name="extra"))
        last = "mixed"
    nodes.append(helper.make_node("MatMul", [last, "w"], ["logits"], name="fc"))
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def inspect_output(model, tmp_path):
    path = tmp_path / "norm.onnx"
    onnx.save(model, path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    return result.exit_code, result.output


def test_a_written_out_layer_norm_fuses(tmp_path):
    canon = canonicalize(written_out_norm())
    norm = next(u for u in canon.units if u.op == "LayerNormalization")
    assert norm.inputs == ["x", "gamma", "beta"] and norm.outputs == ["shifted"]
    assert norm.attrs["axes"] == [-1] and abs(norm.attrs["epsilon"] - EPS) < 1e-12
    assert canon.near_misses == []
    code, output = inspect_output(written_out_norm(), tmp_path)
    assert code == 0, output
    assert "not fused" not in output and "LayerNormalization" in output


def test_fuse_returns_near_misses_with_their_reason():
    model = written_out_norm(eps=(EPS, EPS))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes, near_misses = fuse(list(model.graph.node), inits)
    assert len(nodes) == len(model.graph.node)  # nothing fused
    assert ("div", "LayerNorm",
            "the epsilon 'eps' that Add 'add_eps' adds is not a scalar (shape [2])") in near_misses


def test_inspect_says_why_a_norm_with_a_vector_epsilon_did_not_fuse(tmp_path):
    code, output = inspect_output(written_out_norm(eps=(EPS, EPS)), tmp_path)
    assert code == 2  # Pow and Sqrt alone are not explained
    assert "not fused: LayerNorm at 'div': the epsilon 'eps' that Add 'add_eps' adds is not a scalar " \
           "(shape [2])" in output.splitlines()


def test_inspect_says_why_a_norm_over_other_axes_did_not_fuse(tmp_path):
    """The variance over axis 1, the mean over -1: no LayerNorm (the division still reads as an RMSNorm of the
    deviation, so the model converts)."""
    code, output = inspect_output(written_out_norm(var_axes=(1,)), tmp_path)
    assert code == 0, output
    assert "not fused: LayerNorm at 'div': the variance's ReduceMean 'var' reduces axes [1] but the mean's " \
           "ReduceMean 'mean' reduces [-1]" in output.splitlines()
    assert "LayerNormalization" not in output


def test_inspect_says_why_a_norm_read_inside_did_not_fuse(tmp_path):
    code, output = inspect_output(written_out_norm(extra_reader=True), tmp_path)
    assert code == 2
    assert "not fused: LayerNorm at 'div': 'sq' (from Pow 'pow') is also read outside the pattern, by Add " \
           "'extra'" in output.splitlines()


def chain(nodes, consts, out):
    """A model of nodes reading x [2, 8] and the constants {name: value}, whose output out [2, 8] is the
    explained tensor."""
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 8])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_an_rms_norm_by_reciprocal_fuses_with_no_near_miss():
    """x * (1 / Sqrt(ReduceMean(x * x) + eps)) * w: the division 1 / Sqrt inside it, which alone would read as
    an RMSNorm of the constant 1, is no near-miss once the whole fuses."""
    n = helper.make_node
    model = chain([n("Mul", ["x", "x"], ["sq"], name="sq"), n("ReduceMean", ["sq"], ["ms"], name="ms", axes=[-1]),
                   n("Add", ["ms", "eps"], ["ms_eps"], name="add"), n("Sqrt", ["ms_eps"], ["rms"], name="sqrt"),
                   n("Div", ["one", "rms"], ["inv"], name="inv"), n("Mul", ["x", "inv"], ["normed"], name="norm"),
                   n("Mul", ["normed", "w"], ["y"], name="scale")],
                  {"eps": EPS, "one": 1.0, "w": np.full(8, 2.0)}, "y")
    canon = canonicalize(model)
    assert [(u.op, u.inputs, u.outputs) for u in canon.units] == [("RMSNormalization", ["x", "w"], ["y"])]
    assert canon.units[0].attrs["axes"] == [-1] and abs(canon.units[0].attrs["epsilon"] - EPS) < 1e-12
    assert canon.near_misses == []


def test_a_gelu_with_another_factor_is_a_near_miss():
    """(1 + Erf(x / sqrt 2)) * x * 0.7 is not a GELU: the reason names the Mul and its factor."""
    n = helper.make_node
    model = chain([n("Div", ["x", "root2"], ["xs"], name="scaled"), n("Erf", ["xs"], ["e"], name="erf"),
                   n("Add", ["e", "one"], ["e1"], name="plus_one"), n("Mul", ["e1", "x"], ["ex"], name="times_x"),
                   n("Mul", ["ex", "c"], ["y"], name="times_c")],
                  {"root2": np.sqrt(2.0), "one": 1.0, "c": 0.7}, "y")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes, near_misses = fuse(list(model.graph.node), inits)
    assert [node.op_type for node in nodes] == ["Div", "Erf", "Add", "Mul", "Mul"]
    assert near_misses == [("erf", "GELU", "Mul 'times_c' multiplies by 'c', not by x, 0.5 or x * 0.5 (x = 'x')")]
