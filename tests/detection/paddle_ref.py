"""An independent float64 torch version of the Paddle-exported detectors (tests/paddle_models.py), written from
their ONNX graphs node by node for torch autograd and zennit: every Conv / ConvTranspose (with the BatchNorm
after it folded in, as zennit's canonizers fold it) is an nn module that zennit's composites hook; the rest are
torch functions.

With `lrp=True` the ops between the linear layers carry relevance as L-CRP and zennit's activation rule `Pass`
do: unchanged through activations (Relu, Clip, HardSigmoid, the heads' Sigmoid), through an affine map by
constants (Paddle's Mul / Add / Div by a constant) and from a gated product (x * clip(x + 3, 0, 6), a
squeeze-excitation gate) to its signal, none to the gate; residual Adds pass it to both terms unchanged (the
plain `+` in zennit's graph, lrpgraph's `--rule Add=gradient`). With `lrp=False` it is the plain function,
whose autograd gradient is the reference of lrpgraph's gradient method."""

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

GATES = {"Clip", "HardSigmoid", "Sigmoid"}


class _Pass(torch.autograd.Function):
    """y = f(x) forward, relevance (zennit's grad_output) unchanged backward."""

    @staticmethod
    def forward(ctx, x, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Gated(torch.autograd.Function):
    """signal * gate forward; all relevance to the signal, none to the gate."""

    @staticmethod
    def forward(ctx, signal, gate):
        return signal * gate

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _pass(lrp, x, y):
    return _Pass.apply(x, y) if lrp else y


class PaddleReference(nn.Module):
    def __init__(self, path: str, lrp: bool = False):
        super().__init__()
        model = onnx.load(path)
        self.lrp, self.nodes = lrp, list(model.graph.node)
        self.const = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant":
                self.const[n.output[0]] = torch.from_numpy(numpy_helper.to_array(n.attribute[0].t).copy())
        self.image = model.graph.input[0].name
        self.made = {n.output[0]: n for n in self.nodes}
        consumers = {}
        for n in self.nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        self.layers, self.folded = nn.ModuleDict(), {}
        for n in self.nodes:
            if n.op_type in ("Conv", "ConvTranspose"):
                after = consumers.get(n.output[0], [])
                bn = after[0] if len(after) == 1 and after[0].op_type == "BatchNormalization" else None
                self.layers[str(len(self.layers))] = self._linear(n, bn)
                self.folded[n.output[0]] = (str(len(self.layers) - 1), bn.output[0] if bn else None)
        self.double()

    def _linear(self, node, bn):
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        w = self.const[node.input[1]].double()
        b = self.const[node.input[2]].double() if len(node.input) > 2 and node.input[2] else torch.zeros(
            w.shape[0] if node.op_type == "Conv" else w.shape[1] * a.get("group", 1), dtype=torch.float64)
        transpose = node.op_type == "ConvTranspose"
        if bn is not None:
            scale, shift, mean, var = (self.const[i].double() for i in bn.input[1:5])
            eps = onnx.helper.get_attribute_value(bn.attribute[0]) if bn.attribute[0].name == "epsilon" else 1e-5
            k = scale / torch.sqrt(var + eps)
            w = w * (k.view(1, -1, 1, 1) if transpose else k.view(-1, 1, 1, 1))
            b = (b - mean) * k + shift
        pads = a.get("pads", [0, 0, 0, 0])
        assert pads[:2] == pads[2:], node.name
        cls = nn.ConvTranspose2d if transpose else nn.Conv2d
        out_ch = w.shape[1] * a.get("group", 1) if transpose else w.shape[0]
        in_ch = w.shape[0] if transpose else w.shape[1] * a.get("group", 1)
        layer = cls(in_ch, out_ch, w.shape[2:], stride=a.get("strides", 1), padding=pads[:2],
                    dilation=a.get("dilations", 1), groups=a.get("group", 1)).double()
        layer.weight.data, layer.bias.data = w.clone(), b.clone()
        return layer

    def _is_gate(self, name, depth=0):
        node = self.made.get(name)
        if node is None or depth > 3:
            return False
        if node.op_type in GATES:
            return True
        return node.op_type in ("Div", "Mul", "Add") and any(i in self.const for i in node.input) and \
            self._is_gate(next(i for i in node.input if i not in self.const), depth + 1)

    def forward(self, x, outputs):
        v = {self.image: x}
        for n in self.nodes:
            if n.op_type == "Constant":
                continue
            if n.op_type == "BatchNormalization" and n.output[0] in v:  # folded into the layer before it
                continue
            self._step(n, v)
        return [v[o] for o in outputs]

    def _step(self, n, v):
        def val(i):
            return v[i] if i in v else self.const[i].double() if self.const[i].is_floating_point() else self.const[i]
        ins = [val(i) if i else None for i in n.input]
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        op, lrp = n.op_type, self.lrp
        if op in ("Conv", "ConvTranspose"):
            key, bn_out = self.folded[n.output[0]]
            y = self.layers[key](ins[0])
            v[bn_out or n.output[0]] = y
            if bn_out:
                v[n.output[0]] = y  # never read: the BatchNorm's only input
            return
        if op == "BatchNormalization":  # not after a linear layer: an affine map per channel
            scale, shift, mean, var = ins[1:5]
            k = scale / torch.sqrt(var + a.get("epsilon", 1e-5))
            y = _pass(lrp, ins[0], (ins[0] - mean.view(1, -1, 1, 1)) * k.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
        elif op in ("Add", "Sub", "Mul", "Div"):
            y = self._arith(n, op, ins)
        elif op == "Clip":
            y = _pass(lrp, ins[0], torch.clamp(ins[0], ins[1].item(), ins[2].item()))
        elif op == "Relu":
            y = _pass(lrp, ins[0], torch.relu(ins[0]))
        elif op == "HardSigmoid":
            y = _pass(lrp, ins[0], torch.clamp(ins[0] * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1))
        elif op == "Sigmoid":
            y = _pass(lrp, ins[0], torch.sigmoid(ins[0]))
        elif op == "GlobalAveragePool":
            y = ins[0].mean((2, 3), keepdim=True)
        elif op == "Resize":
            scales = [float(s) for s in ins[2]]
            assert a["mode"] == b"nearest" and scales[2] == int(scales[2]), n.name
            y = F.interpolate(ins[0], scale_factor=scales[2:], mode="nearest")
        elif op == "Concat":
            y = torch.cat(ins, a["axis"])
        elif op == "Split":
            for name, part in zip(n.output, torch.split(ins[0], [int(s) for s in ins[1]], a.get("axis", 0))):
                v[name] = part
            return
        elif op == "Reshape":
            shape = [ins[0].shape[i] if s == 0 else int(s) for i, s in enumerate(ins[1])]
            y = ins[0].reshape(shape)
        elif op == "Transpose":
            y = ins[0].permute(a["perm"])
        else:
            raise NotImplementedError(op)
        v[n.output[0]] = y

    def _arith(self, n, op, ins):
        x, z = ins
        fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
        signals = [i for i in n.input if i not in self.const]
        if not self.lrp:
            return fn(x, z)
        if len(signals) == 1:  # an affine map by a constant: relevance unchanged
            return _Pass.apply(ins[list(n.input).index(signals[0])], fn(x, z))
        if op == "Mul":
            gate = [i for i in (0, 1) if self._is_gate(n.input[i])]
            assert len(gate) == 1, (n.name, gate)
            return _Gated.apply(ins[1 - gate[0]], ins[gate[0]])
        assert op == "Add", n.name
        return x + z


def seeded_heatmap(reference, x, output, seed, composite=None):
    """d(<seed, output>)/dx in float64 with zennit's composite (None: plain autograd); x numpy [N, C, H, W]."""
    xx = torch.as_tensor(np.asarray(x, np.float64)).requires_grad_(True)
    seed = torch.as_tensor(np.asarray(seed, np.float64))
    if composite is None:
        (y,) = reference(xx, [output])
        (heat,) = torch.autograd.grad(y, xx, seed)
        return y.detach().numpy(), heat.numpy()
    with composite.context(reference) as modified:
        (y,) = modified(xx, [output])
        (heat,) = torch.autograd.grad(y, xx, seed)
    return y.detach().numpy(), heat.numpy()
