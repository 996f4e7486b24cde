"""The one output row schema of bulk runs: one row per input, as a pyarrow table (written as Parquet).

Columns, in this order (O stands for each heatmap output of the model: `relevance`, or `relevance_NAME`
for a model converted with several --explain NAME=SPEC):
  id                      the input's path as found, or its Parquet id (`<file>#<row>` without an id column)
  predicted               the class with the highest probability (int64)
  predicted_label         its label from the model's metadata (null without labels)
  probability             its softmax probability (the model's own output where it outputs probabilities)
  explained               the class explained (null for target 'all')
  logits                  list<float32>, the model's logits
  shape                   list<int32>, [C, H, W] of every heatmap (with heatmaps)
  O                       list<float32 or float16>, the heatmap flattened in C, H, W order (with heatmaps)
  O_png                   binary, the heatmap as a PNG (with png)
  O_sum                   float64, the total relevance
  O_background_fraction   float64, sum(|R| outside the mask) / sum(|R|) (with masks)
  O_pointing_hit          bool, the heatmap's peak lies inside the mask (with masks)
  O_deletion_auc, O_insertion_auc, O_conservation_error   float64 (with those metrics)
  batch                   the id of the first input of the batch this row was computed in
  batch_seconds           float64, that batch's wall time in the worker
  error                   null for an explained input; else why it failed (the row has no other values)
Token models (token_schema) have the same columns up to logits, then tokens (list<int64>, the token ids),
token_strings (list<string>, with a tokenizer), shape ([L]), O (the relevance per token), O_sum, batch,
batch_seconds and error.
Rows with an error go to the errors table (id, error, batch, batch_seconds), the others to the rows table.
A heatmap reads back without lrpgraph: np.asarray(row["relevance"]).reshape(row["shape"]).
"""

import numpy as np

from lrpgraph.scale.sources import pyarrow

SUMMARY_METRICS = ("sum", "background_fraction", "pointing_hit", "deletion_auc", "insertion_auc",
                   "conservation_error")
MASK_METRICS = ("background_fraction", "pointing_hit")
PERTURBATION_METRICS = ("deletion", "insertion", "conservation")
DTYPES = ("float32", "float16")
ERROR_COLUMNS = ("id", "error", "batch", "batch_seconds")


def metric_columns(output: str, masks: bool, metrics: tuple) -> list:
    """The per-image summary columns of one heatmap output."""
    names = ["sum"] + (list(MASK_METRICS) if masks else [])
    names += [{"deletion": "deletion_auc", "insertion": "insertion_auc",
               "conservation": "conservation_error"}[m] for m in PERTURBATION_METRICS if m in metrics]
    return [f"{output}_{name}" for name in names]


def schema(outputs: list, heatmaps: bool = True, dtype: str = "float32", png: bool = False, masks: bool = False,
           metrics: tuple = ()) -> object:
    """The pyarrow schema of the output rows of a model with these heatmap outputs."""
    pa = pyarrow()
    fields = [("id", pa.string()), ("predicted", pa.int64()), ("predicted_label", pa.string()),
              ("probability", pa.float64()), ("explained", pa.int64()), ("logits", pa.list_(pa.float32()))]
    if heatmaps:
        fields.append(("shape", pa.list_(pa.int32())))
    for output in outputs:
        if heatmaps:
            fields.append((output, pa.list_(pa.float16() if dtype == "float16" else pa.float32())))
        if png:
            fields.append((f"{output}_png", pa.binary()))
        fields += [(name, pa.bool_() if name.endswith("pointing_hit") else pa.float64())
                   for name in metric_columns(output, masks, metrics)]
    fields += [("batch", pa.string()), ("batch_seconds", pa.float64()), ("error", pa.string())]
    return pa.schema(fields)


def token_schema(output: str, heatmaps: bool = True, dtype: str = "float32", strings: bool = False) -> object:
    """The pyarrow schema of the output rows of a token model whose heatmap output is output."""
    pa = pyarrow()
    fields = [("id", pa.string()), ("predicted", pa.int64()), ("predicted_label", pa.string()),
              ("probability", pa.float64()), ("explained", pa.int64()), ("logits", pa.list_(pa.float32())),
              ("tokens", pa.list_(pa.int64()))]
    fields += [("token_strings", pa.list_(pa.string()))] if strings else []
    fields += [("shape", pa.list_(pa.int32()))]
    fields += [(output, pa.list_(pa.float16() if dtype == "float16" else pa.float32()))] if heatmaps else []
    fields += [(f"{output}_sum", pa.float64()), ("batch", pa.string()), ("batch_seconds", pa.float64()),
               ("error", pa.string())]
    return pa.schema(fields)


def _array(pa, values, kind):
    """A pyarrow array of type kind from a list, or from a 2-D numpy array for list types (fast path)."""
    if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_list(kind):
        n, width = values.shape
        flat = pa.array(np.ascontiguousarray(values).reshape(-1).astype(kind.value_type.to_pandas_dtype()))
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), flat)
    return pa.array(values if not isinstance(values, np.ndarray) else values.tolist()
                    if values.dtype == object else values, type=kind)


def build(row_schema: object, columns: dict, n: int) -> object:
    """A table of n rows: each column of row_schema from columns (a list or array of n values), null where
    absent."""
    pa = pyarrow()
    arrays = [_array(pa, columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
              for f in row_schema]
    return pa.Table.from_arrays(arrays, schema=row_schema)


def errors(row_schema: object, ids: list, messages: list, batch: str, seconds: float) -> object:
    """Rows for inputs that failed: id and error, everything else null."""
    n = len(ids)
    return build(row_schema, {"id": ids, "error": messages, "batch": [batch] * n, "batch_seconds": [seconds] * n},
                 n)


def split(table: object) -> tuple:
    """(explained rows without the error column, error rows with ERROR_COLUMNS) of an output table."""
    pa = pyarrow()
    failed = table.column("error").is_valid()
    good = table.filter(pa.compute.invert(failed)).drop_columns(["error"])
    bad = table.filter(failed).select(list(ERROR_COLUMNS))
    return good, bad
