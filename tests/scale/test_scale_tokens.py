"""Token models in bulk runs (local engine): a Parquet dataset of token ids, or of texts with a tokenizer.json,
explained into one row per sequence whose relevance per token equals the token runtime's for that sequence alone
(ExplainSession.explain_inputs, what `lrpgraph explain` runs on token files); bad records in the errors table."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scale_data import token_model, token_table
from lrpgraph import scale
from lrpgraph.cli import main
from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime import ExplainSession

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(model path, tokenizer.json text, Parquet file of 40 sequences plus two bad ones)."""
    folder = tmp_path_factory.mktemp("tokens")
    model, tokenizer = token_model(folder)
    table = token_table(40, seed=3)
    bad = pa.table({"id": ["far", "empty"], "input_ids": [[5, 500, 7], []], "attention_mask": [[1, 1, 1], []],
                    "text": ["w5 w6", ""]})
    pq.write_table(pa.concat_tables([table, bad]), folder / "seqs.parquet", row_group_size=16)
    (folder / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
    return model, tokenizer, folder / "seqs.parquet"


def read(out, table="rows"):
    return pq.read_table(out / table).to_pandas().sort_values("id").reset_index(drop=True)


def reference(model, rows):
    """(logits, relevance per token) of each sequence explained alone by the token runtime."""
    session = ExplainSession(model)
    found = [session.explain_inputs({"input_ids": np.asarray(ids, np.int64)[None]}) for ids in rows]
    return [f[0][0] for f in found], [f[1][0] for f in found]


def test_token_ids_rows_equal_the_token_runtime(bert, tmp_path):
    model, _, data = bert
    summary = scale.run([data], model, tmp_path / "out", scale.JobOptions(batch_size=8), progress=False,
                        columns={"tokens": "input_ids"})
    assert (summary["explained"], summary["errors"]) == (40, 2)
    rows, errors = read(tmp_path / "out"), read(tmp_path / "out", "errors")
    expected = token_table(40, seed=3).to_pandas()
    assert rows.id.tolist() == expected.id.tolist()
    assert [list(t) for t in rows.tokens] == [list(t) for t in expected.input_ids]
    assert [list(s) for s in rows["shape"]] == [[len(t)] for t in expected.input_ids]
    logits, relevance = reference(model, expected.input_ids)
    for k in range(40):
        np.testing.assert_allclose(rows.relevance[k], relevance[k], atol=1e-6, rtol=0)
        np.testing.assert_allclose(rows.logits[k], logits[k], atol=1e-6, rtol=0)
    assert rows.predicted.tolist() == [int(np.argmax(z)) for z in logits] == rows.explained.tolist()
    np.testing.assert_allclose(rows.relevance_sum, [r.astype(np.float64).sum() for r in relevance], rtol=1e-6)
    assert errors.id.tolist() == ["empty", "far"]
    assert "empty sequence" in errors.error[0] and "token id 500" in errors.error[1]


def test_text_column_with_tokenizer_equals_token_ids(bert, tmp_path):
    model, tokenizer, data = bert
    options = scale.JobOptions(batch_size=16, tokenizer=tokenizer)
    scale.run([data], model, tmp_path / "ids", scale.JobOptions(batch_size=16), progress=False,
              columns={"tokens": "input_ids"})
    scale.run([data], model, tmp_path / "text", options, progress=False, columns={"text": "text"})
    a, b = read(tmp_path / "ids"), read(tmp_path / "text")
    assert b.id.tolist() == sorted(a.id.tolist() + ["far"])  # "w5 w6": no id out of range, the tokenizer's mask
    b = b[b.id.isin(a.id)].reset_index(drop=True)
    assert [list(t) for t in a.tokens] == [list(t) for t in b.tokens]
    assert [list(s) for s in b.token_strings] == [[f"w{t}" for t in row] for row in a.tokens]
    assert max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a.relevance, b.relevance)) <= 1e-6


def test_cli_tokens_column_and_refusals(bert, models, tmp_path):
    model, _, data = bert
    done = CliRunner().invoke(main, ["explain", model, str(data), "--tokens-column", "input_ids", "--out",
                                     str(tmp_path / "cli"), "-q"])
    assert done.exit_code == 1, done.output  # 1: the two bad records, in the errors table
    assert "40 of 42 inputs explained, 2 errors" in done.output
    assert pq.read_table(tmp_path / "cli" / "rows").num_rows == 40
    with pytest.raises(LrpgraphError, match="is a token model: give Parquet inputs with --tokens-column"):
        scale.run([data], model, tmp_path / "no", progress=False)
    with pytest.raises(LrpgraphError, match="takes images; --tokens-column"):
        scale.run([data], models["top"], tmp_path / "no2", progress=False, columns={"tokens": "input_ids"})
    with pytest.raises(LrpgraphError, match="masks apply to image models only"):
        scale.run([data], model, tmp_path / "no3", scale.JobOptions(masks=True), progress=False,
                  columns={"tokens": "input_ids"})
