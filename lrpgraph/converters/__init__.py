"""How relevance (or a gradient) crosses each op: one record and one function per op, in the module of
its family (activations, linear, lrn, norm, pooling, quantized, resize, structure); the records live in registry.py."""

# Importing each family module registers its records (the @register decorators run on import).
from lrpgraph.converters import activations, linear, lrn, norm, pooling, quantized, resize, structure
from lrpgraph.converters import attention  # after structure and linear: it extends their ops
from lrpgraph.converters.registry import (
    KINDS, RECORDS, Context, OpRecord, add, check_rule, explainable, extend, is_kind, record_of, register, remove,
    unsupported_rule)

__all__ = [
    # the registry's API, public here
    "KINDS", "RECORDS", "Context", "OpRecord", "add", "check_rule", "explainable", "extend", "is_kind", "record_of",
    "register", "remove", "unsupported_rule",
    # the family modules, imported for their registrations
    "activations", "attention", "linear", "lrn", "norm", "pooling", "quantized", "resize", "structure",
]
