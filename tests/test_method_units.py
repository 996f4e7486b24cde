"""Adding a gradient-family method takes one unit and one registration: this file registers `gradient-power`
(|dy_c/dx|^p with an option `power` of its own) and nothing else, and the method is then on the command line
(`--method`, `--explain NAME=gradient-power`, `--help`), its option is range-checked and refused for the other
methods, and its heatmap equals torch autograd's (float64) on a small model run in onnxruntime."""

import copy
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from zennit_ref import export

import lrpgraph
from lrpgraph.cli import main
from lrpgraph.methods import METHODS, MethodOptions, Option, method, unregister
from lrpgraph.methods.gradient import gradient_of
from test_cli import assert_one_line_error

NAME = "gradient-power"
POWER = Option("power", 2.0, float, "gradient-power: the exponent p of |dy_c/dx|^p", minimum=0,
               meaning="the exponent p", example="2")


def gradient_power(b, model, canon, seed, options, walk):
    """|dy_c/dx|^power, elementwise."""
    grad = gradient_of(b, canon, seed, walk)
    return b.op("Pow", [b.op("Abs", [grad], "abs"), b.const(float(options.power))], "power"), []


@pytest.fixture
def registered():
    """The one registration; undone afterwards so that no other test sees the method or its option."""
    method(NAME, options=(POWER,), per_token="norm")(gradient_power)
    yield NAME
    unregister(NAME)
    assert NAME not in METHODS and "power" not in MethodOptions.names()


def small_net():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.fixture
def model_path(tmp_path):
    net, x = small_net(), torch.zeros(2, 1, 6, 6)
    buffer = io.BytesIO()
    try:
        torch.onnx.export(net, (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17)
        data = buffer.getvalue()
    except Exception:  # the legacy exporter may be gone in a later torch
        data = export(net, x)
    path = tmp_path / "net.onnx"
    path.write_bytes(data)
    return path


def reference(x, power):
    """|dy_c/dx|^power of the predicted class c, by torch autograd in float64."""
    net = copy.deepcopy(small_net()).double()
    x64 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits = net(x64)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    return x64.grad.abs().numpy() ** power


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def relevance(path, output):
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return x, session.run([output], {"x": x})[0]


def l1(a, b):
    return float(np.abs(a - b).sum() / np.abs(b).sum())


def test_the_method_converts_from_the_command_line(registered, model_path, tmp_path):
    out = tmp_path / "power.lrp.onnx"
    code, output = run("convert", model_path, "-o", out, "--method", NAME, "--power", "3")
    assert code == 0, output
    x, heat = relevance(out, "relevance")
    assert l1(heat, reference(x, 3.0)) < 1e-5
    both = tmp_path / "both.lrp.onnx"
    code, output = run("convert", model_path, "-o", both, "--explain", f"p={NAME}", "--explain", "g=gradient")
    assert code == 0, output
    x, heat = relevance(both, "relevance_p")
    assert l1(heat, reference(x, POWER.default)) < 1e-5
    # the Python API takes the option as a keyword too, and gives the same model as the command line
    assert lrpgraph.convert(str(model_path), method=NAME, power=3.0).SerializeToString() == \
        onnx.load(str(out)).SerializeToString()


def test_the_method_and_its_option_are_in_help(registered):
    code, output = run("convert", "--help")
    assert code == 0 and NAME in output and "--power" in output and "exponent p" in output


@pytest.mark.parametrize("args, needles", [
    (["--method", NAME, "--power", "-1"], ["--power -1", "is negative", "the exponent p >= 0"]),
    (["--method", NAME, "--power", "nan"], ["--power", "finite"]),
    (["--method", "ig", "--power", "3"], ["--power is ignored by ig", "read only by gradient-power"]),
    (["--method", NAME, "--steps", "4"], ["--steps is ignored by gradient-power"]),
])
def test_its_option_is_checked(registered, model_path, tmp_path, args, needles):
    out = tmp_path / "out.lrp.onnx"
    code, output = run("convert", model_path, "-o", out, *args)
    assert_one_line_error(code, output, *needles)
    assert not out.exists()


def test_a_name_is_registered_once(registered):
    with pytest.raises(ValueError, match="registered already"):
        method(NAME)(gradient_power)
    with pytest.raises(ValueError, match="option 'steps' unlike"):
        method("other", options=(Option("steps", 5, int),))(gradient_power)
