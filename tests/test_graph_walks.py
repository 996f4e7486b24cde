"""The graph helpers the converter, the runtime and the importer share: which nodes some outputs need (one
backward walk, graph.needed_nodes), node attributes and Constant values decoded once (graph.attrs_of,
patterns.constants.constant_value)."""

import re
from pathlib import Path

import numpy as np
import pytest
from onnx import AttributeProto, helper, numpy_helper

from lrpgraph import graph
from lrpgraph.errors import UnsupportedModelError
from lrpgraph.patterns.constants import constant_value

PACKAGE = Path(__file__).resolve().parent.parent / "lrpgraph"


def chain_graph():
    """x -> a -> b -> out1; x -> c -> out2; a and c -> d (read by nothing)."""
    n = helper.make_node
    return [n("Relu", ["x"], ["a"], name="A"), n("Neg", ["x"], ["c"], name="C"), n("Exp", ["a"], ["b"], name="B"),
            n("Add", ["a", "c"], ["d"], name="D"), n("Abs", ["b"], ["out1"], name="O1"),
            n("Sqrt", ["c"], ["out2"], name="O2")]


def reference(nodes, outputs):
    """By recursion over producers (independent of the backward walk)."""
    producer = {o: node for node in nodes for o in node.output}
    found = set()

    def visit(tensor):
        node = producer.get(tensor)
        if node is not None and node.name not in found:
            found.add(node.name)
            for t in node.input:
                visit(t)

    for o in outputs:
        visit(o)
    return [node.name for node in nodes if node.name in found]


@pytest.mark.parametrize("outputs", [["out1"], ["out2"], ["out1", "out2"], ["d"], ["x"]])
def test_needed_nodes_matches_a_recursive_search(outputs):
    nodes = chain_graph()
    assert [n.name for n in graph.needed_nodes(nodes, outputs)] == reference(nodes, outputs)
    as_tuples = [(n.op_type, n.name, list(n.input), list(n.output)) for n in nodes]  # the importer's form
    assert [t[1] for t in graph.needed_nodes(as_tuples, outputs, ends=lambda t: (t[2], t[3]))] == \
        reference(nodes, outputs)


def test_needed_nodes_filters():
    nodes = chain_graph()
    # not walking through B: out1 needs O1 only
    assert [n.name for n in graph.needed_nodes(nodes, ["out1"], keep=lambda n: n.name != "B")] == ["O1"]
    # following only tensors other than 'a': D is kept, A is not
    assert [n.name for n in graph.needed_nodes(nodes, ["d"], follow=lambda t: t != "a")] == ["C", "D"]


def test_attributes_and_constants_decoded_once():
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    node = helper.make_node("Foo", [], ["y"], mode=b"nearest", value=numpy_helper.from_array(weights), alpha=0.5,
                            ints=[1, 2])
    raw, decoded = graph.attrs_of(node), graph.attrs_of(node, decoded=True)
    assert raw["mode"] == b"nearest" and decoded["mode"] == "nearest"
    np.testing.assert_array_equal(decoded["value"], weights)
    assert decoded["alpha"] == pytest.approx(0.5) and decoded["ints"] == [1, 2]
    loop = helper.make_node("If", ["c"], ["y"], then_branch=helper.make_graph([], "g", [], []))
    with pytest.raises(UnsupportedModelError, match="subgraph attributes"):
        graph.attrs_of(loop, decoded=True)
    for key, value, want in (("value", numpy_helper.from_array(weights), weights),
                             ("value_float", 2.5, np.float32(2.5)), ("value_floats", [1.5, 2.0], [1.5, 2.0]),
                             ("value_int", 7, np.int64(7)), ("value_ints", [3, -1], [3, -1])):
        got = constant_value(helper.make_node("Constant", [], ["k"], **{key: value}))
        np.testing.assert_array_equal(got, want)
        assert got.dtype == (np.float32 if "float" in key or key == "value" else np.int64)
    strings = helper.make_node("Constant", [], ["k"], value_strings=["a"])
    assert strings.attribute[0].type == AttributeProto.STRINGS and constant_value(strings) is None


def test_no_other_backward_walk_over_nodes():
    """The package walks nodes backwards in one place (graph.needed_nodes)."""
    walks = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if p.name != "graph.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"for \w+ in reversed\(.*nodes?\b", line)]
    assert not walks, walks
