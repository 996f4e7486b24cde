"""Acceptance (runtime 1): ExplainSession on a converted model gives zennit's heatmap of the source torch model."""

import numpy as np
import onnx
import torch

import lrpgraph
from lrpgraph.runtime.session import ExplainSession
from zennit_ref import export, l1, torchvision_model, zennit_composite, zennit_relevance


def test_explain_session_matches_zennit():
    model, canonizers = torchvision_model("resnet18")
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    source = onnx.load_from_string(export(model, x))
    for target_mode in ("top", "index"):
        converted = lrpgraph.convert(source, composite="epsilon-plus", epsilon=0.01, stabilizer=0.01,
                                     target=target_mode)
        session = ExplainSession(converted, provider="cpu")
        logits, relevance = session.explain(x.numpy())
        target = logits.argmax(1)
        if target_mode == "index":
            target = (target + np.arange(len(x))) % logits.shape[1]  # some not the predicted class
            logits, relevance = session.explain(x.numpy(), target=target)
        composite = zennit_composite("epsilon-plus", 0.01, 0.01, canonizers=canonizers)
        _, reference = zennit_relevance(model, x, composite, target=torch.as_tensor(target))
        assert l1(relevance, reference) <= 1e-5, (target_mode, l1(relevance, reference))
