"""Per-op parity for lrpgraph/converters/activations.py: every element-wise activation passes relevance
unchanged. References and helpers: ops_helpers."""

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import Net, check_network, eps_rule, inputs, run, t64

ACTIVATIONS = {
    "Relu": (dict(), lambda t: torch.relu(t)),
    "LeakyRelu": (dict(alpha=0.2), lambda t: F.leaky_relu(t, 0.2)),
    "PRelu": ("slope", None),
    "Clip_relu6": ("clip:0:6", lambda t: t.clamp(0, 6)),
    "Clip_sym": ("clip:-0.5:0.5", lambda t: t.clamp(-0.5, 0.5)),
    "Sigmoid": (dict(), torch.sigmoid),
    "Tanh": (dict(), torch.tanh),
    "HardSigmoid": (dict(alpha=0.3, beta=0.4), lambda t: (0.3 * t + 0.4).clamp(0, 1)),
    "HardSwish": (dict(), lambda t: t * (t / 6 + 0.5).clamp(0, 1)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_passes(name):
    """x -> Conv -> activation -> head: the activation passes relevance unchanged (docs/rules.md: 'pass').

    The Conv uses epsilon = 0.01 rather than 1e-6: Sigmoid and HardSigmoid pass relevance that does not
    vanish where the Conv's z does, and R / (z + 1e-6) at a z ~ 1e-5 magnifies float32 rounding of z
    beyond 1e-5 (measured: 1.1e-5 for Sigmoid); with 0.01 the comparison tests the pass rule, not rounding."""
    spec, fn = ACTIVATIONS[name]
    net = Net([3, 8, 8], seed=50)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    op = name.split("_")[0]
    if spec == "slope":
        slope = net.rng.uniform(0.05, 0.5, (4, 1, 1))
        a = net.op("PRelu", [h, net.const(slope)])
        s = t64(slope)
        fn = lambda t: torch.where(t > 0, t, t * s)  # noqa: E731
    elif isinstance(spec, str):
        low, high = (float(v) for v in spec.split(":")[1:])
        a = net.op("Clip", [h, net.const(low), net.const(high)])
    else:
        a = net.op(op, [h], **spec)
    logits, head = net.head(a, 4 * 64)
    x = inputs([3, 8, 8], seed=51)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])
    check_network(x, y, relevance, lambda t: fn(conv(t)), lambda r: eps_rule(conv, t64(x), r, 0.01), head)
