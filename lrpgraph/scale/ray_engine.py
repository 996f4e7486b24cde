"""The Ray engine: the job as a Ray Data pipeline, on a local cluster or one joined with --address.

    from_items(read units) -> map_batches(read units -> records, a task each)
      -> map_batches(Explainer, concurrency=workers, batch_size, num_gpus=gpus per worker)   one actor each
      -> iter_batches on the driver: the counts of each batch (output.Summary)

Each actor writes the rows and errors parts of every batch it explains (output.write_batch) and sends the
driver only the batch's counts (a few hundred bytes), so the driver's memory does not grow with the dataset
and the output folder (or URI) must be writable from every node.

Each actor opens one ExplainSession (the CUDA provider when it has a GPU) and keeps it. Ray Data restarts
an actor that dies and runs its unfinished batches again (max_restarts and max_task_retries -1 by
default); a part's name is a digest of its batch's ids, so a batch run again overwrites its own part: every
input is in the output exactly once. ray is imported here only, on first use (the extra `[ray]`).
"""

import dataclasses
import os
from collections.abc import Iterator

from lrpgraph.errors import LrpgraphError, MissingDependencyError
from lrpgraph.scale.sources import Source, slices
from lrpgraph.scale.worker import Explainer, JobOptions

LOCAL_OBJECT_STORE = 200 * 1024 * 1024  # bytes: a local cluster's object store (records and rows in flight)
READ_CPUS = 0.25  # a read task's share of a CPU: reading never waits for the explaining actors' CPUs


def ray_module() -> object:
    """The ray module, or a one-line error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("ray"):
            raise
        raise MissingDependencyError("--engine ray needs Ray Data: pip install 'lrpgraph[ray]'") from None
    return ray


def connect(address: str | None, workers: int, cpus_per_worker: float) -> bool:
    """Join the cluster at address, or start a local one sized for the workers; True when started here."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = max(os.cpu_count() or 1, int(workers * cpus_per_worker + 1))
        ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE, include_dashboard=False,
                 log_to_driver=False)
    return True


class _ReadUnits:
    """map_batches function: read units -> their records (sources.Reader), yielded in blocks of batch_size
    rows, the batches the local engine makes, so that the actors share the records of one large unit."""

    def __init__(self, reader: object, skip: frozenset, batch_size: int):
        self.reader, self.skip, self.batch_size = reader, skip, batch_size

    def __call__(self, batch: object) -> Iterator:
        for unit in batch.column("unit").to_pylist():
            yield from slices(self.reader(unit, self.skip), self.batch_size)


def explain(ds: object, model: object, batch_size: int = 32, concurrency: int = 1, num_gpus: float = 0,
            options: JobOptions | None = None, batch_format: str = "numpy", out: dict | None = None) -> object:
    """ds (a ray Dataset of records: image as bytes or decoded array, id or path, optionally mask and
    target) -> a ray Dataset of output rows (rows.schema; failed inputs have `error` set), computed by
    `concurrency` actors with one ExplainSession each, `num_gpus` GPUs per actor (CUDA provider). With out
    (worker.Explainer's), the actors write the rows and the Dataset holds only their counts."""
    options = dataclasses.replace(options or JobOptions(), batch_size=batch_size)
    if num_gpus and options.provider is None:
        options = dataclasses.replace(options, provider="cuda")
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise LrpgraphError(f"concurrency (--workers) must be a positive integer, got {concurrency!r}")
    ray = ray_module()
    return ds.map_batches(Explainer, fn_constructor_args=(model, options.check(), out), batch_size=batch_size,
                          compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=num_gpus or None,
                          num_cpus=float(options.threads or 1), batch_format=batch_format)


def records(source: Source, skip: frozenset, batch_size: int) -> object:
    """The records of source as a ray Dataset (one read task per unit, a block per batch)."""
    ray = ray_module()
    units = source.units(batch_size)
    items = ray.data.from_items([{"unit": unit} for unit in units], override_num_blocks=max(1, len(units)))
    return items.map_batches(_ReadUnits(source.reader(), skip, batch_size), batch_size=1, batch_format="pyarrow",
                             num_cpus=READ_CPUS)


def tables(source: Source, model: str, options: JobOptions, skip: frozenset, workers: int = 1,
           address: str | None = None, gpus_per_worker: float = 0, out: dict | None = None) -> Iterator:
    """Output tables as the actors finish them (with out: the counts of the rows the actors wrote); the cluster
    started here is shut down at the end."""
    ray = ray_module()
    started = connect(address, workers, float(options.threads or 1))
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver shows one bar for both engines
    try:
        shipped = model
        if address:  # the workers may not see the driver's files: ship the model's bytes
            with open(model, "rb") as f:
                shipped = f.read()
        found = explain(records(source, skip, options.batch_size), shipped, options.batch_size, workers,
                        gpus_per_worker, options, batch_format="pyarrow", out=out)
        yield from found.iter_batches(batch_format="pyarrow", batch_size=None)
    finally:
        if started:
            ray.shutdown()
