"""Where a bulk job's output goes: Parquet parts under out/rows/ and out/errors/, and its summary.

Output keeps each input exactly once: rows whose id was written before (by this run, or by an earlier
run when resuming) are dropped and counted as duplicates. Parts are written under a temporary name and
renamed when complete (every ROWS_PER_PART rows and at the end), so a job that is stopped leaves only
whole parts; `--resume` reads the ids in them (done_ids) and the next run skips those inputs. The folder
reads back with pandas.read_parquet(out / "rows") or pyarrow.dataset.

Summary collects, as the rows arrive: counts (inputs, explained, errors, skipped by --resume, duplicates
dropped), the histogram of predicted classes, the mean of every per-image metric column (e.g. the mean
background fraction), and the slowest batch; summary.json gets it at the end.
"""

import hashlib
import json
import math
import os
import time
import uuid
from collections import Counter

from lrpgraph.scale import rows
from lrpgraph.scale.store import Folder, open_input
from lrpgraph.scale.sources import pyarrow

ROWS_PER_PART = 4096
TABLES = ("rows", "errors")


def done_ids(out_dir: str | os.PathLike) -> set:
    """The ids already in out_dir's rows and errors parts (what --resume skips); out_dir may be a URI."""
    pq, ids, folder = pyarrow().parquet, set(), Folder(out_dir)
    for table in TABLES:
        for part in folder.parts(table):
            ids.update(pq.ParquetFile(open_input(part)).read(columns=["id"]).column("id").to_pylist())
    return ids


class Output:
    """Writes output tables (rows.schema, with the error column) as rows and errors parts; drops duplicates."""

    def __init__(self, out_dir: str | os.PathLike, seen: set | None = None, schema: object = None):
        self.out_dir = Folder(out_dir)
        self.run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.seen = set(seen or ())
        self.pending = {table: [] for table in TABLES}
        self.parts = {table: 0 for table in TABLES}
        self.duplicates = 0
        # {table: pyarrow schema}: from the job's output schema, or of the tables seen
        self.schemas = ({} if schema is None else
                        dict(zip(TABLES, (t.schema for t in rows.split(schema.empty_table())))))
        for table in TABLES:
            self.out_dir.make(table)

    def add(self, table: object) -> tuple:
        """Keep the rows of table not seen before; return (explained rows, error rows) kept."""
        pa = pyarrow()
        ids = table.column("id").to_pylist()
        keep = []
        for i, key in enumerate(ids):
            if key in self.seen:
                self.duplicates += 1
            else:
                self.seen.add(key)
                keep.append(i)
        if len(keep) < len(ids):
            table = table.take(pa.array(keep, type=pa.int64()))
        good, bad = rows.split(table)
        for name, part in (("rows", good), ("errors", bad)):
            self.schemas[name] = part.schema
            if part.num_rows:
                self.pending[name].append(part)
                if sum(t.num_rows for t in self.pending[name]) >= ROWS_PER_PART:
                    self._flush(name)
        return good, bad

    def _flush(self, name, empty=False):
        pa, pending = pyarrow(), self.pending[name]
        if not pending and not empty:
            return
        table = pa.concat_tables(pending) if pending else self.schemas[name].empty_table()
        self.out_dir.write_part(name, f"part-{self.run}-{self.parts[name]:05d}.parquet", table)
        self.parts[name] += 1
        self.pending[name] = []

    def close(self) -> None:
        """Write what is pending; a table without any part gets an empty one, so that it reads back with its
        columns."""
        for name in TABLES:
            self._flush(name, empty=name in self.schemas and not self.out_dir.parts(name))


class Summary:
    """Counts, class histogram, metric means and the slowest batch of a job, collected as tables arrive."""

    def __init__(self, inputs: int, skipped: int = 0):
        self.inputs, self.skipped = inputs, skipped
        self.explained = self.errors = 0
        self.classes = Counter()
        self.sums, self.counts = Counter(), Counter()
        self.slowest = None  # (seconds, first id, rows)
        self.batch_seconds, self.batch_rows = {}, Counter()  # by the first id of each batch
        self.started = time.perf_counter()

    def add(self, good: object, bad: object) -> None:
        """Count the kept rows of one output table."""
        self.merge(counts(good, bad))

    def merge(self, found: dict) -> None:
        """Add the counts of one batch (counts(): what a Ray actor that wrote its rows sends the driver)."""
        self.explained += found["explained"]
        self.errors += found["errors"]
        self.classes.update({int(k): v for k, v in found["classes"].items()})
        self.sums.update(found["sums"])
        self.counts.update(found["counts"])
        for first, (seconds, n) in found["batches"].items():
            self.batch_rows[first] += n
            self.batch_seconds[first] = seconds
        if self.batch_seconds:
            first = max(self.batch_seconds, key=self.batch_seconds.get)
            self.slowest = {"seconds": self.batch_seconds[first], "first": first, "rows": self.batch_rows[first]}

    def result(self, labels: list | None = None) -> dict:
        """The summary as a dict (what summary.json holds)."""
        seconds = time.perf_counter() - self.started
        histogram = {str(k): v for k, v in sorted(self.classes.items())}
        if isinstance(labels, list):
            histogram = {f"{k} {labels[int(k)]}" if int(k) < len(labels) else k: v for k, v in histogram.items()}
        return {"inputs": self.inputs, "explained": self.explained, "errors": self.errors, "skipped": self.skipped,
                "classes": histogram, "means": {k: self.sums[k] / self.counts[k] for k in sorted(self.counts)},
                "slowest_batch": self.slowest, "seconds": seconds,
                "images_per_second": self.explained / seconds if seconds > 0 else None}


def counts(good: object, bad: object) -> dict:
    """What Summary counts of one output table's explained rows (good) and error rows (bad), as a JSON-able dict:
    explained, errors, classes {class: rows}, sums and counts of the metric columns, batches {first id:
    [seconds, rows]}."""
    found = {"explained": good.num_rows, "errors": bad.num_rows, "sums": Counter(), "counts": Counter(),
             "classes": Counter(str(k) for k in good.column("predicted").to_pylist()), "batches": {}}
    for name in good.column_names:
        if any(name.endswith("_" + metric) for metric in rows.SUMMARY_METRICS if metric != "sum"):
            for value in good.column(name).to_pylist():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    found["sums"][name] += float(value)
                    found["counts"][name] += 1
    for part in (good, bad):
        for first, seconds in zip(part.column("batch").to_pylist(), part.column("batch_seconds").to_pylist()):
            found["batches"][first] = [seconds, found["batches"].get(first, [0, 0])[1] + 1]
    return found


def write_batch(out_dir: str | os.PathLike, run: str, table: object) -> dict:
    """Write one output table's rows and errors as parts of out_dir (what a Ray actor does with each batch it
    explains); return its counts. A part's name is the run and a digest of the batch's ids, so a batch that Ray
    runs again (its actor died after writing) overwrites its own parts: every input once."""
    good, bad = rows.split(table)
    digest = hashlib.sha1("\n".join(table.column("id").to_pylist()).encode("utf-8")).hexdigest()[:20]
    folder = Folder(out_dir)
    for name, part in (("rows", good), ("errors", bad)):
        if part.num_rows:
            folder.write_part(name, f"part-{run}-{digest}.parquet", part)
    return counts(good, bad)


def write_summary(out_dir: str | os.PathLike, summary: dict) -> None:
    """summary.json in out_dir (a folder or a URI)."""
    Folder(out_dir).write_text("summary.json", json.dumps(summary, indent=2) + "\n")


def format_summary(summary: dict) -> str:
    """The summary as a few lines for the terminal."""
    lines = [f"{summary['explained']} of {summary['inputs']} inputs explained, {summary['errors']} errors, "
             f"{summary['skipped']} skipped (done before), {summary.get('duplicates', 0)} duplicates dropped; "
             f"{summary['seconds']:.1f} s"]
    lines.append("classes: " + ", ".join(f"{k}: {v}" for k, v in summary["classes"].items()))
    for name, mean in summary["means"].items():
        lines.append(f"mean {name}: {mean:.4f}")
    if summary["slowest_batch"]:
        slow = summary["slowest_batch"]
        lines.append(f"slowest batch: {slow['seconds']:.2f} s ({slow['rows']} inputs from {slow['first']})")
    return "\n".join(lines)
