"""zero_params (zennit's zero_params=['bias']): the linear layers' biases left out of the rules, against zennit
in float64 on torchvision resnet18 (BatchNorm folded into the convolutions' biases)."""

import pytest
import torch
from click.testing import CliRunner
from zennit.composites import EpsilonGammaBox, EpsilonPlus

import lrpgraph
from lrpgraph import metadata
from zennit_ref import convert_bytes, export, l1, run_onnx, torchvision_model, zennit_relevance


def _zennit(name, canonizers):
    kw = dict(zero_params=["bias"], canonizers=list(canonizers), epsilon=1e-6, stabilizer=1e-6)
    return EpsilonPlus(**kw) if name == "epsilon-plus" else EpsilonGammaBox(low=0.0, high=1.0, **kw)


@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-gamma-box"])
def test_zero_params_bias_matches_zennit(composite):
    # (the digit CNN is left out: without biases, ReLU-sparse layers get denominators near zero, and one of four
    # real digits moves by 7.6e-3 L1 in float32, zennit's own float32 alike; docs/rules.md says so)
    cases = [("resnet18", *torchvision_model("resnet18"), torch.rand(2, 3, 64, 64,
                                                                      generator=torch.Generator().manual_seed(1)))]
    for name, model, canonizers, x in cases:
        onnx_bytes = export(model, x)
        options = dict(composite=composite, epsilon=1e-6, stabilizer=1e-6)
        converted = convert_bytes(onnx_bytes, zero_params=("bias",), **options)
        _, relevance = run_onnx(converted, x.numpy())
        _, ref = zennit_relevance(model, x, _zennit(composite, canonizers), dtype=torch.float64)
        assert l1(relevance, ref) <= 1e-5, (name, l1(relevance, ref))
        _, with_bias = run_onnx(convert_bytes(onnx_bytes, **options), x.numpy())
        assert l1(with_bias, ref) > 1e-3, name  # the option changes the heatmap: the biases matter here
        rules = metadata.read(converted)[metadata.CONFIG]["rules"]
        assert any(r.endswith("(bias left out)") for r in rules.values())


def test_zero_params_on_the_command_line(tmp_path):
    from lrpgraph.cli import main
    from lrpgraph.cli_demo import DEMO_DIR

    out = tmp_path / "m.lrp.onnx"
    result = CliRunner().invoke(main, ["convert", f"{DEMO_DIR}/model.onnx", "-o", str(out), "--zero-params", "bias"])
    assert result.exit_code == 0, result.output
    record = metadata.Record.from_model(lrpgraph.graph.load(str(out)))
    assert record.options["zero_params"] == ["bias"] and "(bias left out)" in record.rules["node_linear"]
    with pytest.raises(lrpgraph.LrpgraphError, match="only"):
        lrpgraph.convert(f"{DEMO_DIR}/model.onnx", zero_params=("weight",))
