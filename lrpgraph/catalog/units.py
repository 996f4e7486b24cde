"""The data the converter works on: the units canonicalize makes from a graph (Unit, Canonical), the lazy map
of its initializers (Initializers), what a converter may read while it emits (Context), and the check that a
rule applies to a unit."""

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx import numpy_helper

from lrpgraph.catalog.layer import LinearLayer
from lrpgraph.catalog.records import RECORDS
from lrpgraph.errors import UnsupportedModelError


class Initializers(Mapping):
    """Initializer values by name, converted to numpy only when read (weights are rarely needed here)."""

    def __init__(self, initializers: list):
        self._protos = {i.name: i for i in initializers}
        self._arrays = {}
        self._computed = set()

    def add(self, values: dict) -> None:
        """Values the graph computes that are known before it runs (shapes.computed_values): read as constants."""
        self._arrays.update(values)
        self._computed |= set(values)

    def computed(self, name: str) -> bool:
        """Whether name is a value the graph computes (add), not an initializer."""
        return name in self._computed and name not in self._protos

    def __getitem__(self, name):
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._protos[name])
        return self._arrays[name]

    def __contains__(self, name):
        return name in self._protos or name in self._computed

    def __iter__(self):
        return iter(list(self._protos) + [n for n in self._computed if n not in self._protos])

    def __len__(self):
        return len(set(self._protos) | set(self._computed))


@dataclass
class Unit:
    """One explained step: a forward node, or a fused linear layer spanning several nodes."""

    op: str
    name: str  # the forward node's name, used for rule overrides and for naming emitted nodes
    kind: str  # one of catalog.KINDS: the op's record's kind, or what its classify decided
    inputs: list
    outputs: list
    attrs: dict
    layer: LinearLayer = None
    fused: list = field(default_factory=list)  # names of nodes folded into this unit
    first: bool = False  # first linear layer reached from the image input
    upstream: bool = False  # between the image input and the first linear layer
    gate: int = None  # Mul gates: index of the gate input (gets no relevance)
    extra_keys: tuple = ()  # composite keys from where the unit sits, before its record's ('attention': a Softmax
    # whose output a product of two signals takes as its attention probabilities)

    @property
    def keys(self) -> tuple:
        """The composite keys a composite's table is looked up by, most specific first (conv, dense, relu, ...;
        the kind where the record names none), after the unit's extra_keys."""
        return self.extra_keys + RECORDS[self.op].keys_of(self.kind)

    def holds(self, flag: str, inits: Mapping) -> bool:
        """Whether the op record's flag (nonneg_output, keeps_nonneg: a bool or a predicate) holds for this unit."""
        value = getattr(RECORDS[self.op], flag)
        return bool(value(self, inits)) if callable(value) else bool(value)


@dataclass
class Canonical:
    """A graph as the walker explains it: its units in topological order and the facts about its tensors."""

    model: object
    units: list
    input: str  # the explained input: an image, or token ids ([N, L] int64)
    input_shape: list
    logits: str
    outputs_probabilities: bool
    shapes: dict
    inits: dict
    signal: set
    nonneg: set
    float_input: bool = True  # False: the explained input is token ids (its relevance is per token)
    near_misses: list = field(default_factory=list)  # patterns.NearMiss: written-out blocks that did not fuse, why
    k_targets: str | None = None  # K targets per sample: the int64 [1] K; path methods tile their points K times


@dataclass
class Context:
    """What converters may read: the builder, static shapes, initializer values, tensor facts."""

    b: object  # graph.Builder
    shapes: dict
    inits: dict  # name -> numpy array
    signal: set  # tensors that depend on the image input
    nonneg: set = field(default_factory=set)  # tensors known to be >= 0 (ReLU outputs and what only moves them)
    message: str = "relevance"  # "gradient": LRP rules receive and return g = R / x (attn-lrp, cp-lrp)

    def value(self, name: str, unit: Unit, what: str) -> np.ndarray:
        """The numpy value of a constant input, or a clear error naming the node."""
        if name not in self.inits:
            raise UnsupportedModelError(f"node '{unit.name}' ({unit.op}): its {what} ('{name}') must be a constant "
                                        "initializer; fold constants first (e.g. onnxsim) or re-export")
        return self.inits[name]

    def shape(self, name: str, unit: Unit) -> list:
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape[1:]):
            raise UnsupportedModelError(f"node '{unit.name}' ({unit.op}): the shape of '{name}' is unknown or not "
                                        "static beyond the batch; export the model with fixed spatial sizes")
        return shape
