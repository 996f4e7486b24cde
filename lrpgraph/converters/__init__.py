"""How relevance (or a gradient) crosses each op: the emitting half of every op, one function (or a few: an
activation's derivative, a linear op's forward and adjoint passes) per op, in the module of its family
(activations, contrib, linear, lrn, norm, pooling, quantized, resize, structure, attention), attached by op type to
the op's record in the catalog (lrpgraph/catalog/); registry.py holds what they attach."""

# Importing each family module attaches its functions to the catalog's records.
from lrpgraph.catalog import KINDS, RECORDS, Context, OpRecord, add, explainable, is_kind, record_of
from lrpgraph.converters import (
    activations, attention, contrib, linear, lrn, norm, pooling, quantized, resize, structure)
from lrpgraph.converters.registry import (
    EMITTERS, Emitters, attach, converter_of, converts, extend, register, remove, restore)

__all__ = [
    # the catalog's look-ups, public here too
    "KINDS", "RECORDS", "Context", "OpRecord", "add", "explainable", "is_kind", "record_of",
    # the converters' registry
    "EMITTERS", "Emitters", "attach", "converter_of", "converts", "extend", "register", "remove", "restore",
    # the family modules, imported for what they attach
    "activations", "attention", "contrib", "linear", "lrn", "norm", "pooling", "quantized", "resize", "structure",
]
