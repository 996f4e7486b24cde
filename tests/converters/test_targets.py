"""Model-level cases of the per-op parity tests: the target modes (which output is explained) and an output
Softmax / LogSoftmax (explained from the logits before it). References and helpers: ops_helpers."""

import numpy as np
import pytest
import torch
from ops_helpers import CLASSES, Net, assert_l1, check_network, conv_relu, eps_rule, inputs, l1, run, t64


# ================================================================================== target modes
def small_cnn(seed=20):
    """x [3, 8, 8] -> Conv(pad 1) -> Relu -> Flatten -> Gemm(5): (model, forward, backward, head)."""
    net = Net([3, 8, 8], seed=seed)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    a = net.op("Relu", [h])
    logits, head = net.head(a, 4 * 64)
    return net.model(logits), (lambda x: torch.relu(conv(x))), (lambda r, x: eps_rule(conv, x, r)), head


@pytest.mark.parametrize("mode", ["top", "index", "seed", "all"])
def test_target_modes(mode):
    model, forward, backward, head = small_cnn()
    x = inputs([3, 8, 8], seed=21, batch=3)
    index = np.array([4, 0, 2]) if mode == "index" else None
    seed = np.random.default_rng(22).standard_normal((3, CLASSES)).astype(np.float32) if mode == "seed" else None
    y, relevance = run(model, x, target=mode, index=index, seed=seed)
    x64 = t64(x)
    h = forward(x64)
    logits = head(h)
    np.testing.assert_allclose(y, logits.numpy(), rtol=1e-4, atol=1e-5)
    if mode in ("top", "index"):
        chosen = y.argmax(1) if mode == "top" else index
        onehot = torch.zeros_like(logits)
        onehot[torch.arange(3), torch.as_tensor(chosen)] = 1.0
        r_out = logits * onehot
    else:
        r_out = t64(seed) if mode == "seed" else logits
    ref = backward(eps_rule(head, h, r_out), x64).numpy()
    assert_l1(relevance, ref)
    if mode == "index":  # another class gives another heatmap
        _, other = run(model, x, target=mode, index=(index + 1) % CLASSES)
        assert l1(other, ref) > 1e-2


# ================================================================================== output softmax
@pytest.mark.parametrize("final", ["Softmax", "LogSoftmax"])
def test_final_softmax_is_not_explained_through(final):
    """A Softmax/LogSoftmax producing the output: the model still returns it, and the relevance explains
    the pre-softmax logit of the top class."""
    net = Net([3, 8, 8], seed=120)
    a, forward, conv = conv_relu(net)
    logits, head = net.head(a, 4 * 64)
    x = inputs([3, 8, 8], seed=121)
    probs, relevance = run(net.model(logits, final=final), x)
    x64 = t64(x)
    z = head(forward(x64))
    expected = torch.softmax(z, 1) if final == "Softmax" else torch.log_softmax(z, 1)
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-4, atol=1e-6)
    check_network(x, z.numpy(), relevance, forward, lambda r: eps_rule(conv, x64, r), head)
