"""Text classifiers (token ids in, relevance per token out): feeding every model input by name, reading
token ids from .npy or JSON lines, and writing the coloured-token page of `lrpgraph explain`.

A converted text model's explained input is its token ids [N, L]; its other inputs (attention_mask,
token_type_ids, ...) are fed by name. Defaults: attention_mask all ones, token_type_ids (and any other
input named *type*) zeros. A tokenizer.json (the `tokenizers` package's format) is read as plain JSON
only to show token strings; without it tokens are shown by id."""

import html
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from lrpgraph.errors import LrpgraphError
from lrpgraph.files import atomic_write
from lrpgraph.runtime.arrays import NumpyOps
from lrpgraph.runtime.page import footer

if TYPE_CHECKING:
    from lrpgraph.runtime.session import ExplainSession


def explain_inputs(session: "ExplainSession", inputs: dict, target: int | np.ndarray | None = None) -> tuple:
    """(logits [N, C], relevance [N, L], explained classes) for token ids and the other inputs by name."""
    graph_inputs = session.runner.inputs
    fed_by_session = {session.target_input, "noise_seed"}
    unknown = [k for k in inputs if k not in graph_inputs or k in fed_by_session]
    if unknown:
        takes = ", ".join(n for n in graph_inputs if n not in fed_by_session)
        raise LrpgraphError(f"{session.name} has no input {', '.join(map(repr, unknown))}; it takes {takes}")
    if session.image_input not in inputs:
        raise LrpgraphError(f"give the token ids as {session.image_input!r}")
    ids = np.asarray(inputs[session.image_input])
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.dtype.kind not in "iu" or ids.ndim != 2:
        raise LrpgraphError(f"{session.image_input} must be integer token ids [N, L] (got {ids.dtype} {list(ids.shape)})")
    vocab = session.record.vocab_size
    bad = np.argwhere((ids < 0) | (ids >= vocab)) if vocab else np.zeros((0, 2))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        raise LrpgraphError(f"token id {int(ids[i, j])} at row {i}, position {j} is out of range: the embedding "
                            f"table has {vocab} rows (ids 0 to {vocab - 1})")
    feeds = {session.image_input: ids.astype(np.int64)}
    for name, info in graph_inputs.items():
        if name in feeds or name in fed_by_session:
            continue
        value = inputs.get(name)
        if value is None:
            if name == "attention_mask":
                value = np.ones_like(ids)
            elif "type" in name:
                value = np.zeros_like(ids)
            else:
                raise LrpgraphError(f"{session.name} needs input {name!r}; give it by name")
        value = np.asarray(value)
        value = value[None] if value.ndim == 1 else value
        if value.shape != ids.shape:
            raise LrpgraphError(f"input {name!r} has shape {list(value.shape)}; it must match the token ids "
                                f"{list(ids.shape)}")
        feeds[name] = value.astype(np.float32 if info.type == "tensor(float)" else np.int64)
    logits, relevance, explained = session.explain_rows(Feeds(feeds), target, TokenOps(session), max(len(ids), 1))
    return logits, relevance[0], explained


class Feeds:
    """A text model's inputs by name, each [N, L], as rows for ExplainSession.explain_rows: shape is the token
    ids' shape, feeds[rows] the same rows of every input."""

    def __init__(self, arrays: dict) -> None:
        self.arrays = arrays
        self.shape = next(iter(arrays.values())).shape

    def __getitem__(self, rows: object) -> "Feeds":
        return Feeds({name: np.ascontiguousarray(value[rows]) for name, value in self.arrays.items()})


class TokenOps(NumpyOps):
    """The array backend of a text model (arrays.NumpyOps on Feeds rows): runs the token inputs by name and
    reads the first heatmap output."""

    def run(self, x: Feeds, feed: np.ndarray | None) -> tuple:
        s = self.session
        extra = {} if feed is None else {s.target_input: feed}
        logits, relevance = s.runner.run([s.logits_output, s.relevance_output],
                                         {**x.arrays, **extra, **s.constant_feeds()})
        return logits, [relevance]

    @staticmethod
    def take(array: Feeds, rows: np.ndarray) -> Feeds:
        return array[rows]


def read_token_file(path: str) -> list:
    """[{input name: array [L]}, ...] from .npy (ids [N, L] or [L]) or .jsonl ({"input_ids": [...], ...} a line)."""
    if not os.path.isfile(path):
        raise LrpgraphError(f"{path}: no such file; give token ids as .npy or .jsonl files")
    if not path.endswith((".npy", ".jsonl", ".json")):
        raise LrpgraphError(f"{path}: a text model reads token ids from .npy or .jsonl files")
    if path.endswith(".npy"):
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise LrpgraphError(f"{path}: not a readable .npy file ({err})") from None
        ids = ids[None] if ids.ndim == 1 else ids
        return [{"input_ids": row} for row in ids]
    rows = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if line.strip():
                try:
                    item = json.loads(line)
                    rows.append({key: np.asarray(v, np.int64) for key, v in item.items()})
                except (ValueError, TypeError, AttributeError):
                    raise LrpgraphError(f"{path}, line {k}: write one JSON object of integer lists a line, "
                                        'e.g. {"input_ids": [101, 2023, 102]}') from None
    return rows


def read_vocab(path: str | os.PathLike) -> dict:
    """{id: token string} from a tokenizers tokenizer.json (model.vocab as a dict or a list, added_tokens)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        vocab = data.get("model", {}).get("vocab", {})
        tokens = ({i: t for t, i in vocab.items()} if isinstance(vocab, dict)
                  else {i: entry[0] for i, entry in enumerate(vocab)})
        tokens.update({t["id"]: t["content"] for t in data.get("added_tokens", [])})
        return {int(i): str(t) for i, t in tokens.items()}  # a page shows them as text, whatever the file held
    except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError):
        raise LrpgraphError(f"{path}: not a tokenizer.json with model.vocab (the `tokenizers` format)") from None


def explain_token_files(session: "ExplainSession", paths: list, out_dir: str | os.PathLike, vocab: dict | None = None,
                        target: int | None = None) -> list:
    """Explain every sequence of the files; write tokens.json and index.html (tokens coloured by relevance)."""
    names = read_vocab(vocab) if vocab else {}
    records = []
    for path in paths:
        for k, row in enumerate(read_token_file(path)):
            inputs = dict(row)
            inputs[session.image_input] = inputs.pop("input_ids")
            logits, relevance, explained = explain_inputs(session, inputs, target)
            mask = row.get("attention_mask", np.ones_like(row["input_ids"]))
            ids = [int(i) for i in row["input_ids"]]
            records.append({"file": os.path.basename(path), "row": k, "class": None if explained is None else int(explained[0]),
                            "logits": logits[0].tolist(), "tokens": [names.get(i, str(i)) for i in ids], "ids": ids,
                            "relevance": relevance[0].tolist(), "mask": [int(m) for m in mask]})
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "tokens.json"), lambda f: f.write(json.dumps(records, indent=1)), binary=False)
    atomic_write(os.path.join(out_dir, "index.html"), lambda f: f.write(token_page(records)), binary=False)
    return records


def token_page(records: list) -> str:
    """An HTML page: one line per sequence, each token's background red (positive) or blue (negative) with
    opacity |R| / max |R| of its sequence; padding tokens are not shown."""
    lines = []
    for r in records:
        rel = np.asarray(r["relevance"], np.float64)
        top = float(np.abs(rel).max()) or 1.0
        spans = []
        for token, value, keep in zip(r["tokens"], rel, r["mask"]):
            if not keep:
                continue
            colour = "255,0,0" if value >= 0 else "0,0,255"
            spans.append(f'<span title="{value:.4g}" style="background:rgba({colour},{abs(value) / top:.3f})">'
                         f"{html.escape(token)}</span>")
        label = f"{html.escape(r['file'])} #{r['row']}: class {r['class']}"
        lines.append(f"<p><b>{label}</b><br>{' '.join(spans)}</p>")
    style = "body{font-family:sans-serif} span{padding:1px 2px;margin:1px;border-radius:3px;line-height:1.9}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>lrpgraph token relevance</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(lines) + f"\n{footer()}</body></html>\n")
