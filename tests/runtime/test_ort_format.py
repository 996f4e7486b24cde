"""`lrpgraph convert --format ort`: the ORT-format model (onnxruntime's mobile format) and its
required-operators config; the .ort file loads in onnxruntime and gives the .onnx file's logits and relevance."""

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from click.testing import CliRunner

from lrpgraph.cli import main
from lrpgraph.runtime.images import list_images, load_image
from lrpgraph.runtime.session import ExplainSession

DEMO = Path(__file__).resolve().parents[2] / "lrpgraph" / "data" / "demo"


def convert_ort(source, *args):
    result = CliRunner().invoke(main, ["convert", str(source), "--format", "ort", *map(str, args)])
    return result.exit_code, result.output


def same_outputs(onnx_path, ort_path, batch):
    """Bit for bit against the .onnx file run with the optimisations the ORT file was written with (all but the
    x86-only NCHWc layout); within float rounding against the .onnx file with all of this machine's."""
    logits_ort, relevance_ort = ExplainSession(str(ort_path), provider="cpu").explain(batch)
    plain = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"],
                                 disabled_optimizers=["NchwcTransformer"])
    logits, relevance = plain.run(["logits", "relevance"], {plain.get_inputs()[0].name: batch})
    np.testing.assert_array_equal(logits_ort, logits)
    np.testing.assert_array_equal(relevance_ort, relevance)
    assert np.abs(relevance).sum() > 0
    logits, relevance = ExplainSession(str(onnx_path), provider="cpu").explain(batch)
    assert np.abs(logits_ort - logits).max() <= 1e-5 * np.abs(logits).max()
    assert np.abs(relevance_ort - relevance).sum() <= 1e-5 * np.abs(relevance).sum()


def test_demo_model(tmp_path):
    shutil.copyfile(DEMO / "model.onnx", tmp_path / "model.onnx")
    code, output = convert_ort(tmp_path / "model.onnx", "--composite", "epsilon-plus")
    assert code == 0, output
    ort_path, config = tmp_path / "model.lrp.ort", tmp_path / "model.lrp.required_operators.config"
    assert ort_path.read_bytes()[4:8] == b"ORTM"  # the flatbuffer identifier of ORT-format models
    lines = config.read_text().splitlines()
    assert lines[1] == "# - model.lrp.ort"
    ops = {op for line in lines if not line.startswith("#") for op in line.split(";")[2].split(",")}
    assert {"Conv", "ConvTranspose", "ScatterElements", "MaxPool", "Gemm"} <= ops
    batch = np.stack([load_image(f, None, [1, 28, 28]) for f in list_images(DEMO / "images")])
    same_outputs(tmp_path / "model.lrp.onnx", ort_path, batch)
    # a second run refuses to overwrite the .ort file and writes nothing
    (tmp_path / "model.lrp.onnx").unlink()
    before = ort_path.read_bytes()
    code, output = convert_ort(tmp_path / "model.onnx")
    assert code == 2 and "model.lrp.ort exists" in output and "Traceback" not in output
    assert not (tmp_path / "model.lrp.onnx").exists() and ort_path.read_bytes() == before


def test_resnet18(tmp_path):
    """A torchvision ResNet-18 (64 px input; BatchNorm, residual Add, MaxPool, global pooling)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    for module in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(net, (torch.rand(1, 3, 64, 64),), str(tmp_path / "r18.onnx"), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}})
    code, output = convert_ort(tmp_path / "r18.onnx", "--composite", "epsilon-gamma-box", "--labels",
                               DEMO / "labels.txt")
    assert code == 0, output
    assert ExplainSession(str(tmp_path / "r18.lrp.ort")).labels[0] == "T-shirt/top"
    batch = np.random.default_rng(0).uniform(0, 1, (3, 3, 64, 64)).astype(np.float32)
    same_outputs(tmp_path / "r18.lrp.onnx", tmp_path / "r18.lrp.ort", batch)
