"""`lrpgraph convert --optimize`: onnxruntime's optimised copy of a converted model gives the same heatmap,
keeps the metadata, and is only kept when it loads faster; the emitted relevance path is exact."""

import os

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import lrpgraph
from lrpgraph.cli import main
from lrpgraph.files import optimized_path, write_optimized
from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.session import ExplainSession
from zennit_ref import export


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 5))
    path = tmp_path_factory.mktemp("optimize") / "cnn.onnx"
    export(net.eval(), torch.rand(2, 3, 32, 32), str(path))
    return path


def test_optimized_copy_gives_the_same_heatmap(cnn_file, tmp_path):
    converted = tmp_path / "cnn.lrp.onnx"
    onnx.save(lrpgraph.convert(str(cnn_file), composite="epsilon-plus"), str(converted))
    plain, fast, kept = write_optimized(converted)
    out = optimized_path(converted)
    assert out == str(tmp_path / "cnn.lrp.ort.onnx") and plain > 0 and fast > 0
    assert kept == os.path.exists(out) and kept == (fast < plain)
    assert not os.path.exists(out + ".tmp")
    if kept:
        x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
        a, b = ExplainSession(str(converted), provider="cpu"), ExplainSession(out, provider="cpu")
        assert b.config == a.config
        np.testing.assert_allclose(b.explain(x)[1], a.explain(x)[1], rtol=1e-6, atol=1e-9)
        with pytest.raises(LrpgraphError, match="exists; pass --force"):
            write_optimized(converted)


def test_cli_optimize(cnn_file, tmp_path):
    output = tmp_path / "out.lrp.onnx"
    result = CliRunner().invoke(main, ["convert", str(cnn_file), "-o", str(output), "--optimize"])
    assert result.exit_code == 0, result.output
    assert ("wrote " + optimized_path(output)) in result.output or "kept no optimised copy" in result.output
