"""Per-op parity for lrpgraph/converters/resize.py: nearest Upsample (opset 9) and Resize (opset 13, by
scales or sizes, two coordinate conventions) with integer scales move relevance back as the values moved,
summed over the copies. Reference: the gradient of torch's repeat_interleave (float64), ops_helpers."""

import pytest
from ops_helpers import Net, check_network, eps_rule, inputs, move, run, t64



def upsample(t):
    return t.repeat_interleave(2, dim=2).repeat_interleave(3, dim=3)


@pytest.mark.parametrize("form", ["upsample9", "scales", "sizes_asymmetric"])
def test_nearest_resize_moves_relevance(form):
    net = Net([3, 6, 6], seed=90, opset=9 if form == "upsample9" else 13)
    h, conv, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    if form == "upsample9":
        up = net.op("Upsample", [h, net.const([1, 1, 2, 3])], mode="nearest")
    elif form == "scales":
        up = net.op("Resize", [h, "", net.const([1, 1, 2, 3])], mode="nearest")
    else:  # sizes include the batch (2 here)
        up = net.op("Resize", [h, "", "", net.ints([2, 4, 12, 18])], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    logits, head = net.head(up, 4 * 12 * 18)
    x = inputs([3, 6, 6], seed=91)
    x64 = t64(x)
    y, relevance = run(net.model(logits), x, rules=["Conv=epsilon:0.01"])
    check_network(x, y, relevance, lambda t: upsample(conv(t)),
                  lambda r: eps_rule(conv, x64, move(upsample, conv(x64), r), 0.01), head)


def test_importer_runs_resize_and_window_selections():
    """The torch importer (train/selection_ops.py) computes what onnxruntime computes for a converted model
    with a nearest Resize and with the GatherND adaptive pooling, relevance included."""
    import numpy as np
    import torch

    import lrpgraph
    from lrpgraph.train.importer import import_onnx
    from zennit_ref import export, run_onnx

    net = Net([3, 6, 6], seed=97, opset=13)
    h, _, _, _ = net.conv("x", 3, 4, pads=[1, 1, 1, 1])
    up = net.op("Resize", [h, "", net.const([1, 1, 2, 3])], mode="nearest")
    logits, _ = net.head(up, 4 * 12 * 18)
    torch.manual_seed(98)
    pooled = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d((4, 4)), torch.nn.Flatten(), torch.nn.Linear(64, 5))
    x = inputs([3, 6, 6], seed=99)
    for model in (net.model(logits), export(pooled.eval(), torch.as_tensor(x))):
        converted = lrpgraph.convert(model, composite="epsilon")
        y, relevance = run_onnx(converted, x)
        module = import_onnx(converted).double()
        out = module.run({module.image_input: torch.as_tensor(x, dtype=torch.float64)})
        np.testing.assert_allclose(out[module.logits_output].detach().numpy(), y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["relevance"].detach().numpy(), relevance, rtol=1e-3, atol=1e-5 * np.abs(relevance).max())
