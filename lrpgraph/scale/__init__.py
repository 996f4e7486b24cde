"""Bulk explanation of whole datasets: one Parquet row per input, on one machine or on Ray Data.

    run(inputs, model, out_dir)                         the local engine (default): one process
    run(..., engine="ray", workers=4)                   Ray Data: one actor with one ExplainSession per worker
    explain(ds, model, batch_size=64, concurrency=4)    a ray Dataset in, a ray Dataset of output rows out

Both engines read the same units (sources.py), explain them with the same Explainer (worker.py) and
write the same rows (rows.py) through the same Output (output.py). Neither ray nor pyarrow is imported
by `import lrpgraph.scale`: pyarrow on the first Parquet read or write (the extra `[parquet]`), ray
only by the Ray engine (the extra `[ray]`).
"""

import dataclasses
import json
import os
import sys

from typing import TYPE_CHECKING

from lrpgraph.errors import LrpgraphError

if TYPE_CHECKING:
    from lrpgraph.scale.worker import JobOptions

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "JobOptions", "explain", "run"]


def __getattr__(name):
    if name == "JobOptions":  # loaded on first use: `lrpgraph --help` imports lrpgraph.scale.cli, not PIL
        from lrpgraph.scale.worker import JobOptions

        return JobOptions
    raise AttributeError(f"module 'lrpgraph.scale' has no attribute {name!r}")


def explain(ds: object, model: object, batch_size: int = 32, concurrency: int = 1, num_gpus: float = 0,
            **options: object) -> object:
    """Output rows (lrpgraph.scale.rows) for a ray Dataset of images, e.g. ray.data.read_images(folder,
    include_paths=True); options are JobOptions fields (target, heatmaps, dtype, png, masks, metrics, ...)."""
    from lrpgraph.scale import ray_engine
    from lrpgraph.scale.worker import JobOptions

    return ray_engine.explain(ds, model, batch_size, concurrency, num_gpus, JobOptions(**options))


def run(inputs: list, model: str | os.PathLike, out_dir: str | os.PathLike, options: "JobOptions | None" = None,
        engine: str = "local", workers: int = 1, address: str | None = None, gpus_per_worker: float = 0,
        resume: bool = False, progress: bool = True, columns: dict | None = None,
        masks_dir: str | os.PathLike | None = None) -> dict:
    """Explain every input (image files, folders, globs, Parquet files) into out_dir/rows and out_dir/errors
    (Parquet) and out_dir/summary.json; return the summary (output.Summary.result)."""
    from tqdm import tqdm

    from lrpgraph.scale import local, output
    from lrpgraph.scale.sources import Source
    from lrpgraph.scale.store import is_uri
    from lrpgraph.scale.worker import Explainer, JobOptions, open_session, output_schema

    if engine not in ENGINES:
        raise LrpgraphError(f"unknown engine {engine!r}; use local or ray")
    options = (options or JobOptions()).check()
    if engine == "ray":
        from lrpgraph.scale.ray_engine import ray_module

        ray_module()  # a missing extra is said before any work
    options = dataclasses.replace(options, masks=options.masks or masks_dir is not None
                                  or bool((columns or {}).get("mask")))
    explainer = Explainer(str(model), options) if engine == "local" else None
    session = explainer.session if explainer else open_session(str(model), options)  # before any input is read
    columns = _match_tokens(columns or {}, session)
    source = Source(inputs, columns, masks_dir, exclude=out_dir)
    skip = frozenset(output.done_ids(out_dir)) if resume else frozenset()
    writer = output.Output(out_dir, skip, output_schema(session, options))
    if engine == "local":
        found = local.tables(source, explainer, skip, options.batch_size)
    else:
        from lrpgraph.scale import ray_engine

        out = {"dir": out_dir if is_uri(str(out_dir)) else os.path.abspath(out_dir), "run": writer.run}
        found = ray_engine.tables(source, str(model), options, skip, workers, address, gpus_per_worker, out)
    if (columns or {}).get("target") and session.target_input is None:
        raise LrpgraphError(f"--target-column needs a model that takes a target; {session.name} was converted with "
                            f"target {session.target_mode!r}: convert it with --target index (or seed)")
    total = source.count()
    summary = output.Summary(total, len(skip))
    bar = tqdm(total=max(0, total - len(skip)), unit="img", disable=not progress, file=sys.stderr)
    try:
        for table in found:
            if "counts" in table.column_names:  # Ray actors wrote these rows: the driver gets their counts
                for text in table.column("counts").to_pylist():
                    summary.merge(json.loads(text))
                    bar.update(summary.explained + summary.errors - bar.n)
                continue
            good, bad = writer.add(table)
            summary.add(good, bad)
            bar.update(table.num_rows)
    finally:
        writer.close()
        bar.close()
    result = {**summary.result(session.labels), "duplicates": writer.duplicates, "engine": engine,
              "outputs": list(session.relevance_outputs)}
    output.write_summary(out_dir, result)
    return result


def _match_tokens(columns, session):
    """columns, checked against the model: a token model reads token-id or text columns, an image model images;
    a token model's other inputs come from columns of their names (columns["extra"], what the readers read)."""
    tokens = bool(columns.get("tokens") or columns.get("text"))
    if session.tokens and not tokens:
        raise LrpgraphError(f"{session.name} is a token model: give Parquet inputs with --tokens-column (token ids) "
                            "or --text-column (with --tokenizer)")
    if tokens and not session.tokens:
        raise LrpgraphError(f"{session.name} takes images; --tokens-column and --text-column are for token models")
    if not session.tokens:
        return columns
    from lrpgraph.scale.tokens import extra_inputs

    return {**columns, "extra": extra_inputs(session)}
