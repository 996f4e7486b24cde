"""The public API: every name README's Python code shows imports from the path it shows, and the
packaging promises (extras, licence, no unused dependency) hold."""

import importlib
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest

import lrpgraph

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def shown_imports():
    """(module, name or None) for every `from M import a, b` and `import M` in README's Python blocks."""
    found = []
    for block in PYTHON_BLOCKS:
        for module, names in re.findall(r"^\s*from\s+([\w.]+)\s+import\s+([\w, ]+)", block, flags=re.M):
            found += [(module, n.strip()) for n in names.split(",") if n.strip()]
        found += [(m, None) for m in re.findall(r"^\s*import\s+([\w.]+)\s*$", block, flags=re.M)]
    return found


def shown_attributes():
    """Every dotted name lrpgraph.a.b... that README's Python blocks use."""
    return sorted({m for block in PYTHON_BLOCKS for m in re.findall(r"\blrpgraph(?:\.\w+)+", block)})


def test_readme_shows_the_public_api():
    imports = shown_imports()
    assert ("lrpgraph.runtime", "ExplainSession") in imports
    assert {("lrpgraph.train", n) for n in ("import_onnx", "ISNetLoss", "train")} <= set(imports)
    assert {"lrpgraph.convert", "lrpgraph.save", "lrpgraph.ExplainSession"} <= set(shown_attributes())


@pytest.mark.parametrize("module, name", shown_imports())
def test_every_import_readme_shows_works(module, name):
    imported = importlib.import_module(module)
    if name is not None:
        assert getattr(imported, name) is not None


@pytest.mark.parametrize("dotted", shown_attributes())
def test_every_attribute_readme_shows_exists(dotted):
    parts = dotted.split(".")
    value = importlib.import_module(parts[0])
    for part in parts[1:]:
        value = getattr(value, part)
    assert value is not None


def test_convert_is_the_pipeline_function_and_save_the_files_one(tmp_path):
    from test_cli import small_cnn

    from lrpgraph import pipeline

    assert lrpgraph.files.save is lrpgraph.save and lrpgraph.convert is pipeline.convert
    model = lrpgraph.convert(small_cnn(), composite="epsilon")
    path = tmp_path / "m.lrp.onnx"
    lrpgraph.save(model, path)
    with pytest.raises(lrpgraph.LrpgraphError, match="exists"):
        lrpgraph.save(model, path)
    session = lrpgraph.ExplainSession(str(path))
    logits, relevance = session.explain(np.random.default_rng(0).random((2, 2, 6, 6), dtype=np.float32))
    assert logits.shape == (2, 3) and relevance.shape == (2, 2, 6, 6)
    assert onnx.load(path).graph.output[-1].name == "relevance"


def test_train_names_are_the_implementations():
    from lrpgraph.train import ISNetLoss, TrainConfig, import_onnx, train
    from lrpgraph.train.config import TrainConfig as config
    from lrpgraph.train.importer import import_onnx as importer
    from lrpgraph.train.loop import train as loop
    from lrpgraph.train.loss import ISNetLoss as loss

    assert (import_onnx, ISNetLoss, train, TrainConfig) == (importer, loss, loop, config)
    with pytest.raises(AttributeError):
        importlib.import_module("lrpgraph.train").no_such_name


def test_packaging_promises():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    base = " ".join(project["project"]["dependencies"])
    assert "onnxruntime" not in base and "graphsurgeon" not in base
    extras = project["project"]["optional-dependencies"]
    assert extras["cpu"] == [d for d in extras["cpu"] if d.startswith("onnxruntime")] and extras["cpu"]
    gpu = [d for d in extras["gpu"] if d.startswith("onnxruntime-gpu==")]
    assert gpu and gpu[0].split("==")[1] in README  # README names the pinned version and its CUDA / cuDNN
    assert not any("onnxruntime" in d for d in extras["test"] + extras["train"])  # never both builds
    assert project["project"]["license"] == "MIT" and all((ROOT / f).exists()
                                                          for f in project["project"]["license-files"])
    assert all("onnx_graphsurgeon" not in p.read_text() for p in (ROOT / "lrpgraph").rglob("*.py"))


def test_importing_lrpgraph_needs_no_onnxruntime_or_torch():
    import subprocess

    code = ("import sys; sys.modules['onnxruntime'] = None; sys.modules['torch'] = None; import lrpgraph, "
            "lrpgraph.train, lrpgraph.runtime; from lrpgraph.runtime.images import load_image; print('ok')\n"
            "for module, name in (('lrpgraph.train', 'import_onnx'), ('lrpgraph', 'ExplainSession')):\n"
            "    try:\n        getattr(__import__(module, fromlist=[name]), name)\n"
            "    except ImportError as error:\n        print(type(error).__name__, error)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    lines = done.stdout.splitlines()
    assert lines[0] == "ok" and len(lines) == 3, done.stdout + done.stderr
    assert lines[1].startswith("MissingDependencyError") and "pip install 'lrpgraph[train]'" in lines[1]
    assert lines[2].startswith("MissingDependencyError") and "pip install 'lrpgraph[cpu]'" in lines[2]
