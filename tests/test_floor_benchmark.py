"""benchmarks/floor.py counts multiply-adds from the shapes onnxruntime's profiler reports: checked against the
textbook formulas on a graph with a grouped strided Conv, a strided ConvTranspose, a transposed Gemm and a
batched MatMul, and end to end on a converted model (the epsilon rule's adjoints double the forward's count)."""

import collections
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import lrpgraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from floor import macs, profiled_nodes  # noqa: E402

BASIC = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def counted(model, x):
    """{op type: multiply-adds of its nodes}, dense ops only."""
    total = collections.Counter()
    for (_, op), (_, node_args) in profiled_nodes({"model": model}, x, 1, BASIC, 0)["model"].items():
        total[op] += macs(op, node_args)
    return {op: n for op, n in total.items() if n}


def save(tmp_path, graph):
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_dense_ops_are_counted_by_their_formulas(tmp_path):
    rng = np.random.default_rng(0)
    weights = {"wc": (8, 2, 3, 3), "wt": (8, 3, 5, 5), "wg": (10, 288), "wm": (2, 6)}
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),  # [2, 8, 6, 6]
             helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2]),  # [2, 3, 15, 15]
             helper.make_node("Flatten", ["c"], ["f"]),  # [2, 288]
             helper.make_node("Gemm", ["f", "wg"], ["g"], transB=1),  # [2, 10]
             helper.make_node("Reshape", ["g", "shape"], ["gr"]),  # [2, 5, 2]
             helper.make_node("MatMul", ["gr", "wm"], ["m"])]  # [2, 5, 6]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k) for k, s in weights.items()]
    inits.append(numpy_helper.from_array(np.array([2, 5, 2], np.int64), "shape"))
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 12, 12])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("t", "m")], inits)
    got = counted(save(tmp_path, graph), rng.standard_normal((2, 4, 12, 12)).astype(np.float32))
    assert got == {"Conv": 2 * 8 * 6 * 6 * (4 // 2) * 3 * 3,  # N * C_out * H_out * W_out * C_in / group * kH * kW
                   "ConvTranspose": 2 * 8 * 6 * 6 * 3 * 5 * 5,  # every input element times C_out * kH * kW
                   "Gemm": 2 * 288 * 10, "MatMul": 2 * 5 * 2 * 6}


def test_the_epsilon_rule_doubles_the_forward_count(tmp_path):
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((6, 3, 3, 3)), rng.standard_normal((4, 6, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["b"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in (("w1", w1), ("w2", w2))])
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted = lrpgraph.convert(plain, composite="epsilon", target="top")
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    forward = sum(counted(plain.SerializeToString(), x).values())
    assert forward == 16 * 16 * 6 * 27 + 7 * 7 * 4 * 54
    assert sum(counted(converted.SerializeToString(), x).values()) == 2 * forward
