"""`lrpgraph explain MODEL --prompt TEXT | --prompts FILE --tokenizer tokenizer.json --generate K --out DIR`: prompts
tokenized with the `tokenizers` package (the `llm` extra), K tokens generated greedily, the K generated tokens
explained in one call per batch of prompts (runtime/llm.py), DIR/tokens.json and DIR/index.html written.

tokens.json holds one object per prompt: prompt, ids and tokens (the prompt followed by the generated tokens),
prompt_length, generated_ids, generated_tokens, generated_text, and relevance: one list per generated token
over the positions before it (the prompt and the tokens generated earlier). The page shows one row per
generated token: the tokens it rests on, each coloured red (positive) or blue (negative) with opacity
|R| / max |R| of the row. Token strings come from outside and are escaped (runtime/html_safe.py)."""

import json
import os
import sys

import numpy as np
from tqdm import tqdm

from lrpgraph.errors import LrpgraphError
from lrpgraph.files import atomic_write
from lrpgraph.runtime import html_safe
from lrpgraph.runtime.page import footer


def load_tokenizer(path: str | os.PathLike) -> object:
    """A tokenizers.Tokenizer from a tokenizer.json; one line if the package or the file is missing or wrong."""
    try:
        import tokenizers
    except ImportError:
        raise LrpgraphError("--tokenizer needs the `tokenizers` package: pip install 'lrpgraph[llm]'") from None
    if not os.path.isfile(path):
        raise LrpgraphError(f"--tokenizer {path}: no such file; give the model's tokenizer.json")
    try:
        return tokenizers.Tokenizer.from_file(os.fspath(path))
    except Exception as err:  # tokenizers raises its own exception type for a file it cannot read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LrpgraphError(f"--tokenizer {path}: not a tokenizer.json the `tokenizers` package reads ({first})") \
            from None


def read_prompts(prompt: tuple, prompts_file: str | None) -> list:
    """The prompts: each --prompt, then each non-empty line of --prompts FILE (UTF-8)."""
    texts = list(prompt)
    if prompts_file is not None:
        try:
            with open(prompts_file, encoding="utf-8") as f:
                texts += [line.rstrip("\r\n") for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise LrpgraphError(f"--prompts {prompts_file}: cannot read it as UTF-8 text, one prompt a line "
                                f"({type(err).__name__})") from None
    if not texts:
        raise LrpgraphError("no prompt given: pass --prompt TEXT or --prompts FILE (one prompt a line)")
    return texts


def token_text(tokenizer: object, token_id: int) -> str:
    """How one token reads: its decoded text, else its vocabulary entry, else its id."""
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False)
    return text if text else (tokenizer.id_to_token(int(token_id)) or str(int(token_id)))


def explain_prompts(lm: object, tokenizer: object, texts: list, steps: int, out_dir: str | os.PathLike,
                    batch_size: int = 1, progress: bool = True) -> list:
    """Generate `steps` tokens for every prompt, explain them, write tokens.json and index.html; the records."""
    from lrpgraph.runtime.llm import check_lengths, explain_generated, generate

    ids = [tokenizer.encode(t).ids for t in texts]
    check_lengths(lm, ids, steps, [f"prompt {i + 1}" for i in range(len(ids))])
    records = []
    chunks = range(0, len(ids), batch_size)
    bar = tqdm(chunks, desc="prompts", unit="batch", disable=not progress or len(chunks) < 2, file=sys.stderr)
    for start in bar:
        part = ids[start:start + batch_size]
        longest = max(len(p) for p in part)
        if progress:
            tqdm.write(f"prompts {start + 1}-{start + len(part)}: {longest} tokens, generating {steps} and explaining "
                       "them in one call", file=sys.stderr)
        generated = generate(lm, part, steps, progress=progress)
        relevance, _ = explain_generated(lm, part, generated) if steps else (None, None)
        for n, (p, g) in enumerate(zip(part, generated)):
            records.append(_record(tokenizer, texts[start + n], p, g, None if relevance is None else relevance[n]))
    write_outputs(out_dir, records)
    return records


def _record(tokenizer, text, prompt, generated, relevance):
    """One prompt's entry of tokens.json (module docstring)."""
    every = list(prompt) + list(generated)
    rows = [] if relevance is None else [
        [float(v) for v in relevance[k, :len(prompt) + k]] for k in range(len(generated))]
    return {"prompt": text, "ids": [int(i) for i in every], "tokens": [token_text(tokenizer, i) for i in every],
            "prompt_length": len(prompt), "generated_ids": [int(i) for i in generated],
            "generated_tokens": [token_text(tokenizer, i) for i in generated],
            "generated_text": tokenizer.decode([int(i) for i in generated], skip_special_tokens=False),
            "relevance": rows}


def write_outputs(out_dir: str | os.PathLike, records: list) -> None:
    """DIR/tokens.json and DIR/index.html, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "tokens.json"), lambda f: f.write(json.dumps(records, indent=1)), binary=False)
    atomic_write(os.path.join(out_dir, "index.html"), lambda f: f.write(prompt_page(records)), binary=False)


STYLE = ("body{font-family:sans-serif;margin:16px;color:#222} h2{font-size:15px;margin:18px 0 6px}"
         " table{border-collapse:collapse} td{padding:3px 6px;vertical-align:top;border-bottom:1px solid #eee}"
         " td.gen{font-weight:bold;white-space:pre;background:#f4f4f4} .t{padding:1px 2px;margin:1px;"
         "border-radius:3px;line-height:1.9;white-space:pre} .g{text-decoration:underline dotted}"
         " .note{font-size:13px;color:#444} .out{font-style:italic;white-space:pre}")


def _row(record, k):
    """One generated token's row: the token, then the tokens before it coloured by their relevance for it."""
    rel = np.asarray(record["relevance"][k], np.float64)
    top = float(np.abs(rel).max()) if rel.size else 0.0
    top = top or 1.0
    spans = []
    for position, (token, value) in enumerate(zip(record["tokens"], rel)):
        colour = "255,0,0" if value >= 0 else "0,0,255"
        cls = "t g" if position >= record["prompt_length"] else "t"
        spans.append(f'<span class="{cls}" title="{value:.4g}" style="background:rgba({colour},'
                     f'{abs(value) / top:.3f})">{html_safe.text(token)}</span>')
    return f'<tr><td class="gen">{html_safe.text(record["generated_tokens"][k])}</td><td>{"".join(spans)}</td></tr>'


def prompt_page(records: list) -> str:
    """index.html: per prompt its text and generated text, then one row of coloured tokens per generated token."""
    parts = []
    for i, r in enumerate(records, 1):
        parts.append(f"<h2>prompt {i}: {html_safe.text(r['prompt'])} &rarr; "
                     f"<span class='out'>{html_safe.text(r['generated_text'])}</span></h2>")
        parts.append("<table>" + "".join(_row(r, k) for k in range(len(r["relevance"]))) + "</table>")
    note = ("<p class='note'>Each row: a generated token (left) and the tokens before it, red where they speak for "
            "it, blue against it, opacity relative to the row's largest |relevance|; tokens generated earlier are "
            "underlined. Hover a token for its value.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>lrpgraph: what the generated tokens rest on"
            f"</title><style>{STYLE}</style></head><body>\n{note}\n" + "\n".join(parts) + f"\n{footer()}</body></html>\n")
