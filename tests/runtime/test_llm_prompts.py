"""`lrpgraph explain MODEL --prompt ... --tokenizer tokenizer.json --generate K`: greedy generation against the
torch model's own greedy loop, the K generated tokens' relevance from one call against torch autograd (input x
gradient, which attn-lrp equals on the bias-free stand-in of llm_toy.py), the JSON and the page (escaped token
strings, the patent footer), and the one-line errors."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import llm_toy
import lrpgraph
from lrpgraph.cli import main
from lrpgraph.notice import PATENT_FOOTER

pytest.importorskip("tokenizers")
LENGTH = 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(converted model path, tokenizer.json path, torch module, tokenizer)."""
    root = tmp_path_factory.mktemp("llm")
    tok = llm_toy.word_tokenizer(root / "tokenizer.json")
    module = llm_toy.CausalToy(tok.get_vocab_size(), LENGTH).eval()
    llm_toy.export(module, LENGTH, root / "toy.onnx")
    model = lrpgraph.convert(str(root / "toy.onnx"), composite="attn-lrp", target="index", from_tensor="logits")
    lrpgraph.save(model, str(root / "toy.lrp.onnx"))
    return str(root / "toy.lrp.onnx"), str(root / "tokenizer.json"), module, tok


def torch_greedy(module, ids, steps):
    ids = list(ids)
    for _ in range(steps):
        x = torch.tensor(ids + [0] * (LENGTH - len(ids)))[None]
        with torch.no_grad():
            ids.append(int(module(x)[0, len(ids) - 1].argmax()))
    return ids[-steps:]


def test_generate_and_explain_in_one_call(toy, tmp_path):
    """Two prompts of different lengths in one batch: the generated tokens are torch's greedy ones, and each
    row of relevance is input x gradient of that token's logit (float64 autograd; L1 relative <= 1e-5)."""
    path, tok_path, module, tok = toy
    prompts = ["the cat sat", "a dog and a cat on"]
    result = CliRunner().invoke(main, ["explain", path, "--prompt", prompts[0], "--prompt", prompts[1],
                                       "--tokenizer", tok_path, "--generate", "3", "--batch-size", "2",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "tokens.json").read_text())
    assert [r["prompt"] for r in records] == prompts
    for r in records:
        prompt = r["ids"][:r["prompt_length"]]
        assert prompt == tok.encode(r["prompt"]).ids
        assert r["generated_ids"] == torch_greedy(module, prompt, 3)
        assert r["ids"] == prompt + r["generated_ids"]
        assert r["generated_text"] == tok.decode(r["generated_ids"])
        sequence = r["ids"][:-1] + [0] * (LENGTH - len(r["ids"]) + 1)
        targets = [(r["prompt_length"] - 1 + k, g) for k, g in enumerate(r["generated_ids"])]
        reference = llm_toy.input_x_gradient(module, sequence, targets)
        for k, row in enumerate(r["relevance"]):
            assert len(row) == r["prompt_length"] + k  # the positions before the explained token
            ref = reference[k, :len(row)]
            assert np.abs(np.asarray(row) - ref).sum() <= 1e-5 * np.abs(ref).sum()
            assert np.abs(reference[k, len(row):]).max() == 0  # the reference sees nothing after it either


def test_page_escapes_tokens_and_carries_the_footer(toy, tmp_path):
    """Token strings and prompts come from outside: '<b>' never reaches the page as markup."""
    path, tok_path, _, _ = toy
    result = CliRunner().invoke(main, ["explain", path, "--prompt", "<b> & <i>", "--tokenizer", tok_path,
                                       "--generate", "2", "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "index.html").read_text()
    assert "<b>" not in page and "<i>" not in page and "&lt;b&gt;" in page
    assert page.count('<tr><td class="gen">') == 2
    assert PATENT_FOOTER.replace("'", "&#x27;") in page


def test_prompts_file(toy, tmp_path):
    """--prompts FILE: one prompt a line, empty lines skipped, batched (batch size 1 by default)."""
    path, tok_path, _, _ = toy
    (tmp_path / "p.txt").write_text("the cat\n\n the dog sat on\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["explain", path, "--prompts", str(tmp_path / "p.txt"), "--tokenizer",
                                       tok_path, "--out", str(tmp_path / "o"), "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "o" / "tokens.json").read_text())
    assert [r["prompt"] for r in records] == ["the cat", " the dog sat on"]
    assert all(len(r["generated_ids"]) == 1 and len(r["relevance"]) == 1 for r in records)


@pytest.mark.parametrize("case, expected", [
    ("no-tokenizer", "--prompt needs the model's tokenizer"),
    ("bad-tokenizer", "not a tokenizer.json"),
    ("too-long", "takes at most 12"),
    ("not-causal", "not a causal language model"),
    ("no-prompt", "no prompt given"),
])
def test_bad_input_is_one_line(toy, tmp_path, case, expected):
    """Exit 2, one line naming the problem, nothing written."""
    path, tok_path, _, _ = toy
    args = ["--prompt", "the cat sat", "--tokenizer", tok_path]
    if case == "no-tokenizer":
        args = ["--prompt", "the cat"]
    elif case == "bad-tokenizer":
        (tmp_path / "t.json").write_text("{not json")
        args = ["--prompt", "the cat", "--tokenizer", str(tmp_path / "t.json")]
    elif case == "too-long":
        args = ["--prompt", "one two three four five six seven eight nine ten", "--tokenizer", tok_path,
                "--generate", "4"]
    elif case == "not-causal":
        from lrpgraph.cli_demo import DEMO_DIR

        converted = tmp_path / "demo.lrp.onnx"
        lrpgraph.save(lrpgraph.convert(os.path.join(DEMO_DIR, "model.onnx")), str(converted))
        path = str(converted)
    elif case == "no-prompt":
        (tmp_path / "empty.txt").write_text("\n")
        args = ["--prompts", str(tmp_path / "empty.txt"), "--tokenizer", tok_path]
    result = CliRunner().invoke(main, ["explain", path, *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not (tmp_path / "out").exists()
