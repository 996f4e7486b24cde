"""benchmarks/llm_retrieval.py end to end on a tiny run (a few training steps: the machinery, not the 90 %): the
converted graph's logits equal torch's, the hit rate is computed on the right positions (a relevance pointing at
the value scores 1, one pointing elsewhere 0), a random ranking fails the check, the page is written; and
benchmarks/llm_memory.py's table and goals on a tiny Qwen2 (each measurement in its own subprocess)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import llm_memory  # noqa: E402
import llm_retrieval  # noqa: E402


def test_prompts_put_the_value_where_the_script_looks(tmp_path):
    """The value position of make_prompts is the token after the queried key's first occurrence."""
    tok = llm_retrieval.write_tokenizer(str(tmp_path / "tokenizer.json"))
    texts, answers, where = llm_retrieval.make_prompts(np.random.default_rng(0), 50, 5)
    ids = llm_retrieval.encode(tok, texts)
    for row, answer, w in zip(ids, answers, where):
        first = list(row).index(row[-1])  # the key asked for, where the pairs list it
        assert first + 1 == w and row[w] == tok.token_to_id(answer)
    one_hot = np.eye(ids.shape[1])[where]
    keep = np.ones(len(ids), bool)
    assert llm_retrieval.hit_rate(one_hot, where, keep) == 1.0
    assert llm_retrieval.hit_rate(np.eye(ids.shape[1])[where - 1], where, keep) == 0.0


def test_retrieval_machinery(tmp_path, capsys):
    args = llm_retrieval.parse(["--steps", "20", "--batch", "16", "--hidden", "32", "--held-out", "200",
                                "--work", str(tmp_path), "--page", str(tmp_path / "page")])
    result = llm_retrieval.run(args, log=lambda *_: None)
    assert result["held_out"] == 200 and result["prompt_tokens"] == 11
    assert result["logits_max_abs_diff"] < 1e-4  # onnxruntime's converted graph against torch
    assert result["same_prediction"]
    assert 0 <= result["attn-lrp"] <= 1 and 0 <= result["input x gradient"] <= 1
    assert result["random"] < args.threshold  # the check can fail: a random ranking would
    assert not llm_retrieval.report({**result, "attn-lrp": result["random"]}, args.threshold)
    records = json.loads((tmp_path / "page" / "tokens.json").read_text())
    assert len(records) == 3 and all(r["prompt_length"] == 11 for r in records)
    explain_cli_on_the_llama(tmp_path)


def explain_cli_on_the_llama(tmp_path):
    """`lrpgraph explain --prompt` on the converted LlamaForCausalLM (dynamic length, attention_mask): two prompts
    of different lengths in one batch generate what a greedy loop over the unconverted export generates."""
    import onnxruntime as ort
    from click.testing import CliRunner

    from lrpgraph.cli import main

    prompts = ["k1 3 k2 5 k1", "k4 0 k6 2 k7 9 k6"]
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "retrieval.lrp.onnx"), "--prompt", prompts[0],
                                       "--prompt", prompts[1], "--tokenizer", str(tmp_path / "tokenizer.json"),
                                       "--generate", "3", "--batch-size", "2", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    plain = ort.InferenceSession(str(tmp_path / "retrieval.onnx"), providers=["CPUExecutionProvider"])
    for r in json.loads((tmp_path / "cli" / "tokens.json").read_text()):
        ids = r["ids"][:r["prompt_length"]]
        for _ in range(3):
            x = np.array([ids], np.int64)
            ids.append(int(plain.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0][0, -1].argmax()))
        assert r["generated_ids"] == ids[r["prompt_length"]:]
        assert [len(row) for row in r["relevance"]] == [r["prompt_length"] + k for k in range(3)]


def test_memory_table_on_a_tiny_qwen2(tmp_path, capsys):
    assert llm_memory.main(["--config", "tiny", "--lengths", "8", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 8 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 10 and all(float(c) > 0 for c in cells[1:4]), row  # peak MB
    assert all(float(c) >= 0 for c in cells[4:7]), row  # seconds (a tiny model: 0.00 at this precision)
    assert all(c in ("pass", "FAIL") for c in cells[7:9]), row
    verdict, ratio = cells[9].split(" ")  # the third goal, with lrpgraph's time over the plain forward's
    assert verdict == ("pass" if float(ratio.strip("()x")) <= 2.5 else "FAIL"), row
    assert "CPU:" in out
