"""Random small CNNs for the property test (tests/test_property.py) and its nightly run
(benchmarks/property_nightly.py): the architecture generator and the torch models (the zennit reference
and the comparison: tests/property_reference.py).

An architecture is plain data (a dict), so that a failing example can be written down and stays a
regression test. The generator draws through a Chooser, so the same code serves hypothesis (the test,
which shrinks failures) and random.Random(seed) (the nightly script, whose seed reproduces an example).
See tests/test_property.py for the keys and for why each choice keeps the comparison well-conditioned.
"""

import random

import torch
from hypothesis import strategies as st
from torch import nn
from zennit.layer import Sum

ACTIVATIONS = ["none", "relu", "leaky", "relu6", "sigmoid", "tanh", "prelu", "hardswish"]
TARGETS = ["top", "index", "seed", "all"]


# ---------------------------------------------------------------- the torch models


def activation(name, ch):
    if name == "prelu":
        return nn.PReLU(ch)  # per-channel slopes, randomised in build()
    return {"none": None, "relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1), "relu6": nn.ReLU6(),
            "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "hardswish": nn.Hardswish()}[name]


class Residual(nn.Module):
    """x + body(x); in the zennit reference the sum is a zennit.layer.Sum module (norm rule)."""

    def __init__(self, body):
        super().__init__()
        self.body, self.sum, self.use_sum = body, Sum(), False

    def forward(self, x):
        y = self.body(x)
        return self.sum(torch.stack([x, y], dim=-1)) if self.use_sum else x + y


class Concat(nn.Module):
    def __init__(self, branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class HardGate(nn.Module):
    """A hard sigmoid written out with a Clip: relu6(v + 3) / 6."""

    def __init__(self):
        super().__init__()
        self.clip = nn.ReLU6()

    def forward(self, v):
        return self.clip(v + 3.0) / 6.0


class Gate(nn.Module):
    """x * g(x). zennit maps this module to Pass: the gate is a constant, all relevance goes to x."""

    def __init__(self, branch):
        super().__init__()
        self.branch = branch

    def forward(self, x):
        return x * self.branch(x)


class MatMulBlock(nn.Module):
    """An nn.Linear on a 4-D tensor, which the exporter writes as MatMul (+ Add for the bias): over the
    channels (NCHW -> NHWC, Linear, back: a 1 x 1 conv as a MatMul) or over the width (no transpose)."""

    def __init__(self, axis, ch, width, out, bias):
        super().__init__()
        self.axis = axis
        self.linear = nn.Linear(ch if axis == "channel" else width, out, bias=bias)

    def forward(self, x):
        if self.axis == "channel":
            # contiguous: a non-contiguous result can make the exporter write an as_strided (Gather) downstream
            return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        return self.linear(x)


def conv_layers(spec, ch):
    """[BN?] Conv [BN?] [act?] as a flat list (so that a Conv and its BatchNorm are siblings)."""
    layers = [nn.BatchNorm2d(ch)] if spec["bn"] in ("before", "both") else []
    layers.append(nn.Conv2d(ch, spec["out"], spec["k"], spec["stride"], spec["pad"], dilation=spec.get("dilation", 1),
                            groups=spec["groups"], bias=spec["bias"]))
    if spec["bn"] in ("after", "both"):
        layers.append(nn.BatchNorm2d(spec["out"]))
    act = activation(spec["act"], spec["out"])
    return layers + ([act] if act is not None else []), spec["out"]


def pool_layer(spec):
    if spec["op"] == "maxpool":
        return nn.MaxPool2d(spec["k"], spec["stride"], spec["pad"], ceil_mode=spec["ceil"])
    return nn.AvgPool2d(spec["k"], spec["stride"], spec["pad"], ceil_mode=spec["ceil"],
                        count_include_pad=spec["include_pad"])


def gate_branch(spec, ch):
    width = 1 if spec["width"] == 1 else ch
    fn = {"sigmoid": nn.Sigmoid(), "hardsigmoid": nn.Hardsigmoid(), "hard": HardGate()}[spec["fn"]]
    if spec["kind"] == "se":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, width, 1), fn)
    return nn.Sequential(nn.Conv2d(ch, width, 3, padding=1), fn)


def build(arch):
    """The torch model of an architecture: seeded random weights, BatchNorm statistics calibrated on a batch."""
    torch.manual_seed(arch["seed"])
    layers, ch = [], arch["in_ch"]
    for spec in arch["blocks"]:
        op = spec["op"]
        if op == "conv":
            new, ch = conv_layers(spec, ch)
            layers += new
        elif op in ("maxpool", "avgpool"):
            layers.append(pool_layer(spec))
        elif op == "residual":
            body = []
            for conv in spec["convs"]:
                body += conv_layers(conv, ch)[0]
            layers.append(Residual(nn.Sequential(*body)))
            act = activation(spec["act"], ch)
            layers += [act] if act is not None else []
        elif op == "concat":
            branches, out = [], 0
            for branch in spec["branches"]:
                if branch in ("identity", "maxpool"):
                    branches.append(nn.Identity() if branch == "identity" else nn.MaxPool2d(3, 1, 1))
                    out += ch
                else:
                    new, width = conv_layers(branch, ch)
                    branches.append(nn.Sequential(*new))
                    out += width
            layers.append(Concat(branches))
            ch = out
        elif op == "gate":
            layers.append(Gate(gate_branch(spec, ch)))
        elif op == "matmul":
            layers.append(MatMulBlock(spec["axis"], ch, spec["width"], spec["out"], spec["bias"]))
            ch = spec["out"] if spec["axis"] == "channel" else ch
        else:
            raise ValueError(op)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, arch["classes"])]
    model = nn.Sequential(*layers).eval()
    generator = torch.Generator().manual_seed(arch["seed"] + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(arch.get("gain", 1.0))
            if isinstance(module, nn.PReLU):
                module.weight.copy_(0.5 * torch.rand(module.num_parameters, generator=generator) - 0.1)
        calibrate(model, arch, generator)
    return model


def calibrate(model, arch, generator):
    """BatchNorm affine parameters random (a quarter of the scales negative, so that folding matters) and the
    running statistics those of the BatchNorm's own input on a calibration batch, as training leaves them."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        n = m.num_features
        sign = torch.where(torch.rand(n, generator=generator) < 0.25, -1.0, 1.0)
        m.weight.copy_(sign * (0.5 + torch.rand(n, generator=generator)))
        m.bias.copy_(0.1 * torch.randn(n, generator=generator))

    def hook(module, inputs):
        module.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        module.running_var.copy_(inputs[0].var((0, 2, 3)) + 1e-3)

    hooks = [m.register_forward_pre_hook(hook) for m in norms]
    shape = (8, arch["in_ch"], arch["size"], arch["size"])
    model(torch.randn(shape, generator=generator).clamp(-3.0, 3.0))
    for h in hooks:
        h.remove()


def image(arch, batch):
    generator = torch.Generator().manual_seed(arch["seed"] + 2)
    x = torch.randn(batch, arch["in_ch"], arch["size"], arch["size"], generator=generator)
    return x.clamp(-3.0, 3.0)


def target_feed(arch, logits):
    """(what run_converted feeds for the target mode, the seed [N, C] put at the float64 logits for zennit)."""
    mode, (n, c) = arch.get("target", "top"), logits.shape
    generator = torch.Generator().manual_seed(arch["seed"] + 3)
    if mode == "all":
        return None, logits.clone()
    if mode == "seed":
        seed = torch.randn(n, c, generator=generator)
        return seed.numpy(), seed.double()
    index = logits.argmax(1) if mode == "top" else torch.randint(0, c, (n,), generator=generator)
    seed = torch.zeros_like(logits)
    seed[torch.arange(n), index] = logits[torch.arange(n), index]
    return (None if mode == "top" else index.numpy()), seed


# ---------------------------------------------------------------- random architectures


class Chooser:
    """Draws from hypothesis (draw) or from a random.Random: pick(options), integer(low, high) inclusive."""

    def __init__(self, draw=None, rng=None):
        self.draw, self.rng = draw, rng

    def pick(self, options):
        options = list(options)
        return self.draw(st.sampled_from(options)) if self.draw else self.rng.choice(options)

    def integer(self, low, high):
        return self.draw(st.integers(low, high)) if self.draw else self.rng.randint(low, high)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def conv_spec(c, ch, size, same=False):
    """A conv block that fits the current size; same: stride 1, 'same' padding, ch channels out."""
    dilation = c.pick([d for d in (1, 2) if 2 * d + 1 <= size] or [1])
    k = c.pick([k for k in (1, 3, 5) if dilation * (k - 1) + 1 <= size] or [1])
    span = dilation * (k - 1) + 1
    groups = c.pick(divisors(ch))
    if same:
        stride, pad, out = 1, span // 2, ch
    else:
        stride, pad = c.pick([1, 2]), c.integer(0, span // 2)
        out = groups * c.integer(1, max(1, 8 // groups))
    spec = {"op": "conv", "out": out, "k": k, "stride": stride, "pad": pad, "dilation": dilation, "groups": groups,
            "bias": c.pick([False, True]), "bn": c.pick(["none", "after", "before", "both"]),
            "act": c.pick(ACTIVATIONS)}
    return spec, out, (size + 2 * pad - span) // stride + 1


def pool_size(spec, size):
    """torch's (and ONNX Runtime's) output size: with ceil_mode, a last window that would start in the
    right padding is dropped."""
    k, stride, pad = spec["k"], spec["stride"], spec["pad"]
    if not spec["ceil"]:
        return (size + 2 * pad - k) // stride + 1
    out = -(-(size + 2 * pad - k) // stride) + 1
    return out - 1 if last_window_in_padding(spec, size) else out


def last_window_in_padding(spec, size):
    k, stride, pad = spec["k"], spec["stride"], spec["pad"]
    out = -(-(size + 2 * pad - k) // stride) + 1
    return spec["ceil"] and (out - 1) * stride >= size + pad


def block(c, op, ch, s):
    """One block after the stem: (spec, channels out, size out)."""
    if op == "conv":
        return conv_spec(c, ch, s)
    if op in ("maxpool", "avgpool"):
        k = c.pick([k for k in (2, 3) if k <= s] or [1])
        spec = {"op": op, "k": k, "stride": c.pick([1, 2]), "pad": c.integer(0, k // 2), "ceil": c.pick([False, True]),
                "include_pad": c.pick([False, True])}
        if spec["ceil"] and last_window_in_padding(spec, s):
            spec["ceil"] = False  # see test_pool_window_starting_in_padding
        return spec, ch, pool_size(spec, s)
    if op == "residual":
        convs = [conv_spec(c, ch, s, same=True)[0] for _ in range(c.integer(1, 2))]
        return {"op": op, "convs": convs, "act": c.pick(["none", "relu"])}, ch, s
    if op == "concat":
        branches, out = [], 0
        for _ in range(2):
            kind = c.pick(["conv", "identity", "maxpool"])
            if kind == "conv":
                branch = conv_spec(c, ch, s, same=True)[0]
                branch["out"] = branch["groups"] * c.integer(1, max(1, 4 // branch["groups"]))
                branches.append(branch)
                out += branch["out"]
            else:
                branches.append(kind)
                out += ch
        return {"op": op, "branches": branches}, out, s
    if op == "gate":
        return {"op": op, "kind": c.pick(["se", "spatial"]), "fn": c.pick(["sigmoid", "hardsigmoid", "hard"]),
                "width": c.pick([1, "all"])}, ch, s
    axis = c.pick(["channel", "width"])
    # 2 channels or more: with one, torch's exporter writes the flatten behind it as an as_strided (Gather
    # over computed indices), which lrpgraph does not support (a one-line UnsupportedModelError)
    out = c.integer(2, 8) if axis == "channel" else s
    return {"op": "matmul", "axis": axis, "width": s, "out": out, "bias": c.pick([False, True])}, \
        (out if axis == "channel" else ch), s


def architecture(c):
    in_ch, size = c.integer(1, 3), c.integer(12, 24)
    stem, ch, s = conv_spec(c, in_ch, size)
    blocks = [stem]
    for _ in range(c.integer(0, 3)):
        spec, ch, s = block(c, c.pick(["conv", "maxpool", "avgpool", "residual", "concat", "gate", "matmul"]), ch, s)
        blocks.append(spec)
    return {"in_ch": in_ch, "size": size, "classes": c.integer(3, 10), "seed": c.integer(0, 2**16),
            "target": c.pick(TARGETS), "blocks": blocks}


@st.composite
def architectures(draw):
    return architecture(Chooser(draw=draw))


def random_architecture(seed):
    """The architecture that random.Random(seed) draws (benchmarks/property_nightly.py)."""
    return architecture(Chooser(rng=random.Random(seed)))
