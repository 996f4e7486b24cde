"""The local engine (the default): the read units and the Explainer of the Ray engine, run in this process.

Records are read unit by unit (sources.Reader) and explained batch_size at a time by one Explainer
(one ExplainSession); the next batch is read and decoded (Explainer.prepare) in a thread while the current one
runs (Explainer.finish): onnxruntime and PIL's decoders release the GIL, so the two overlap.
"""

from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

from lrpgraph.scale.sources import Source, slices
from lrpgraph.scale.worker import Explainer


def record_batches(source: Source, skip: frozenset, batch_size: int) -> Iterator:
    """The records of source, skip left out, in tables of at most batch_size rows."""
    read = source.reader()
    for unit in source.units(batch_size):
        yield from slices(read(unit, skip), batch_size)


def tables(source: Source, explainer: Explainer, skip: frozenset, batch_size: int) -> Iterator:
    """Output tables (rows.schema), one per batch; the next batch is prepared while one is explained."""
    batches = record_batches(source, skip, batch_size)

    def prepare_next():
        """The next batch prepared, or None at the end."""
        batch = next(batches, None)
        return None if batch is None else explainer.prepare(batch)

    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(prepare_next)
        while True:
            prepared = waiting.result()
            if prepared is None:
                return
            waiting = pool.submit(prepare_next)
            yield explainer.finish(prepared)
