"""The bulk options of `lrpgraph explain` and `lrpgraph evaluate` (--parquet, --engine, --workers, ...) and
the commands' bulk path. Only click is imported here; lrpgraph.scale and its engines load when a bulk run
starts, so the commands without these options need neither pyarrow nor ray."""

import os
import sys
from collections.abc import Callable

import click

from lrpgraph.errors import LrpgraphError

BULK_ONLY = ("workers", "address", "gpus_per_worker", "resume", "relevance_dtype", "image_column", "masks_column",
             "target_column", "tokens_column", "text_column", "tokenizer")
COLUMNS = ("image_column", "masks_column", "target_column", "tokens_column", "text_column")
NOT_IN_BULK = ("overlay", "html", "json_out", "vocab", "png_scale")


def scale_options(fn: Callable) -> Callable:
    """The options of bulk runs, shared by explain and evaluate."""
    options = [
        click.option("--parquet", is_flag=True, help="bulk run: one Parquet row per input in OUT/rows, unreadable "
                     "inputs in OUT/errors, OUT/summary.json (implied by --engine ray and by .parquet inputs)"),
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: this process; ray: Ray Data actors, one ExplainSession each (lrpgraph[ray])"),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="--engine ray: actors (one ExplainSession each)"),
        click.option("--address", default=None, help="--engine ray: join this cluster ('auto': the running one); "
                     "default: start a local one"),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
                     help="--engine ray: GPUs per actor (the CUDA provider when > 0)"),
        click.option("--image-column", default="image", show_default=True,
                     help="Parquet inputs: the column of encoded images (bytes)"),
        click.option("--masks-column", default=None, help="Parquet inputs: the column of encoded masks (PNG bytes, "
                     "nonzero = foreground)"),
        click.option("--target-column", default=None, help="Parquet inputs: a class index per record to explain"),
        click.option("--tokens-column", default=None, help="Parquet inputs of a token model: the column of token "
                     "ids (lists of integers); the model's other inputs from columns of their names"),
        click.option("--text-column", default=None, help="Parquet inputs of a token model: the column of texts, "
                     "tokenized with --tokenizer"),
        click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
                     help="token models: the model's tokenizer.json (the `tokenizers` format, lrpgraph[llm]): "
                     "tokenizes --prompt and --text-column, names the tokens in the rows"),
        click.option("--resume", is_flag=True, help="skip the inputs already in OUT/rows and OUT/errors"),
        click.option("--relevance-dtype", type=click.Choice(["float32", "float16"]), default="float32",
                     show_default=True, help="bulk runs: how heatmaps are stored"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def is_bulk(kw: dict, inputs: tuple) -> bool:
    """True when the command runs as a bulk job; refuses bulk-only options on a plain run."""
    from lrpgraph.cli_checks import flag, given

    chosen = given()
    bulk = kw["parquet"] or kw["engine"] == "ray" or any(str(i).lower().endswith((".parquet", ".pq")) for i in inputs)
    bulk = bulk or bool(set(COLUMNS) & chosen)
    if not bulk:
        stray = [name for name in BULK_ONLY if name in chosen]
        if stray:
            raise LrpgraphError(f"{flag(stray[0])} applies to bulk runs; add --parquet (or --engine ray)")
    return bulk


def check_out(out_dir: str | None, bulk: bool) -> bool:
    """Check --out (a local folder, or an object-store URI for bulk runs); return bulk."""
    from lrpgraph.cli_checks import check_output_dir
    from lrpgraph.scale.store import is_uri

    if is_uri(out_dir):
        if not bulk:
            raise LrpgraphError(f"--out {out_dir}: an object-store URI takes bulk runs (Parquet); add --parquet")
        return bulk
    if out_dir is not None:
        check_output_dir(out_dir, "--out")
    return bulk


def run_bulk(params: dict, options: object, quiet: bool) -> dict:
    """Run the bulk job the command's parameters describe; print its summary on stderr; return it."""
    from lrpgraph import scale
    from lrpgraph.scale.output import format_summary

    out_dir = params["out_dir"]
    columns = {"image": params["image_column"], "mask": params["masks_column"], "target": params["target_column"],
               "tokens": params["tokens_column"], "text": params["text_column"]}
    summary = scale.run(list(params.get("inputs") or params["data"]), params["model"], out_dir, options,
                        engine=params["engine"], workers=params["workers"], address=params["address"],
                        gpus_per_worker=params["gpus_per_worker"], resume=params["resume"], progress=not quiet,
                        columns=columns, masks_dir=params["masks_dir"])
    click.echo(format_summary(summary), err=True)
    click.echo(f"wrote {os.path.join(out_dir, 'rows')}, {os.path.join(out_dir, 'errors')} and "
               f"{os.path.join(out_dir, 'summary.json')}", err=True)
    return summary


def _provider(params):
    return None if params["provider"] == "auto" else params["provider"]


def explain_bulk(params: dict, preprocess: dict) -> None:
    """`lrpgraph explain` as a bulk job: heatmaps (and PNGs with an explicit --format png) in Parquet; exits
    with 1 when an input failed."""
    from lrpgraph.cli_checks import flag, given
    from lrpgraph.scale import JobOptions

    chosen = given()
    refused = [name for name in NOT_IN_BULK if name in chosen]
    if refused:
        raise LrpgraphError(f"{flag(refused[0]).replace('json-out', 'json')} does not apply to bulk runs (Parquet "
                            "output); leave it out, or drop --parquet / --engine ray")
    formats = [f.strip().lower() for f in params["formats"].split(",") if f.strip()]
    if any(f not in ("png", "npy") for f in formats) or not formats:
        raise LrpgraphError(f"unknown output format {params['formats']!r}; use png, npy or png,npy")
    options = JobOptions(target=params["target"], provider=_provider(params), threads=params["threads"],
                         batch_size=params["batch_size"], dtype=params["relevance_dtype"],
                         png="formats" in chosen and "png" in formats, cmap=params["cmap"],
                         preprocess=preprocess or None, tokenizer=read_tokenizer(params["tokenizer"]))
    summary = run_bulk(params, options, params["quiet"])
    sys.exit(1 if summary["errors"] else 0)


def evaluate_bulk(params: dict) -> None:
    """`lrpgraph evaluate` as a bulk job: the metrics per image in Parquet (no heatmaps stored), the table of
    means on stdout; exits with 1 when an input failed."""
    from lrpgraph.runtime.evaluate import format_table, parse_metrics
    from lrpgraph.scale import JobOptions

    metrics = parse_metrics(params["metrics"])
    needs = [m for m in metrics if m in ("background", "pointing")]
    if needs and params["masks_dir"] is None and not params["masks_column"]:
        raise LrpgraphError(f"metric(s) {', '.join(needs)} need --masks DIR or --masks-column (a mask per image)")
    options = JobOptions(provider=_provider(params), threads=params["threads"], batch_size=params["batch_size"],
                         heatmaps=False, metrics=tuple(m for m in metrics if m not in ("background", "pointing")),
                         step=params["step"], fill=params["fill"])
    summary = run_bulk(params, options, False)
    click.echo(format_table(metric_table(summary), summary["inputs"]))
    sys.exit(1 if summary["errors"] else 0)


def metric_table(summary: dict) -> dict:
    """{output: {metric: mean}} from a bulk summary's means (the table `lrpgraph evaluate` prints)."""
    from lrpgraph.scale.rows import SUMMARY_METRICS

    means = summary["means"]
    return {output: {m: means[f"{output}_{m}"] for m in SUMMARY_METRICS if f"{output}_{m}" in means}
            for output in summary["outputs"]}


def read_tokenizer(path: str | None) -> str | None:
    """The text of a tokenizer.json (what the workers tokenize with), checked to load; None without one."""
    if path is None:
        return None
    from lrpgraph.runtime.prompts import load_tokenizer

    return load_tokenizer(path).to_str()
