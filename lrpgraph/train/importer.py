"""ONNX -> torch: run an ONNX graph (a converted model's forward and relevance path alike) as a torch module.

`import_onnx(path_or_model)` gives an LrpModule that interprets the graph node by node, as torch.fx's
Interpreter does: each op is one small function in OPS, found by its op type (like onnx's reference
evaluator). Every float initializer of the model becomes one nn.Parameter, read by every node that uses
it, so gradients of a heatmap loss reach the real weights through both paths; weight-derived values of
the relevance path (transposes, w+ and w-, folded BatchNorm) are nodes, recomputed in every forward.
Buffers (not trained): BatchNorm running statistics, the converter's own constants (initializers only
the relevance path reads), integer initializers and Constant nodes. BatchNorm always uses its running
statistics. Float ops run in the module's dtype (`.double()` runs all of them, constants too, in float64).
"""

import inspect
import os
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from lrpgraph import graph, metadata, targets
from lrpgraph.converters import is_kind
from lrpgraph.errors import LrpgraphError, NotConvertedError, UnsupportedModelError
from lrpgraph.graph import attrs_of, needed_nodes, topological
from lrpgraph.patterns.constants import constant_value, is_constant

from lrpgraph.train.onnx_ops import OPS, TorchContext
from lrpgraph.train import transformer_ops  # registers LayerNormalization, Gelu in OPS
from lrpgraph.train import selection_ops  # registers GatherND, ScatterND, Resize in OPS

OP_MODULES = (transformer_ops, selection_ops)  # imported only for their @torch_op registrations into OPS
RELEVANCE_PREFIX = "lrp/"  # names of the nodes the converter emits
DERIVED = "derived input"  # a plan step computing a graph input inside the run (LrpModule.run's `derived`)


def _check_signature(node, attrs):
    if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
        raise UnsupportedModelError(f"node '{node.name}' ({node.domain or 'ai.onnx'}:{node.op_type}): the importer "
                                    f"has no torch version of this op; supported: {', '.join(sorted(OPS))}")
    params = inspect.signature(OPS[node.op_type]).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [a for a in attrs if a not in params]
        if unknown:
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}): attribute(s) {unknown} not supported")
    if "_op" in params:
        attrs["_op"] = node.op_type


_RESERVED = set(dir(nn.ParameterDict())) | set(dir(nn.Module()))


def _key(name, taken):
    key = name.replace(".", "_") or "_"
    while key in taken or key in _RESERVED:
        key += "_"
    taken.add(key)
    return key


class LrpModule(nn.Module):
    """A (converted) ONNX model as a torch module. forward(x, target=None, seed=None) -> (logits, relevance);
    run(feeds) -> every graph output; logits(x) -> the plain forward only (works on unconverted models too).

    weights: nn.ParameterDict of the float initializers ('.' in names replaced; onnx_names maps back);
    buffers of `consts`: the rest (BatchNorm statistics, converter constants, integers, Constant nodes)."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.record = metadata.Record.from_model(model)
        self.config = None if self.record is None else self.record.config()
        inits = {i.name: i for i in g.initializer}
        nodes, constants = [], {}
        for node in g.node:
            if is_constant(node):
                value = constant_value(node)
                if value is None:
                    raise UnsupportedModelError(f"Constant node '{node.name}': only tensor, float(s) and int(s) values "
                                                "are supported")
                constants[node.output[0]] = value
            else:
                nodes.append(node)
        nodes = topological(nodes, set(inits) | set(constants) | {i.name for i in g.input})
        stats = {t for n in nodes if is_kind(n, "bn") for t in n.input[3:5]}  # running statistics
        forward_reads = {t for n in nodes if not n.name.startswith(RELEVANCE_PREFIX) for t in n.input}
        self.weights, self.consts = nn.ParameterDict(), nn.Module()
        self.onnx_names, self._where, taken = {}, {}, set()
        for name, init in inits.items():
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            key = _key(name, taken)
            self.onnx_names[key] = name
            if value.is_floating_point() and name not in stats and (name in forward_reads or self.record is None):
                self.weights[key] = nn.Parameter(value)
                self._where[name] = ("weights", key)
            else:
                self.consts.register_buffer(key, value)
                self._where[name] = ("consts", key)
        for name, value in constants.items():
            key = _key(name, taken)
            self.consts.register_buffer(key, torch.from_numpy(np.array(value)))
            self._where[name] = ("consts", key)
        self.nodes = []
        for node in nodes:
            attrs = attrs_of(node, decoded=True)
            _check_signature(node, attrs)
            self.nodes.append((node.op_type, node.name, list(node.input), list(node.output), attrs))
        self.input_names = [i.name for i in g.input if i.name not in inits]
        self.output_names = [o.name for o in g.output]
        record = self.record or metadata.Record()
        self.image_input = record.image_input or self.input_names[0]
        self.logits_output = record.logits_output or self.output_names[0]
        self.relevance_output = record.relevance_outputs[0]
        self._plans = {}

    def tensor(self, onnx_name: str) -> torch.Tensor:
        """The parameter or buffer holding an initializer (by its ONNX name)."""
        where, key = self._where[onnx_name]
        return self.weights[key] if where == "weights" else getattr(self.consts, key)

    def initializer_names(self) -> list:
        """The ONNX names of every initializer the module holds (parameters and buffers)."""
        return list(self.onnx_names.values())

    def _plan(self, outputs, derived=()):
        """(steps, drop): the nodes needed for outputs in order, and the tensors each step reads for the last
        time. derived: (input, source) pairs; each input becomes a step computing it from the tensor source,
        placed after every node that does not depend on it (so the source exists) and before those that do."""
        key = (tuple(outputs), tuple(derived))
        if key not in self._plans:
            nodes = self.nodes
            if derived:
                first, later, reads = [], [], {name for name, _ in derived}
                for node in self.nodes:  # topological: one pass finds everything downstream of the inputs
                    if any(t in reads for t in node[2]):
                        later.append(node)
                        reads.update(node[3])
                    else:
                        first.append(node)
                circular = [f"{name} <- {source}" for name, source in derived if source in reads]
                if circular:
                    raise LrpgraphError(f"derived input(s) {', '.join(circular)}: the source depends on the input")
                nodes = first + [(DERIVED, f"derived/{name}", [source], [name], {}) for name, source in derived] + later
            steps = needed_nodes(nodes, outputs, ends=lambda node: (node[2], node[3]))
            last, drop = {}, [[] for _ in steps]
            for i, node in enumerate(steps):
                for t in node[2]:
                    last[t] = i
            for t, i in last.items():
                if t not in outputs:
                    drop[i].append(t)
            self._plans[key] = (steps, drop)
        return self._plans[key]

    def _float(self):
        for t in list(self.weights.values()) + list(self.consts.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
        return torch.get_default_dtype(), torch.device("cpu")

    def run(self, feeds: dict, outputs: list | None = None, detach: Callable | None = None,
            derived: dict | None = None) -> dict:
        """Run the graph: feeds {input name: tensor or array} -> {output name: tensor} (all graph outputs by
        default). detach: optional predicate on node names; those nodes read the parameters detached (to see
        which path a gradient comes from). derived: {input name: (source tensor, fn)}: that graph input is
        fn(source) computed inside this run (e.g. a relevance seed from the logits: one forward, one
        relevance pass)."""
        dtype, device = self._float()
        ctx = TorchContext(dtype, device, self.opset)
        outputs = list(outputs or self.output_names)
        derived = derived or {}
        env = {name: self.tensor(name) for name in self._where}
        for name, value in feeds.items():
            value = torch.as_tensor(value)
            env[name] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        steps, drop = self._plan(outputs, tuple((name, source) for name, (source, _) in derived.items()))
        missing = {t for node in steps for t in node[2] if t and t not in env} - {
            o for node in steps for o in node[3]}
        if missing:
            raise LrpgraphError(f"missing graph input(s) {sorted(missing)}; feed them by name (inputs: "
                                f"{', '.join(self.input_names)})")
        for i, (op_type, name, inputs, outs, attrs) in enumerate(steps):
            args = [env[t] if t else None for t in inputs]
            if detach is not None and detach(name):
                args = [a.detach() if isinstance(a, nn.Parameter) else a for a in args]
            ctx.outputs = len(outs)
            try:
                result = derived[outs[0]][1](*args) if op_type == DERIVED else OPS[op_type](ctx, *args, **attrs)
            except (RuntimeError, ValueError, IndexError, TypeError, LrpgraphError) as err:
                raise UnsupportedModelError(f"node '{name}' ({op_type}): {str(err).splitlines()[0]}") from err
            result = result if isinstance(result, tuple) else (result,)
            for out, value in zip(outs, result):
                if out:
                    env[out] = value
            for t in drop[i]:
                env.pop(t, None)
        return {o: env[o] for o in outputs}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The plain forward (only the nodes the logits need)."""
        return self.run({self.image_input: x}, [self.logits_output])[self.logits_output]

    def forward(self, x: torch.Tensor, target: torch.Tensor | np.ndarray | None = None,
                seed: torch.Tensor | None = None) -> tuple:
        """(logits, relevance). target: int class per sample [N] (models converted with target 'index');
        seed: [N, C] (target 'seed'); neither for 'top' and 'all'."""
        if self.record is None:
            raise NotConvertedError("this model was not converted by lrpgraph (no lrpgraph.config metadata), so it "
                                    "has no relevance output; convert it with lrpgraph.convert(...) first, or use "
                                    "module.logits(x) / module.run(feeds) for the plain forward")
        mode, feeds = self.record.target, {self.image_input: x}
        given = {"index": (target, targets.TARGET_INPUT, "target"), "seed": (seed, targets.SEED_INPUT, "seed")}
        for m, (value, input_name, arg) in given.items():
            if mode == m and value is None:
                raise LrpgraphError(f"the model was converted with target '{m}': pass {arg}=... to forward")
            if mode == m:
                feeds[input_name] = torch.as_tensor(value, dtype=torch.int64) if m == "index" else value
            elif value is not None:
                raise LrpgraphError(f"the model was converted with target '{mode}'; it takes no {arg} (convert it "
                                    f"with target '{m}' to pass one)")
        out = self.run(feeds, [self.logits_output, self.relevance_output])
        return out[self.logits_output], out[self.relevance_output]


def import_onnx(path_or_model: str | os.PathLike | bytes | onnx.ModelProto) -> LrpModule:
    """An LrpModule from an ONNX file path, serialized bytes or an onnx.ModelProto."""
    return LrpModule(graph.read(path_or_model))
