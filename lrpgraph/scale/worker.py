"""Explainer: the callable that turns a batch of records into output rows (rows.py), with one ExplainSession.

Both engines use it: the local engine calls one Explainer in its own process, the Ray engine gives it to
`map_batches` as a callable class, so each actor opens one ExplainSession and keeps it for every batch.
A record that cannot be loaded (unreadable image or mask, a target out of range, a NaN heatmap) becomes
an error row; the batch goes on. JobOptions holds what a job asks for and travels to the actors.
"""

import dataclasses
import io
import json
import time

import numpy as np

from lrpgraph.errors import LrpgraphError
from lrpgraph.scale import rows
from lrpgraph.scale.decode import black, load_input, load_mask
from lrpgraph.scale.sources import NO_TARGET


@dataclasses.dataclass
class JobOptions:
    """What a bulk job computes. target: one class for every record without its own target (None: the
    predicted class). heatmaps: store the relevance arrays (dtype float32 or float16); png: also as PNGs
    (cmap). masks: records carry masks (background fraction and pointing game). metrics: any of deletion,
    insertion, conservation (step and fill as in `lrpgraph evaluate`). preprocess: overrides of the model's
    stored preprocessing. columns: {role: column} for datasets whose columns are named otherwise (roles:
    id, path, image, mask, target, tokens, text). tokenizer: a tokenizer.json's text (token models given texts;
    also names the tokens in the rows)."""

    target: int | None = None
    provider: str | None = None
    threads: int | None = None
    batch_size: int = 32
    heatmaps: bool = True
    dtype: str = "float32"
    png: bool = False
    cmap: str = "bwr"
    masks: bool = False
    metrics: tuple = ()
    step: int | None = None
    fill: str | float = "black"
    preprocess: dict | None = None
    columns: dict | None = None
    tokenizer: str | None = None

    def check(self) -> "JobOptions":
        """Raise LrpgraphError for a value out of range; return self."""
        if self.dtype not in rows.DTYPES:
            raise LrpgraphError(f"relevance dtype must be float32 or float16, got {self.dtype!r}")
        unknown = [m for m in self.metrics if m not in rows.PERTURBATION_METRICS]
        if unknown:
            raise LrpgraphError(f"unknown metric {', '.join(unknown)}; bulk runs compute "
                                f"{', '.join(rows.PERTURBATION_METRICS)} (and background, pointing with masks)")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise LrpgraphError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        return self


def open_session(model: object, options: JobOptions) -> object:
    """The ExplainSession of a job, with the preprocessing overrides applied (image models) or the options
    checked (token models)."""
    from lrpgraph.checks import check_preprocess
    from lrpgraph.runtime.session import ExplainSession

    session = ExplainSession(model, provider=options.provider, threads=options.threads,
                             batch_size=options.batch_size)
    if session.tokens:
        from lrpgraph.scale.tokens import check_options

        check_options(session, options)
    elif options.preprocess:
        session.preprocess = {**(session.preprocess or {}), **options.preprocess}
        check_preprocess(session.preprocess, session.input_shape, session.name)
    session.check_target(options.target)
    return session


def output_schema(session: object, options: JobOptions) -> object:
    """The output rows' schema of a job (rows.schema, or rows.token_schema for a token model)."""
    if session.tokens:
        return rows.token_schema(session.relevance_output, options.heatmaps, options.dtype, bool(options.tokenizer))
    return rows.schema(list(session.relevance_outputs), options.heatmaps, options.dtype, options.png, options.masks,
                       tuple(options.metrics))


def _column(batch, name, n):
    """The values of column name as a list (None for each row where the batch lacks it)."""
    if name is None:
        return [None] * n
    if hasattr(batch, "column_names"):
        return batch.column(name).to_pylist() if name in batch.column_names else [None] * n
    return list(batch[name]) if name in batch else [None] * n


def _length(batch):
    return batch.num_rows if hasattr(batch, "num_rows") else len(next(iter(batch.values()), []))


class Explainer:
    """explainer(batch) -> output table (rows.schema): a batch of records (a pyarrow table or a dict of
    columns) explained with one ExplainSession opened on construction. With out ({"dir": output folder or URI,
    "run": the job's run id}) it writes the rows itself (output.write_batch) and returns only their counts, a
    table with one JSON string (what the Ray engine's driver receives)."""

    def __init__(self, model: object, options: JobOptions | None = None, out: dict | None = None):
        self.options = options = (options or JobOptions()).check()
        self.model = model
        self.session = open_session(model, options)
        self.out = out
        self.tokens = None  # a token model's TokenRows (scale/tokens.py): loads and explains its records
        if self.session.tokens:
            from lrpgraph.scale.tokens import TokenRows

            self.tokens = TokenRows(self.session, options)
        self.schema = output_schema(self.session, options)
        extra = {name: name for name in self.tokens.extra} if self.tokens is not None else {}
        self.columns = {"id": "id", "path": "path", "image": "image", "mask_path": "mask_path", "mask": "mask",
                        "target": "target", "problem": "problem", "tokens": "tokens", "text": "text",
                        "extra": "extra", **extra, **(options.columns or {})}
        self.classifier = None  # the plain model part, opened for the first deletion / insertion

    def records(self, batch: object) -> dict:
        """{role: list} of a batch; the id falls back to the path column (ray.data.read_images' `path`)."""
        n = _length(batch)
        found = {role: _column(batch, name, n) for role, name in self.columns.items()}
        if all(key is None for key in found["id"]):
            found["id"] = found["path"]
        if any(key is None for key in found["id"]):
            raise LrpgraphError("every record needs an id or a path column (ray.data.read_images(..., "
                                "include_paths=True) gives `path`)")
        found["id"] = [str(key) for key in found["id"]]
        return found

    def __call__(self, batch: object) -> object:
        table = self.finish(self.prepare(batch))
        if self.out is None:
            return table
        from lrpgraph.scale.output import write_batch

        found = write_batch(self.out["dir"], self.out["run"], table)
        return rows.pyarrow().table({"counts": [json.dumps(found)]})

    def prepare(self, batch: object) -> dict:
        """Load and decode the records of a batch: {"ids", "loaded" {i: (array, mask, target)}, "failed"
        {i: message}, "seconds"}. The local engine prepares the next batch while finish runs this one."""
        started = time.perf_counter()
        found = self.records(batch)
        ids, loaded, failed = found["id"], {}, {}
        for i, key in enumerate(ids):
            try:
                loaded[i] = self._load(found, i)
            except LrpgraphError as error:
                failed[i] = str(error)
            except Exception as error:  # an odd record must not stop the job; the message names it
                failed[i] = f"cannot read {key}: {type(error).__name__}: {error}"
        return {"ids": ids, "loaded": loaded, "failed": failed, "seconds": time.perf_counter() - started}

    def finish(self, prepared: dict) -> object:
        """The output table of a prepared batch; batch_seconds is the time spent preparing and finishing it."""
        started = time.perf_counter()
        ids, loaded, failed = prepared["ids"], prepared["loaded"], prepared["failed"]
        columns = self._explain(ids, loaded, failed)
        seconds = prepared["seconds"] + time.perf_counter() - started
        first = ids[0] if ids else ""
        good = [i for i in sorted(loaded) if i not in failed]
        columns.update(batch=[first] * len(good), batch_seconds=[seconds] * len(good))
        ok = rows.build(self.schema, columns, len(good))
        bad = sorted(failed)
        return rows.pyarrow().concat_tables([ok, rows.errors(self.schema, [ids[i] for i in bad],
                                                             [failed[i] for i in bad], first, seconds)])

    def _load(self, found, i):
        """(input array, mask or None, target or None) of record i; LrpgraphError when it cannot be used."""
        if self.tokens is not None:
            return self.tokens.load(found, i)
        name, session = found["id"][i], self.session
        if found["problem"][i]:
            raise LrpgraphError(found["problem"][i])
        source = found["image"][i] if found["image"][i] is not None else found["path"][i]
        array = load_input(source, name, session.preprocess, session.input_shape)
        mask = None
        if self.options.masks:
            given = found["mask"][i] if found["mask"][i] is not None else found["mask_path"][i]
            if given is None:
                raise LrpgraphError(f"{name} has no mask")
            mask = load_mask(given, name, session.preprocess, session.input_shape)
        target = found["target"][i]
        target = None if target is None or (not isinstance(target, str) and np.isnan(target)) or target == NO_TARGET \
            else int(target)
        if target is not None and session.num_classes is not None and not 0 <= target < session.num_classes:
            raise LrpgraphError(f"{name}: target class {target} is out of range: the model has "
                                f"{session.num_classes} classes (0 to {session.num_classes - 1})")
        return array, mask, target

    def _explain(self, ids, loaded, failed):
        """The columns of the loaded records (those with their own target run apart); a record whose heatmap or
        logits are not finite moves to failed."""
        if self.tokens is not None:
            return self.tokens.explain(ids, loaded, failed)
        order = sorted(loaded)
        if not order:
            return {}
        x = np.stack([loaded[i][0] for i in order])
        logits, maps, explained = self._run(x, [loaded[i][2] for i in order])
        nan = [k for k in range(len(order)) if not np.isfinite(logits[k]).all()
               or not all(np.isfinite(m[k]).all() for m in maps.values())]
        for k in nan:
            failed[order[k]] = (f"{ids[order[k]]}: the heatmap or the logits hold NaN or infinite values; convert "
                                "the model with finite, non-negative rule parameters (e.g. --epsilon 1e-6)")
        keep = np.array([k for k in range(len(order)) if k not in set(nan)], dtype=np.int64)
        masks = np.stack([loaded[order[k]][1] for k in keep]) if self.options.masks and keep.size else None
        return self._columns([ids[order[k]] for k in keep], x[keep], logits[keep],
                             {o: m[keep] for o, m in maps.items()}, None if explained is None else explained[keep],
                             masks)

    def _run(self, x, targets):
        """(logits, {output: relevance}, explained or None) with per-record targets where given."""
        session, n = self.session, len(x)
        own = np.array([t is not None for t in targets])
        groups = [(np.nonzero(~own)[0], self.options.target),
                  (np.nonzero(own)[0], np.array([t for t in targets if t is not None], dtype=np.int64))]
        logits, maps, explained = None, {}, None
        for index, target in groups:
            if not index.size:
                continue
            part_logits, relevance, part_explained = session.explain(x[index], target, return_targets=True)
            relevance = relevance if isinstance(relevance, dict) else {session.relevance_output: relevance}
            if logits is None:
                logits = np.zeros((n, part_logits.shape[1]), np.float32)
                maps = {o: np.zeros((n,) + r.shape[1:], np.float32) for o, r in relevance.items()}
            logits[index] = part_logits
            for o, r in relevance.items():
                maps[o][index] = r
            if part_explained is not None:
                explained = np.full(n, -1, np.int64) if explained is None else explained
                explained[index] = part_explained
        return logits, maps, explained

    def _columns(self, ids, x, logits, maps, explained, masks):
        """The output columns of the explained rows."""
        from lrpgraph import metrics

        session, options = self.session, self.options
        probabilities = logits.astype(np.float64) if session.outputs_probabilities else metrics.softmax(logits)
        predicted = probabilities.argmax(axis=1) if len(ids) else np.zeros(0, np.int64)
        labels = session.labels if isinstance(session.labels, list) else None
        columns = {"id": ids, "predicted": predicted.astype(np.int64),
                   "predicted_label": [str(labels[p]) if labels and p < len(labels) else None for p in predicted],
                   "probability": probabilities[np.arange(len(ids)), predicted], "explained": explained,
                   "logits": logits.astype(np.float32)}
        classes = explained if explained is not None else predicted
        for output, relevance in maps.items():
            flat = relevance.reshape(len(ids), -1)
            if options.heatmaps:
                columns["shape"] = [list(relevance.shape[1:])] * len(ids)
                columns[output] = flat.astype(options.dtype)
            if options.png:
                columns[f"{output}_png"] = [_png(r, options.cmap) for r in relevance]
            columns[f"{output}_sum"] = flat.astype(np.float64).sum(axis=1)
            if masks is not None:
                columns[f"{output}_background_fraction"] = metrics.background_fraction(relevance, masks)
                columns[f"{output}_pointing_hit"] = metrics.pointing_game(relevance, masks)
            columns.update(self._perturbation(output, x, relevance, classes, logits))
        return columns

    def _perturbation(self, output, x, relevance, classes, logits):
        """Deletion / insertion AUC and the conservation error of one output, as `lrpgraph evaluate` has them."""
        from lrpgraph import metrics

        options, found = self.options, {}
        if {"deletion", "insertion"} & set(options.metrics) and self.classifier is None:
            self.classifier = metrics.Classifier(self.model, options.provider, options.threads)
        if "deletion" in options.metrics:
            fill = (black(self.session.preprocess, self.session.input_shape) if str(options.fill).lower() == "black"
                    else float(options.fill))
            found[f"{output}_deletion_auc"] = metrics.deletion(self.classifier, x, relevance, classes, options.step,
                                                               fill).auc
        if "insertion" in options.metrics:
            found[f"{output}_insertion_auc"] = metrics.insertion(self.classifier, x, relevance, classes,
                                                                 options.step).auc
        if "conservation" in options.metrics:
            found[f"{output}_conservation_error"] = metrics.conservation_error(
                relevance, self._seed_sums(output, logits, classes))
        return found

    def _seed_sums(self, output, logits, classes):
        """The seed sum LRP relevance conserves (NaN for gradient-family outputs)."""
        record = self.session.record
        if record.is_gradient(output):
            return np.full(len(classes), np.nan)
        if record.target == "all":
            return logits.astype(np.float64).sum(axis=1)
        return logits[np.arange(len(classes)), classes].astype(np.float64)


def _png(relevance, cmap):
    """The heatmap as PNG bytes (lrpgraph explain's colours)."""
    from PIL import Image

    from lrpgraph.runtime import render

    buffer = io.BytesIO()
    Image.fromarray(render.heatmap_rgb(relevance, cmap)).save(buffer, format="PNG")
    return buffer.getvalue()
