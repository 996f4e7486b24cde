"""Bad input on the command line (issue 13's table): one line naming the value, what is allowed and what
to do, exit code 2, and no file written; values that would be silently ignored are refused too."""

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR
from test_cli import assert_one_line_error, small_cnn

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = Path(DEMO_DIR) / "model.onnx"
DEMO_LABELS = Path(DEMO_DIR) / "labels.txt"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(small_cnn(), path)
    return path


@pytest.mark.parametrize("args, needles", [
    (["--epsilon", "nan"], ["--epsilon", "finite"]),
    (["--epsilon", "inf"], ["--epsilon", "finite"]),
    (["--epsilon", "-1"], ["--epsilon", ">= 0"]),
    (["--stabilizer", "-1"], ["--stabilizer", "> 0"]),
    (["--stabilizer", "nan"], ["--stabilizer", "finite"]),
    (["-c", "epsilon-gamma-box", "--gamma", "-1"], ["--gamma", ">= 0"]),
    (["-c", "epsilon-gamma-box", "--low", "1", "--high", "0"], ["low 1", "high 0"]),
    (["-c", "epsilon-gamma-box", "--high", "inf"], ["--low/--high", "finite"]),
    (["-c", "epsilon-alpha2-beta1", "--alpha", "3"], ["alpha - beta = 1"]),
    (["-c", "flex", "--flex-epsilon", "0"], ["--flex-epsilon", "> 0"]),
    (["--method", "smoothgrad", "--noise-level", "-1"], ["--noise-level", ">= 0"]),
    (["--method", "smoothgrad", "--noise-level", "nan"], ["--noise-level", "finite"]),
    (["--rule", "Conv=zbox:1"], ["Conv=zbox:1", "low 1", "high 1"]),
    (["--rule", "Conv=zbox:0:nan"], ["Conv=zbox:0:nan", "finite"]),
    (["--rule", "Conv=gamma:-0.5"], ["gamma", ">= 0"]),
    (["--rule", "Gemm=epsilon:nan"], ["Gemm=epsilon:nan", "finite"]),
    # options that would be ignored
    (["--explain", "a=ig", "--explain", "a=zplus"], ["'a'", "twice"]),
    (["--steps", "5"], ["--steps", "ig"]),
    (["--method", "smoothgrad", "--steps", "5"], ["--steps", "smoothgrad"]),
    (["--method", "ig", "--samples", "4"], ["--samples"]),
    (["--method", "ig", "--composite", "zplus"], ["--method", "--composite"]),
    (["--method", "ig", "--epsilon", "0.1"], ["--epsilon", "ig"]),
    (["--method", "gradient", "--rule", "Conv=zplus"], ["--rule"]),
    (["--gamma", "0.5"], ["--gamma", "epsilon-gamma-box"]),
    (["--explain", "a=ig", "--method", "ig"], ["--method", "--explain"]),
    (["--scale", "0"], ["--scale", "> 0"]),
    (["--resize", "0"], ["--resize", "positive"]),
    (["--std", "0"], ["--std", "> 0"]),
])
def test_convert_refuses_bad_parameters(model_path, tmp_path, args, needles):
    out = tmp_path / "out.lrp.onnx"
    code, output = run("convert", model_path, "-o", out, *args)
    assert_one_line_error(code, output, *needles)
    assert not out.exists() and files_under(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize("args, needles", [
    (["--mean", "0.1", "--mean", "0.2", "--mean", "0.3"], ["--mean", "3 times", "1 channel"]),
    (["--mode", "RGB"], ["--mode RGB", "3 channel", "takes 1", "--mode L"]),
    (["--resize", "0"], ["--resize", "positive"]),
    (["--resize", "32"], ["32x32", "28x28"]),
    (["--crop", "20", "--resize", "28"], ["20x20", "28x28"]),
    (["--labels", "WRONG"], ["--labels", "3 class names", "10 classes"]),
])
def test_convert_refuses_preprocessing_the_model_cannot_take(tmp_path, args, needles):
    wrong = tmp_path / "three.txt"
    wrong.write_text("a\nb\nc\n")
    args = [str(wrong) if a == "WRONG" else a for a in args]
    out = tmp_path / "demo.lrp.onnx"
    code, output = run("convert", DEMO_MODEL, "-o", out, *args)
    assert_one_line_error(code, output, *needles)
    assert not out.exists()


def test_convert_refuses_bad_output_paths(model_path, tmp_path):
    before = model_path.read_bytes()
    for target, needles in ((model_path / "x.onnx", ["is a file, not a folder"]),
                            ("/proc/x.onnx", ["/proc/x.onnx", "choose another"])):
        code, output = run("convert", model_path, "-o", target)
        assert_one_line_error(code, output, "-o", *needles)
    code, output = run("convert", model_path, "-o", tmp_path)  # click's own usage error, exit 2
    assert code == 2 and "is a directory" in output and "Traceback" not in output
    code, output = run("convert", model_path, "-o", model_path, "--force")
    assert_one_line_error(code, output, "input model itself")
    assert model_path.read_bytes() == before and files_under(tmp_path) == ["model.onnx"]


@pytest.fixture(scope="module")
def demo_converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo.lrp.onnx"
    code, output = run("convert", DEMO_MODEL, "-o", out, "--labels", DEMO_LABELS, "--mode", "L")
    assert code == 0, output
    return out


def test_explain_and_demo_refuse_bad_output_folders(demo_converted, tmp_path):
    image = next(Path(DEMO_DIR, "images").glob("*.png"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for command in (["explain", demo_converted, image, "--out"], ["demo", "--out"]):
        for target, needles in ((a_file / "sub", ["is a file, not a folder"]),
                                ("/proc/foo", ["/proc/foo", "choose another"])):
            code, output = run(*command, target)
            output = "\n".join(line for line in output.splitlines() if not line.startswith("onnxruntime providers"))
            assert_one_line_error(code, output, "--out", *needles)
    assert files_under(tmp_path) == ["a_file"] and not os.path.exists("/proc/foo")


@pytest.mark.parametrize("args, needles", [
    (["--mean", "0.1", "--mean", "0.2", "--mean", "0.3"], ["--mean", "3 times"]),
    (["--mode", "RGB"], ["--mode RGB", "takes 1"]),
    (["--resize", "0"], ["--resize", "positive"]),
    (["--scale", "0"], ["--scale", "> 0"]),
])
def test_explain_refuses_preprocessing_overrides_the_model_cannot_take(demo_converted, tmp_path, args, needles):
    out = tmp_path / "out"
    code, output = run("explain", demo_converted, Path(DEMO_DIR) / "images", "--out", out, *args)
    lines = [line for line in output.splitlines() if not line.startswith("onnxruntime providers")]
    assert_one_line_error(code, "\n".join(lines), *needles)
    assert not out.exists()


def _run_without(module, *argv):
    """The CLI in a subprocess where `import module` fails, as in an install without it."""
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = ['lrpgraph'] + {list(map(str, argv))!r}; "
            "from lrpgraph.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_train_without_torch_says_which_extra_to_install(tmp_path):
    done = _run_without("torch", "train", tmp_path / "m.onnx", "--images", tmp_path, "--masks", tmp_path,
                        "--out", tmp_path / "run")
    assert_one_line_error(done.returncode, done.stdout + done.stderr, "torch", "pip install 'lrpgraph[train]'")
    assert not (tmp_path / "run").exists()


def test_explain_without_onnxruntime_says_which_extra_to_install(demo_converted, tmp_path):
    done = _run_without("onnxruntime", "explain", demo_converted, Path(DEMO_DIR) / "images", "--out", tmp_path / "o")
    assert_one_line_error(done.returncode, done.stdout + done.stderr, "onnxruntime", "lrpgraph[cpu]", "lrpgraph[gpu]")
    assert not (tmp_path / "o").exists()
