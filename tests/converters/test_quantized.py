"""Quantized (QDQ) models from onnxruntime.quantization.quantize_static: the pretrained digit CNN (per-tensor
and per-channel, uint8 and int8, calibrated on real digits) and a ResNet-18 (int8, 64 px). The converted
model's logits are the quantized model's bit for bit (onnxruntime still fuses its int8 kernels), and its
relevance equals zennit's rules on the dequantized weights and the int8 model's own activations (qdq_ref)."""

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from qdq_ref import qdq_relevance, quantize
from zennit_ref import digit_model, real_digits, zennit_composite

from lrpgraph.pipeline import convert

LIMIT = 1e-5  # L1 relative to the reference, float32 against float64


def export(net, example, path):
    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (example,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}})
    path.write_bytes(buffer.getvalue())
    return path


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x})))


def l1(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).sum() / np.abs(ref).sum())


def check(source, quantized, x, what):
    converted = convert(str(quantized))
    out, plain = run(converted, x), run(quantized, x)
    np.testing.assert_array_equal(out["logits"], plain["logits"])  # the forward stays int8: bit-identical
    ref_logits, ref = qdq_relevance(quantized, x, zennit_composite("epsilon-plus"))
    np.testing.assert_array_equal(ref_logits.argmax(1), plain["logits"].argmax(1))  # the class explained
    error = l1(out["relevance"], ref)
    float_heatmap = run(convert(str(source)), x)["relevance"]
    to_float = l1(out["relevance"], float_heatmap)
    print(f"{what}: L1 to the reference {error:.2e}; to the float model's heatmap {to_float:.3f}")
    assert np.abs(ref).sum() > 0 and error <= LIMIT, (what, error)
    quantized_ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= quantized_ops


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qdq_digits")
    x, _ = real_digits(40)
    return export(digit_model(), x[:1], folder / "digits.onnx"), x.numpy()


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("activations", ["QUInt8", "QInt8"])
def test_digit_cnn(digits, tmp_path, per_channel, activations):
    source, x = digits
    quantized = quantize(source, tmp_path / "q.onnx", x[8:], per_channel, activations)  # calibration: 32 digits
    check(source, quantized, x[:8], f"digit CNN {activations} {'per-channel' if per_channel else 'per-tensor'}")


def test_resnet18_int8(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for module in net.modules():  # BatchNorm statistics away from the identity
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    x = torch.rand(12, 3, 64, 64).numpy()
    source = export(net, torch.from_numpy(x[:1]), tmp_path / "r18.onnx")
    quantized = quantize(source, tmp_path / "r18_int8.onnx", x[4:], per_channel=True, activations="QInt8")
    check(source, quantized, x[:4], "ResNet-18 int8 per-channel")


def qdq_cnn():
    """x -> Conv (int8 weights through DequantizeLinear) -> Add (int32 bias through DequantizeLinear) -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm: the bias is a constant only once its DequantizeLinear is folded."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, size=(4, 2, 3, 3)).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
             numpy_helper.from_array(rng.integers(-500, 500, size=(1, 4, 1, 1)).astype(np.int32), "b_q"),
             numpy_helper.from_array(np.array(0.001, np.float32), "b_scale"),
             numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], name="w_dq"),
             helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="b_dq"),
             helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_inspect_reads_the_dequantized_view(tmp_path):
    """`lrpgraph inspect` on a QDQ model reads the view convert explains: the dequantized bias folds into the
    Conv (no Add unit of its own), and the units and rules it lists are those the converted model records."""
    from click.testing import CliRunner

    from lrpgraph import metadata
    from lrpgraph.cli import main

    path = tmp_path / "qdq.onnx"
    onnx.save(qdq_cnn(), path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    listed = [line.split() for line in result.output.split("rule of each node:\n")[1].splitlines()]
    assert listed[0][:3] == ["conv", "Conv", "zplus"] and listed[0][-1] == "(+bias)", result.output
    assert "Add" not in [row[1] for row in listed]
    recorded = metadata.Record.from_model(convert(str(path))).rules
    assert {row[0]: row[2] for row in listed} == recorded
