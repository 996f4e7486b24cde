"""Small transformers with random weights, exported to ONNX the way users do (torch.onnx.export, dynamo,
dynamic batch), for the transformer tests. Every parameter is drawn at random (biases, LayerNorm scales and
shifts, class token, position embedding too) so that no rule can hide behind a zero or a one."""

import torch

VIT = dict(image_size=64, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)
BERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2, num_labels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)


def randomize(model, seed=0, bias=True, constants=True):
    """Weights as initialised (N(0, 1/fan_in) where that is zero); biases, norm shifts N(0, 0.1) (zero if not
    bias); norm scales 1 + N(0, 0.1); embeddings N(0, 0.5) (without constants: class token and position
    embeddings zero, so that nothing but the input carries relevance)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith("bias"):
                p.copy_(noise * 0.1 if bias else torch.zeros_like(p))
            elif p.dim() == 1 or "ln" in name.split(".")[-2:][0] or "LayerNorm" in name:
                p.copy_(1 + 0.1 * noise)
            elif "embedding" in name or "class_token" in name:
                p.copy_(0.5 * noise if constants or "word" in name else torch.zeros_like(p))
            elif "layer_scale" in name:  # ConvNeXt starts it at 1e-6: blocks would hardly count
                p.copy_(0.5 + 0.1 * noise)
            elif not p.any():  # torchvision's ViT head starts at zero
                p.copy_(noise / p.shape[-1] ** 0.5)
    return model.eval()


def vit(seed=0, bias=True, constants=True, full=False):
    """The small ViT of the tests, or torchvision's vit_b_16 (224 px) with full."""
    from torchvision.models import vit_b_16
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return randomize(vit_b_16() if full else VisionTransformer(**VIT), seed, bias, constants)


def convnext(seed=0, tiny=False):
    """torchvision's ConvNeXt: convnext_tiny, or the same architecture with 4 stages of one block (16-128
    channels) for CI."""
    from torchvision.models import convnext_tiny
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(seed)
    if tiny:
        return randomize(convnext_tiny(), seed)
    stages = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, 128, 1), CNBlockConfig(128, None, 1)]
    return randomize(ConvNeXt(stages, num_classes=10), seed)


def bert(seed=0, bias=True):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(**BERT, attn_implementation="eager")
    return randomize(BertForSequenceClassification(config), seed, bias)


def export_image_model(model, example):
    """ONNX bytes (opset of the dynamo exporter, weights inside, dynamic batch)."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model.eval(), (example,), None, external_data=False, verbose=False,
                                dynamic_shapes=({0: batch},))
    return program.model_proto.SerializeToString()


def export_either(model, x, dynamo):
    """A one-input model as an onnx.ModelProto with a dynamic batch: the dynamo exporter, or the legacy
    TorchScript one at opset 17 (the two write the same layers in different idioms)."""
    import io

    import onnx

    if dynamo:
        return torch.onnx.export(model.eval(), (x,), None, dynamo=True, verbose=False,
                                 dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).model_proto
    f = io.BytesIO()
    torch.onnx.export(model.eval(), (x,), f, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


class _Logits(torch.nn.Module):
    """BertForSequenceClassification returning the logits tensor (what a deployed classifier exports)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def export_text_model(model, ids, mask, types):
    """ONNX bytes with inputs input_ids, attention_mask, token_type_ids (dynamic batch and length)."""
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2, max=BERT["max_position_embeddings"])
    dims = {0: batch, 1: length}
    program = torch.onnx.export(_Logits(model).eval(), (ids, mask, types), None, external_data=False, verbose=False,
                                input_names=["input_ids", "attention_mask", "token_type_ids"],
                                output_names=["logits"], dynamic_shapes=(dims, dims, dims))
    return program.model_proto.SerializeToString()


def text_batch(n=3, length=12, seed=1):
    """Token ids with padding (sample 1 ends after 8 tokens, sample 2 after 5), segments 0 then 1."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, BERT["vocab_size"], (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    for i, end in enumerate([length, 8, 5][:n]):
        mask[i, end:] = 0
        ids[i, end:] = 0  # the pad token
    types = torch.zeros(n, length, dtype=torch.long)
    types[:, length // 2:] = 1
    return ids, mask, types


def save_for_reference(model, path):
    """The state dict and constructor config the LXT subprocess rebuilds the model from."""
    torch.save(model.state_dict(), path)
    return path




def decompose(onnx_bytes):
    """The same model with every LayerNormalization written out (ReduceMean, Sub, Pow, ReduceMean, Add eps,
    Sqrt, Div, Mul scale, Add shift) and every Gelu in its Erf form (x * 0.5 * (1 + Erf(x / sqrt 2))), as
    older exporters write them."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    consts = {}

    def const(value, dtype=np.float32):
        key = (str(dtype), tuple(np.atleast_1d(value)))
        if key not in consts:
            consts[key] = f"decomposed_const_{len(consts)}"
            g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), consts[key]))
        return consts[key]

    nodes = []
    for k, n in enumerate(g.node):
        t = lambda s: f"decomposed_{k}_{s}"  # noqa: E731
        if n.op_type == "LayerNormalization":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            axes = const([attrs.get("axis", -1)], np.int64)
            x, scale, shift = n.input[0], n.input[1], n.input[2]
            nodes += [helper.make_node("ReduceMean", [x, axes], [t("mean")], keepdims=1),
                      helper.make_node("Sub", [x, t("mean")], [t("d")]),
                      helper.make_node("Pow", [t("d"), const(2.0)], [t("sq")]),
                      helper.make_node("ReduceMean", [t("sq"), axes], [t("var")], keepdims=1),
                      helper.make_node("Add", [t("var"), const(attrs.get("epsilon", 1e-5))], [t("ve")]),
                      helper.make_node("Sqrt", [t("ve")], [t("std")]),
                      helper.make_node("Div", [t("d"), t("std")], [t("n")]),
                      helper.make_node("Mul", [t("n"), scale], [t("s")]),
                      helper.make_node("Add", [t("s"), shift], [n.output[0]])]
        elif n.op_type == "Gelu":
            x = n.input[0]
            nodes += [helper.make_node("Div", [x, const(float(np.sqrt(2)))], [t("u")]),
                      helper.make_node("Erf", [t("u")], [t("e")]),
                      helper.make_node("Add", [t("e"), const(1.0)], [t("a")]),
                      helper.make_node("Mul", [x, t("a")], [t("m")]),
                      helper.make_node("Mul", [t("m"), const(0.5)], [n.output[0]])]
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return model.SerializeToString()
