"""Acceptance: ultralytics YOLOv8n (random weights, exported at 160 px by ultralytics' own exporter from the same
torch model object) matches zennit in float64 on its class scores, for one class score at a chosen anchor and
for K = 4 targets in one call, with composites epsilon-plus-flat and epsilon (L1 relative <= 1e-4).

The reference: zennit on ultralytics' torch model, its Conv + BatchNorm fused as the exporter fuses them, in
float64; SiLU passes relevance (lrpgraph explains x * sigmoid(x) as a gate), the bottlenecks' residual
additions are zennit Sum modules (norm rule), and the seed is put on the head's raw class logits (the output of
each level's last cv3 convolution) with the value of the explained score sigmoid(z): the relevance that
lrpgraph's seed at the Sigmoid output carries through the Sigmoid (L-CRP's choice)."""

import copy

import numpy as np
import pytest
import torch
from zennit.composites import EpsilonPlusFlat, LayerMapComposite, layer_map_base
from zennit.rules import Epsilon, Pass
from zennit.types import Linear

import lrpgraph
from yolo_ref import SIDE, class_scores, yolov8n
from zennit_ref import l1

EPSILON = 1e-6
BOUND = 1e-4
TARGETS = [(0, 37), (5, 210), (79, 404), (12, 522)]  # (class, anchor): every level (400 + 100 + 25 anchors)


def bottleneck_canonizer():
    """ultralytics' Bottleneck `x + cv2(cv1(x))` as a zennit Sum module."""
    from ultralytics.nn.modules.block import Bottleneck
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(self, x):
        return self.canonizer_sum(torch.stack([x, self.cv2(self.cv1(x))], dim=-1))

    def attribute_map(name, module):
        if isinstance(module, Bottleneck) and module.add:
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attribute_map)


def composite(name):
    silu = [(torch.nn.SiLU, Pass())]
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(epsilon=EPSILON, stabilizer=EPSILON, layer_map=silu, canonizers=[bottleneck_canonizer()])
    return LayerMapComposite(layer_map=silu + layer_map_base(EPSILON) + [(Linear, Epsilon(EPSILON))],
                             canonizers=[bottleneck_canonizer()])


def zennit_heatmap(yolo, x, name, target):
    """float64 zennit relevance of the class score (c, a) of the [N, 80, A] scores."""
    model = copy.deepcopy(yolo.model).fuse().eval().double()
    head = model.model[-1]
    raw = []
    hooks = [conv[-1].register_forward_hook(lambda m, i, o: raw.append(o)) for conv in head.cv3]
    c, a = target
    sizes = [(SIDE // s) ** 2 for s in (8, 16, 32)]
    level = int(np.searchsorted(np.cumsum(sizes), a, side="right"))
    pos = a - sum(sizes[:level])
    side = SIDE // (8 * 2 ** level)
    xd = torch.from_numpy(x).double().requires_grad_(True)
    with composite(name).context(model) as modified:
        modified(xd)
        z = raw[level]
        seed = torch.zeros_like(z)
        seed[0, c, pos // side, pos % side] = torch.sigmoid(z[0, c, pos // side, pos % side]).detach()
        (grad,) = torch.autograd.grad(z, xd, seed)
    for hook in hooks:
        hook.remove()
    return grad.numpy()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).random((1, 3, SIDE, SIDE), dtype=np.float32)


@pytest.mark.parametrize("name", ["epsilon-plus-flat", "epsilon"])
def test_yolov8n_class_scores_match_zennit(name, image):
    import onnxruntime as ort

    yolo, path = yolov8n()
    model = lrpgraph.convert(path, composite=name, target="index", from_tensor=class_scores(path),
                             epsilon=EPSILON, stabilizer=EPSILON)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    targets = np.array([TARGETS], np.int64)
    names = [o.name for o in sess.get_outputs()]
    relevance = dict(zip(names, sess.run(None, {"images": image, "target": targets})))["relevance"]
    errors = {}
    for k, target in enumerate(TARGETS):
        ref = zennit_heatmap(yolo, image, name, target)
        errors[target] = l1(relevance[:, k], ref)
    one = dict(zip(names, sess.run(None, {"images": image, "target": targets[:, :1]})))["relevance"]
    errors["one target"] = l1(one[:, 0], zennit_heatmap(yolo, image, name, TARGETS[0]))
    print(f"{name}: L1 {errors}")
    assert max(errors.values()) <= BOUND, errors
