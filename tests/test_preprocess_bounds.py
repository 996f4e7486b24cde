"""zbox bounds from the stored normalisation: `convert --composite epsilon-gamma-box --mean ... --std ...` (the
model takes normalised input, the preprocessing is metadata) gives the first layer ((0 - mean_c) / std_c,
(255 / scale - mean_c) / std_c), as zennit needs them on the normalised input."""

import numpy as np
import torch

import lrpgraph
from lrpgraph import metadata
from zennit_ref import convert_bytes, export, l1, run_onnx, torchvision_model, zennit_composite, zennit_relevance

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _first_zbox(converted):
    rules = [r for r in metadata.read(converted)[metadata.CONFIG]["rules"].values() if r.startswith("zbox")]
    assert len(rules) == 1, rules
    return [float(v) for part in rules[0].split(":")[1:] for v in part.split(",")]


def test_stored_normalisation_gives_the_first_layer_its_bounds():
    model, canonizers = torchvision_model("resnet18")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    normalised = (x - torch.tensor(MEAN).reshape(1, 3, 1, 1)) / torch.tensor(STD).reshape(1, 3, 1, 1)
    onnx_bytes = export(model, normalised)
    converted = convert_bytes(onnx_bytes, composite="epsilon-gamma-box",
                              preprocess={"mean": list(MEAN), "std": list(STD)})
    low = [(0 - m) / s for m, s in zip(MEAN, STD)]  # the formula, written out
    high = [(1 - m) / s for m, s in zip(MEAN, STD)]
    assert np.allclose(_first_zbox(converted), low + high, rtol=1e-5)  # the rule text has 6 digits
    _, relevance = run_onnx(converted, normalised.numpy())
    comp = zennit_composite("epsilon-gamma-box", low=torch.tensor(low).reshape(1, 3, 1, 1),
                            high=torch.tensor(high).reshape(1, 3, 1, 1), canonizers=canonizers)
    _, ref = zennit_relevance(model, normalised, comp, dtype=torch.float64)
    assert l1(relevance, ref) <= 1e-5, l1(relevance, ref)


def test_scale_sets_the_pixel_range_and_given_bounds_win():
    model, _ = torchvision_model("resnet18")
    onnx_bytes = export(model, torch.rand(1, 3, 32, 32))
    scaled = convert_bytes(onnx_bytes, composite="epsilon-gamma-box", preprocess={"scale": 1.0, "mean": [100.0]})
    assert _first_zbox(scaled) == [-100.0, 155.0]  # pixels 0..255 unscaled, minus 100
    given = convert_bytes(onnx_bytes, composite="epsilon-gamma-box", low=-3.0, high=3.0,
                          preprocess={"mean": list(MEAN), "std": list(STD)})
    assert _first_zbox(given) == [-3.0, 3.0]
    plain = lrpgraph.convert(onnx_bytes, composite="epsilon-gamma-box")
    assert _first_zbox(plain) == [0.0, 1.0]
