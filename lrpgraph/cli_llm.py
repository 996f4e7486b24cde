"""The options of `lrpgraph explain` for causal language models (--prompt, --prompts, --tokenizer, --generate) and
the run they start (runtime/prompts.py, runtime/llm.py)."""

import functools
import os

import click

from lrpgraph.errors import LrpgraphError


def llm_options(command: object) -> object:
    """Add --prompt, --prompts and --generate to a click command (--tokenizer is scale_options', shared with
    bulk runs of token models)."""
    options = [
        click.option("--prompt", "prompt", multiple=True, metavar="TEXT",
                     help="causal LMs: a prompt to continue and explain (repeatable)"),
        click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
                     help="causal LMs: a UTF-8 text file, one prompt a line"),
        click.option("--generate", "steps", type=click.IntRange(1, 4096), default=1, show_default=True,
                     help="causal LMs: tokens generated greedily, all explained in one call"),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def run_prompts(model: str, params: dict) -> None:
    """explain --prompt/--prompts: generate, explain the generated tokens, write tokens.json and index.html."""
    from lrpgraph.runtime.llm import CausalLM
    from lrpgraph.runtime.prompts import explain_prompts, load_tokenizer, read_prompts

    if params["inputs"]:
        raise LrpgraphError("give either input files or --prompt/--prompts, not both")
    if not params["tokenizer"]:
        raise LrpgraphError("--prompt needs the model's tokenizer: pass --tokenizer tokenizer.json")
    from lrpgraph.ort import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # a failed run (e.g. a prompt past a learned position table) is
    # reported once, as lrpgraph's one line, not also by onnxruntime's logger
    tokenizer = load_tokenizer(params["tokenizer"])
    texts = read_prompts(params["prompt"], params["prompts_file"])
    provider = None if params["provider"] == "auto" else params["provider"]
    lm = CausalLM(model, provider=provider, threads=params["threads"])
    explain_prompts(lm, tokenizer, texts, params["steps"], params["out_dir"], batch_size=params["batch_size"],
                    progress=not params["quiet"])
    click.echo(f"{len(texts)} prompt(s), {params['steps']} generated token(s) each, explained -> "
               f"{os.path.join(params['out_dir'], 'index.html')}", err=True)
