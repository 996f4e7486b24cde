"""The vocabulary of pattern units: the graph as a pattern reads it, a pattern (its anchor op, a check, a
rewrite), a match, and a near-miss (a pattern whose anchor and inner nodes matched but whose check failed,
with the reason). A check returns None (the anchor is not the start of this pattern: nothing to report), a
string (the reason it failed, naming the node and what was expected), or a Match."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from onnx import NodeProto

from lrpgraph.graph import attrs_of


def name_of(node: NodeProto) -> str:
    """How messages name a node: its name, or its first output."""
    return node.name or node.output[0]


def described(node: NodeProto) -> str:
    return f"{node.op_type} '{name_of(node)}'"


class Graph:
    """The nodes a pattern may match, with who writes and who reads each tensor, and the constants."""

    def __init__(self, nodes: list, inits: Mapping):
        self.inits = inits
        self.producers = {o: n for n in nodes for o in n.output}
        self.consumers = {}
        for n in nodes:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)

    def producer(self, tensor: str, op: str = None) -> NodeProto | None:
        """The node writing tensor (None for inputs and constants); with op, only a node of that op type."""
        node = self.producers.get(tensor)
        return node if node is not None and (op is None or node.op_type == op) else None

    def only_consumer(self, tensor: str, op: str = None) -> NodeProto | None:
        """The one node reading tensor (None if none or several); with op, only a node of that op type."""
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and (op is None or users[0].op_type == op) else None

    def const(self, name: str) -> np.ndarray | None:
        return np.asarray(self.inits[name]) if name in self.inits else None

    def scalar(self, name: str, value: float) -> bool:
        """Whether name is a one-element constant equal to value (to float32 rounding)."""
        c = self.const(name)
        return c is not None and c.size == 1 and abs(float(c) - value) < 1e-6 * max(1.0, abs(value))

    def axes(self, node: NodeProto) -> list | None:
        """The axes a ReduceMean of a norm reduces (None: unknown, or not kept: the norm divides by it
        broadcast)."""
        attrs = attrs_of(node)
        if not attrs.get("keepdims", 1):
            return None
        if "axes" in attrs:
            return list(attrs["axes"])
        if len(node.input) > 1 and node.input[1] in self.inits:
            return [int(a) for a in self.const(node.input[1])]
        return None


def other(node: NodeProto, tensor: str) -> str:
    """The input of a two-input node that is not tensor."""
    return node.input[1] if node.input[0] == tensor else node.input[0]


@dataclass
class Match:
    """What a check found: the matched nodes (the fused node takes the last one's place), the tensor the fused
    node writes, and the values its rewrite reads."""

    members: list
    output: str
    values: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Pattern:
    """One fusion: the op type of the node a match starts from, the check (graph, anchor) -> Match, reason or
    None, and the rewrite Match -> the synthetic node."""

    name: str
    anchor: str
    check: Callable[[Graph, NodeProto], "Match | str | None"]
    rewrite: Callable[[Match], NodeProto]


class NearMiss(NamedTuple):
    """A pattern that did not fuse although its anchor and inner nodes matched: where, which, and why."""

    node: str
    pattern: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pattern} at '{self.node}': {self.reason}"


def leak(match: Match, graph: Graph) -> str | None:
    """Why the match cannot be one unit: a tensor inside it is read outside it (relevance would be lost
    there); None if it is closed."""
    inside = {id(n) for n in match.members}
    for n in match.members:
        for o in n.output:
            reader = next((c for c in graph.consumers.get(o, []) if id(c) not in inside), None)
            if o != match.output and reader is not None:
                return f"'{o}' (from {described(n)}) is also read outside the pattern, by {described(reader)}"
    return None
