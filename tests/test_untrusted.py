"""Model files made to attack (issue 25): each is refused with one line on every path that loads a model.

External data whose location leaves the model's folder ('../', an absolute path, a symlink to elsewhere) is
refused before it is read by convert, inspect, explain, evaluate, web, ExplainSession, the importer and train
(on lrpgraph before this check: a traceback from onnx's checker on every path but the sessions). Sizes that
would exhaust memory, initializers holding less data than their dims declare, cycles, tensors produced twice,
inputs nobody produces and unknown domains: one line (before: convert wrote a model with a 10^12-element
initializer or one shorter than its dims, convert and inspect took a 10^9 x 10^9 image shape, the importer
raised numpy tracebacks and accepted a node reading a tensor nobody produces, convert wrote a model
with a STRING initializer in raw_data (the fuzzer found it); cycles, tensors produced twice
and unknown domains already got one line from onnx's checker or onnxruntime).
A tampered lrpgraph.config is refused by the session (before: wrong types gave an AttributeError traceback,
an unknown format, an unknown target mode, a 'top' record on a graph with a target input were accepted)."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from lrpgraph import metadata
from lrpgraph.cli import main
from lrpgraph.cli_demo import DEMO_DIR
from lrpgraph.pipeline import convert
from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.session import ExplainSession
from lrpgraph.train.importer import import_onnx
from test_cli import assert_one_line_error

DEMO_MODEL = Path(DEMO_DIR) / "model.onnx"
IMAGES = Path(DEMO_DIR) / "images"
OUTSIDE = "outside the model's folder"


@pytest.fixture(scope="module")
def plain():
    return onnx.load(DEMO_MODEL)


@pytest.fixture(scope="module")
def converted(plain):
    return convert(plain)


def copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def with_external(model, folder, location, link_to=None):
    """model saved in folder with its largest initializer's data at `location` (a symlink to link_to)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = copy(model)
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    if link_to is not None:
        os.symlink(link_to, folder / location)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback: {result.exception!r}")
    return result.exit_code, result.output


def refused(call, *needles):
    with pytest.raises(LrpgraphError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def train_cli(model, tmp):
    for name in ("images", "masks"):
        (tmp / name / "a").mkdir(parents=True, exist_ok=True)
    return cli("train", model, "--images", tmp / "images", "--masks", tmp / "masks", "--out", tmp / "run",
               "--epochs", 1, "--quiet")


LOAD_PATHS = {  # name: f(plain model path, converted model path, tmp) -> None, raising or asserting one line
    "convert": lambda p, c, t: assert_one_line_error(*cli("convert", p, "-o", t / "out.onnx"), OUTSIDE),
    "inspect": lambda p, c, t: assert_one_line_error(*cli("inspect", p), OUTSIDE),
    "explain": lambda p, c, t: assert_one_line_error(*cli("explain", c, IMAGES, "-o", t / "e"), OUTSIDE),
    "evaluate": lambda p, c, t: assert_one_line_error(*cli("evaluate", c, IMAGES, "-o", t / "v"), OUTSIDE),
    "web": lambda p, c, t: assert_one_line_error(*cli("web", c, "-o", t / "site"), OUTSIDE),
    "ExplainSession": lambda p, c, t: refused(lambda: ExplainSession(c), OUTSIDE),
    "import_onnx": lambda p, c, t: refused(lambda: import_onnx(p), OUTSIDE),
    "train": lambda p, c, t: assert_one_line_error(*train_cli(p, t), OUTSIDE),
}


@pytest.mark.parametrize("path", list(LOAD_PATHS))
@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused_on_every_load_path(tmp_path, plain, converted, attack, path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * (1 << 16))
    location, link = {"dotdot": ("../secret.bin", None), "absolute": (str(secret), None),
                      "symlink": ("weights.bin", secret)}[attack]
    p = with_external(plain, tmp_path / "plain", location, link)
    c = with_external(converted, tmp_path / "converted", location, link)
    LOAD_PATHS[path](p, c, tmp_path)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "site").exists()


def test_external_data_inside_the_folder_still_loads(tmp_path, plain, converted):
    model = copy(converted)
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    session = ExplainSession(path)
    assert session.explain(np.zeros((1, 1, 28, 28), np.float32))[1].shape == (1, 1, 28, 28)
    assert len(import_onnx(path).initializer_names()) == len(model.graph.initializer)


def _huge_initializer(model):
    model.graph.initializer.append(TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[10**6, 10**6],
                                               raw_data=b"\0" * 16))
    model.graph.node.append(helper.make_node("Identity", ["big"], ["big_out"]))
    model.graph.output.append(helper.make_tensor_value_info("big_out", TensorProto.FLOAT, [10**6, 10**6]))


def _short_initializer(model):
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.raw_data = tensor.raw_data[:8]


def _huge_dims(model):
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 10**9


def _string_in_raw_data(model):
    max(model.graph.initializer, key=lambda t: len(t.raw_data)).data_type = TensorProto.STRING


def _cycle(model):
    model.graph.node[0].input[0] = model.graph.node[1].output[0]


def _produced_twice(model):
    model.graph.node[1].output[0] = model.graph.node[0].output[0]


def _read_from_nobody(model):
    model.graph.node[1].input[0] = "nobody"


def _unknown_domain(model):
    model.graph.node[0].domain = "evil.domain"
    model.opset_import.append(helper.make_opsetid("evil.domain", 1))


BROKEN = {  # attack: (mutation, what the one line says)
    "huge initializer": (_huge_initializer, "refused before allocating"),
    "initializer shorter than its dims": (_short_initializer, "holds 8 bytes"),
    "huge dims": (_huge_dims, "refused before allocating"),
    "string data in raw_data": (_string_in_raw_data, "which ONNX does not allow"),
    "cycle": (_cycle, "has a cycle"),
    "tensor produced twice": (_produced_twice, "produced twice"),
    "input nobody produces": (_read_from_nobody, "'nobody', which no node"),
    "unknown domain": (_unknown_domain, "'evil.domain', which no runtime knows"),
}


@pytest.mark.parametrize("attack", list(BROKEN))
def test_broken_graphs_get_one_line_on_every_load_path(tmp_path, plain, converted, attack):
    mutate, needle = BROKEN[attack]
    p, c = copy(plain), copy(converted)
    mutate(p)
    mutate(c)
    onnx.save(p, tmp_path / "plain.onnx")
    onnx.save(c, tmp_path / "converted.onnx")
    assert_one_line_error(*cli("convert", tmp_path / "plain.onnx", "-o", tmp_path / "out.onnx"), needle)
    assert not (tmp_path / "out.onnx").exists()
    assert_one_line_error(*cli("inspect", tmp_path / "plain.onnx"), needle)
    assert_one_line_error(*cli("explain", tmp_path / "converted.onnx", IMAGES, "-o", tmp_path / "e"), needle)
    refused(lambda: import_onnx(tmp_path / "plain.onnx"), needle)
    refused(lambda: import_onnx(p.SerializeToString()), needle)
    refused(lambda: ExplainSession(c), needle)
    refused(lambda: ExplainSession(c.SerializeToString()), needle)


TAMPERED = {  # name: (change to the config dict or raw text, what the one line says)
    "invalid JSON": ("{not json", "not valid JSON"),
    "not an object": ("[1, 2]", "not a JSON object"),
    "explanations of the wrong type": ({"explanations": 5}, "'explanations' is not an object"),
    "image input of the wrong type": ({"image_input": 7}, "'image_input' is int"),
    "relevance outputs of the wrong type": ({"relevance_outputs": "relevance"}, "'relevance_outputs'"),
    "rules of the wrong type": ({"rules": [1]}, "'rules' is list"),
    "flag of the wrong type": ({"outputs_probabilities": "yes"}, "'outputs_probabilities' is str"),
    "unknown format": ({"format": 99}, "format 99"),
    "unknown target mode": ({"target": "<script>"}, "target mode '<script>'"),
    "target index without its input": ({"target": "index"}, "no 'target' input"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_metadata_is_refused_by_the_session(tmp_path, converted, case):
    change, needle = TAMPERED[case]
    model = copy(converted)
    config = json.loads(next(p.value for p in model.metadata_props if p.key == metadata.CONFIG))
    text = change if isinstance(change, str) else json.dumps({**config, **change})
    metadata._set(model, metadata.CONFIG, text)
    path = tmp_path / "tampered.onnx"
    onnx.save(model, path)
    refused(lambda: ExplainSession(path), needle)
    assert_one_line_error(*cli("explain", path, IMAGES, "-o", tmp_path / "e"), needle)


def test_tampered_labels_and_a_top_record_on_an_index_graph(tmp_path, plain):
    model = convert(plain, target="index")
    config = json.loads(next(p.value for p in model.metadata_props if p.key == metadata.CONFIG))
    metadata._set(model, metadata.CONFIG, json.dumps({**config, "target": "top"}))
    refused(lambda: ExplainSession(model), "converted with target 'top' but takes a 'target' input")
    model = convert(plain)
    metadata.write(model, metadata.LABELS, {"a": 1})
    refused(lambda: ExplainSession(model), "'labels' is dict")
    metadata.write(model, metadata.LABELS, [["nested"]])
    refused(lambda: ExplainSession(model), "where a name belongs")


def test_token_strings_of_any_json_type_become_text(tmp_path):
    """A tokenizer.json whose added token is a number or an object: the token page shows it as text (before:
    an AttributeError traceback from html.escape)."""
    from lrpgraph.runtime.tokens import read_vocab, token_page

    vocab = {"model": {"vocab": {"<b>a</b>": 0}}, "added_tokens": [{"id": 1, "content": 5},
                                                                   {"id": 2, "content": {"x": "<i>"}}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(vocab))
    names = read_vocab(tmp_path / "tokenizer.json")
    assert names == {0: "<b>a</b>", 1: "5", 2: "{'x': '<i>'}"}
    page = token_page([{"file": "<x>.npy", "row": 0, "class": 1, "tokens": [names[i] for i in range(3)],
                        "relevance": [1.0, -1.0, 0.5], "mask": [1, 1, 1]}])
    assert "&lt;b&gt;a&lt;/b&gt;" in page and "&lt;x&gt;.npy" in page and "<b>a</b>" not in page
