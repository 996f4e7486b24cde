"""The catalog: what lrpgraph knows about ops and the data it works on, without any code that emits nodes.

- records.py: an OpRecord per op type (its kind, the rules it accepts, sign flags, the hooks that read a
  node of it), KINDS, and the look-ups (record_of, is_kind, explainable);
- linear.py and ops.py: the records of every built-in op, one table per op family;
- contrib.py: onnxruntime's contrib ops that onnxruntime-genai's builder writes (GroupQueryAttention, ...);
- layer.py: a linear layer as data (LinearLayer), how a linear op's node reads as one (LinearOp), and the
  interface its rules emit through (LayerEmitters);
- units.py: the units canonicalize makes (Unit, Canonical, Initializers) and what converters read (Context).

Importing the package fills RECORDS with every built-in record. The converters (lrpgraph/converters/) attach
their emitting functions to these records by op type; analysis code (canonicalize, bounds, metrics, web,
composites, the methods' plans, `lrpgraph inspect`) reads the catalog only."""

from lrpgraph.catalog.contrib import CONTRIB
from lrpgraph.catalog.layer import LayerEmitters, LinearLayer, LinearOp
from lrpgraph.catalog.linear import LINEAR
from lrpgraph.catalog.ops import ACTIVATIONS, NORMS, POOLING, QDQ, RESAMPLING, STRUCTURE, TRANSFORMER
from lrpgraph.catalog.records import (
    KINDS, NO_SIGNAL, RECORDS, UNEXPLAINED, OpRecord, RegistryError, add, add_kind, explainable, is_kind, node_name,
    record, record_of, remove, stops_signal)
from lrpgraph.catalog.units import Canonical, Context, Initializers, Unit

BUILT_IN: list[OpRecord] = LINEAR + ACTIVATIONS + NORMS + STRUCTURE + POOLING + RESAMPLING + TRANSFORMER + CONTRIB
for _record in BUILT_IN:
    add(_record)

__all__ = [
    "KINDS", "RECORDS", "UNEXPLAINED", "BUILT_IN", "QDQ", "OpRecord", "RegistryError", "LinearOp", "LinearLayer",
    "LayerEmitters", "Canonical", "Context", "Initializers", "Unit",
    "add", "add_kind", "explainable", "is_kind", "node_name", "record", "record_of", "remove", "stops_signal",
    "NO_SIGNAL",
]
