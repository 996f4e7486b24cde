"""README's training snippet runs as written on what `lrpgraph train` writes (LRP-Flex, target seed)."""

import re
from pathlib import Path

import onnx
import torch
from fashion_data import tiny_cnn

from lrpgraph.train import isnet

README = Path(__file__).resolve().parents[2] / "README.md"


def test_training_snippet_works_on_the_trainer_output(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    snippet = next(b for b in blocks if "import_onnx(" in b)
    _, explained, _ = isnet.prepare(tiny_cnn(4), "selective")  # the explained model train starts from and writes
    (tmp_path / "runs" / "exp1").mkdir(parents=True)
    onnx.save(explained, tmp_path / "runs" / "exp1" / "model.lrp.onnx")
    monkeypatch.chdir(tmp_path)
    scope = {"images": torch.rand(3, 1, 32, 32), "labels": torch.tensor([0, 2, 3]),
             "masks": (torch.rand(3, 1, 32, 32) > 0.5).float()}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["relevance"].shape == (3, 1, 32, 32) and torch.isfinite(scope["loss"])
