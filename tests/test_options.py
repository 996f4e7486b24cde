"""Rule and method options as typed objects (rules.RuleOptions, methods.options.MethodOptions): lrpgraph.convert's
keywords build them in one place, the objects give the same model, and the CLI passes the same values."""

import copy
import dataclasses

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from train.fashion_data import tiny_cnn

import lrpgraph
from lrpgraph import metadata
from lrpgraph.cli import main
from lrpgraph.pipeline import build_options
from lrpgraph.errors import LrpgraphError
from lrpgraph.methods.options import MethodOptions
from lrpgraph.rules import RULES, RuleOptions
from lrpgraph.train.config import TrainConfig


def test_keywords_and_objects_give_the_same_model():
    model = tiny_cnn()
    by_keywords = lrpgraph.convert(model, composite="epsilon-gamma-box", gamma=0.5, low=-1.0, high=2.0, epsilon=0.1)
    by_object = lrpgraph.convert(model, composite="epsilon-gamma-box",
                                 options=RuleOptions(gamma=0.5, low=-1.0, high=2.0, epsilon=0.1))
    assert by_keywords.SerializeToString() == by_object.SerializeToString()
    rules = metadata.Record.from_model(by_object).rules
    assert rules["conv2"] == "gamma:0.5" and rules["fc"] == "epsilon:0.1" and rules["conv1"].startswith("zbox")
    # keywords go on top of a given object
    rule, method = build_options(RuleOptions(gamma=0.5), MethodOptions(steps=8), gamma=0.75, samples=4)
    assert rule == RuleOptions(gamma=0.75) and method == MethodOptions(steps=8, samples=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'gama'"):
        lrpgraph.convert(model, gama=0.5)
    with pytest.raises(LrpgraphError, match="--flex-epsilon -1 must be > 0"):
        lrpgraph.convert(model, composite="flex", options=RuleOptions(flex_epsilon=-1.0))


def test_one_default_for_each_option():
    defaults = RuleOptions()
    assert RULES["flex-relu"].params[0].default == defaults.flex_epsilon
    assert TrainConfig.__dataclass_fields__["flex_epsilon"].default == defaults.flex_epsilon
    recorded = metadata.Record.from_model(lrpgraph.convert(tiny_cnn(), composite="flex")).options
    assert recorded == {k: v for k, v in dataclasses.asdict(defaults).items() if v is not None}


def test_cli_passes_the_options_object(tmp_path):
    source = tmp_path / "cnn.onnx"
    onnx.save(tiny_cnn(), str(source))
    out = tmp_path / "cnn.lrp.onnx"
    result = CliRunner().invoke(main, ["convert", str(source), "-o", str(out), "-c", "flex", "--flex-epsilon", "0.2"])
    assert result.exit_code == 0, result.output
    from_cli = onnx.load(str(out))
    from_api = lrpgraph.convert(str(source), composite="flex", flex_epsilon=0.2)
    assert metadata.Record.from_model(from_cli).options == metadata.Record.from_model(from_api).options
    assert metadata.Record.from_model(from_cli).rules["relu1"] == "flex-relu:0.2"
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    from lrpgraph.runtime.session import ExplainSession

    np.testing.assert_array_equal(ExplainSession(from_cli).explain(x)[1], ExplainSession(from_api).explain(x)[1])


def test_method_options_are_the_method_units_options():
    """MethodOptions has one field per option the registered methods declare, in the order the metadata records
    them, with the defaults docs/methods.md lists; the Python API checks them as the CLI does."""
    assert MethodOptions().to_dict() == {"steps": 32, "quadrature": "riemann", "baseline": "zero", "chunk": None,
                                         "samples": 16, "noise_level": 0.1}
    assert copy.deepcopy(MethodOptions(steps=5)) == MethodOptions(steps=5) != MethodOptions()
    with pytest.raises(TypeError, match="unexpected keyword argument 'step'"):
        MethodOptions(step=5)
    model = tiny_cnn()
    with pytest.raises(LrpgraphError, match="--steps 0 must be a positive integer"):
        lrpgraph.convert(model, method="ig", steps=0)
    with pytest.raises(LrpgraphError, match="unknown quadrature 'simpson'; use riemann or gauss-legendre"):
        lrpgraph.convert(model, method="ig", quadrature="simpson")
