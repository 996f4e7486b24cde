"""How relevance (or a gradient) crosses each op: one record and one function per op, in the module of
its family (activations, linear, lrn, norm, pooling, quantized, resize, structure); the records live in registry.py."""

from lrpgraph.converters import activations, linear, lrn, norm, pooling, quantized, resize, structure  # noqa: F401  (registration)
from lrpgraph.converters import attention  # noqa: F401,E402  (after structure and linear: it extends their ops)
from lrpgraph.converters.registry import (  # noqa: F401
    KINDS, RECORDS, Context, OpRecord, add, check_rule, explainable, extend, is_kind, record_of, register, remove,
    unsupported_rule)
