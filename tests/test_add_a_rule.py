"""Adding a rule takes one unit in one file and one registration: a 'zero-bias epsilon' rule for linear layers
(the epsilon rule with the bias left out of the denominator, eps its one parameter), registered here and
nothing else, is usable from `--rule Conv=zero-bias-epsilon:EPS`, range-checked with one line, listed by
`convert --help` and `lrpgraph inspect`, and gives the heatmap of its numpy formula on a one-layer model."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import lrpgraph
from lrpgraph.cli import main
from lrpgraph.rules import Param, RuleUnit, register_rule, unregister_rule
from lrpgraph.rules.terms import Group, Term, linear_relevance

NAME = "zero-bias-epsilon"


def zero_bias_epsilon():
    """R_i = x_i sum_j w_ij R_j / stab(sum_i x_i w_ij): the epsilon rule without the bias, eps its parameter."""
    unit = RuleUnit(NAME, (Param("epsilon", 1e-6, minimum=0.0),), zero_bias_epsilon.__doc__,
                    default_kinds=frozenset({"linear"}))

    @unit.emits("linear")
    def emit(ctx, node, rule, r_outs, layer):
        groups = [Group((Term("x", "w", "zero"),))]
        return [linear_relevance(ctx.b, layer, rule, groups, r_outs[0], rule.params[0], layer.x in ctx.nonneg,
                                 output=layer.out)]

    return unit


@pytest.fixture
def registered():
    register_rule(zero_bias_epsilon())
    yield
    unregister_rule(NAME)


def one_conv(rng):
    """x [N, 2, 3, 3] -> Conv (4 kernels of 3x3, bias) -> [N, 4, 1, 1] -> Flatten -> logits [N, 4]."""
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], name="conv"),
             helper.make_node("Flatten", ["z"], ["logits"], name="flatten")]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])
    graph = helper.make_graph(nodes, "one_conv", [image],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w, bias


def reference(x, w, bias, eps):
    """The rule's formula in float64 numpy, for the predicted class (the seed y_c)."""
    x64, a = x.astype(np.float64).reshape(len(x), -1), w.astype(np.float64).reshape(len(w), -1)
    y = x64 @ a.T + bias
    c = y.argmax(1)
    z = x64 @ a.T  # no bias
    stab = z + eps * np.where(z >= 0, 1.0, -1.0)
    r = np.zeros_like(y)
    r[np.arange(len(x)), c] = y[np.arange(len(x)), c]
    return (x64 * ((r / stab) @ a)).reshape(x.shape)


def test_a_rule_registered_in_one_file_is_usable_checked_listed_and_right(registered, tmp_path):
    rng = np.random.default_rng(0)
    model, w, bias = one_conv(rng)
    path, out = tmp_path / "conv.onnx", tmp_path / "conv.lrp.onnx"
    onnx.save(model, str(path))
    runner = CliRunner()
    assert NAME + ":EPSILON" in runner.invoke(main, ["convert", "--help"]).output
    listed = runner.invoke(main, ["inspect", str(path), "--rule", f"Conv={NAME}:0.5"])
    assert listed.exit_code == 0, listed.output
    assert f"{NAME}:EPSILON" in listed.output and f"{NAME}:0.5" in listed.output
    bad = runner.invoke(main, ["convert", str(path), "-o", str(out), "--rule", f"Conv={NAME}:-1"])
    assert bad.exit_code == 2 and "epsilon -1 must be >= 0" in bad.output and len(bad.output.splitlines()) == 1
    done = runner.invoke(main, ["convert", str(path), "-o", str(out), "--rule", f"Conv={NAME}:0.5"])
    assert done.exit_code == 0, done.output
    x = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    _, relevance = lrpgraph.ExplainSession(str(out)).explain(x)
    np.testing.assert_allclose(relevance, reference(x, w, bias, 0.5), rtol=1e-4, atol=1e-5)


def test_unregistered_the_rule_is_unknown():
    model, _, _ = one_conv(np.random.default_rng(0))
    with pytest.raises(lrpgraph.LrpgraphError, match=f"unknown rule '{NAME}'"):
        lrpgraph.convert(model, rules=[f"Conv={NAME}:0.5"])
