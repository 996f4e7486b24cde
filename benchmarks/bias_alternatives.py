"""The alternatives the Faster ISNet paper compares against, trained on the bias benchmark's data (benchmarks/bias.py).

  rrr        Right for the Right Reasons (Ross et al., IJCAI 2017): cross-entropy plus lambda times the squared
             input gradient of sum_k log p_k on the background, sum over pixels, mean over the batch. The
             gradient is compiled into the graph (lrpgraph.convert(method="gradient", target="seed"), the seed
             d(sum_k log p_k)/dy = 1 - C softmax(y) fed from the logits inside the same run) and imported with
             lrpgraph.train.import_onnx, which is differentiable: torch takes the second derivative for the step.
  segmenter  a small U-Net (two poolings, widths w, 2w, 4w) trained on the garment masks (binary cross-entropy),
             its predicted foreground probability multiplied into the image, and the backbone trained by
             lrpgraph's trainer (plain) on the training images so masked. The evaluated model is one ONNX
             graph: x -> x * sigmoid(unet(x)) -> classifier, which lrpgraph converts like any other (the gate
             x * sigmoid(...) sends all relevance to x, so the heatmap is the classifier's on the masked image).
  untrained  a control, not a method: the backbone as initialised, never trained (chance level). It must fail
             the checks; tests/test_bias_benchmark.py runs it to show that they can.

Both methods use the ISNet rows' budget: the same initial backbone, data, epochs, batch size, Adam learning rate,
schedule, gradient clipping (1.0) and data order (a torch.Generator seeded by the seed, one permutation per epoch,
as lrpgraph's trainer draws it). GAIN-style attention mining is not implemented (see docs/bias.md).
"""

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import lrpgraph
from lrpgraph import datasets, targets
from lrpgraph.metadata import Record

ALTERNATIVES = ("rrr", "segmenter", "untrained")
RRR_LAMBDA = 100.0  # Ross et al. pick lambda so both terms have the same order of magnitude (docs/bias.md)
UNET_WIDTH = 8


def fit(step, params, data, args, seed):
    """Train with the ISNet rows' schedule: step(x, m, y) -> loss on one batch; returns mean seconds per epoch."""
    optimizer = torch.optim.Adam(params, args.lr)
    epochs = args.isnet_epochs
    schedule = {"none": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0),
                "step": lambda o: torch.optim.lr_scheduler.StepLR(o, 10, 0.1),
                "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, epochs)}[args.schedule](optimizer)
    order = torch.Generator()
    order.manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(data.images[:, None].astype(np.float32) / 255.0)
    m = torch.from_numpy((data.masks[:, None] > 0).astype(np.float32))
    y = torch.from_numpy(data.labels)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(y), generator=order).split(args.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = step(x[batch], m[batch], y[batch])
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss became {loss.item()}; lower the learning rate or lambda")
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        schedule.step()
        seconds.append(time.perf_counter() - start)
    return float(np.mean(seconds))


def rrr_seed(logits):
    """d(sum_k log softmax(y)_k) / dy = 1 - C softmax(y): the seed whose input gradient RRR penalises."""
    return 1.0 - logits.shape[1] * torch.softmax(logits, dim=1)


def train_rrr(args, seed, backbone, train_set, out):
    """Right for the Right Reasons from backbone.onnx; writes out/model.onnx; returns seconds per epoch."""
    from lrpgraph.train import import_onnx
    from lrpgraph.train.export import write_back

    out.mkdir(parents=True, exist_ok=True)
    plain = onnx.load(str(backbone))
    explained = lrpgraph.convert(plain, method="gradient", target="seed")
    record = Record.from_model(explained)
    onnx.save(plain, str(out / "start.onnx"))
    onnx.save(explained, str(out / "start.gradient.onnx"))
    module = import_onnx(explained)
    logits_name, gradient_name = record.logits, record.relevance_outputs[0]
    weight = args.rrr_lambda

    def step(x, m, y):
        run = module.run({record.image_input: x}, [logits_name, gradient_name],
                         derived={targets.SEED_INPUT: (logits_name, rrr_seed)})
        penalty = ((1 - m) * run[gradient_name]).pow(2).sum((1, 2, 3)).mean()
        return nn.functional.cross_entropy(run[logits_name], y) + weight * penalty

    per_epoch = fit(step, list(module.weights.values()), train_set, args, seed)
    write_back(module, out / "start.onnx", out / "start.gradient.onnx", out / "model.onnx", out / "model.rrr.onnx",
               example=train_set.images[:4, None].astype(np.float32) / 255.0)
    return per_epoch


class UNet(nn.Module):
    """Two poolings down, nearest-neighbour upsampling and skip connections back; one logit per pixel (the image
    size must be a multiple of 4)."""

    def __init__(self, width=UNET_WIDTH):
        super().__init__()
        w = width

        def block(a, b):
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU())

        self.enc1, self.enc2, self.mid = block(1, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.dec2, self.dec1, self.head = block(6 * w, 2 * w), block(3 * w, w), nn.Conv2d(w, 1, 1)

    def forward(self, x):
        up = nn.functional.interpolate
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        mid = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([up(mid, scale_factor=2.0, mode="nearest"), e2], 1))
        return self.head(self.dec1(torch.cat([up(d2, scale_factor=2.0, mode="nearest"), e1], 1)))


class Gate(nn.Module):
    """x * sigmoid(unet(x)): the image with its predicted background faded out."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x):
        return x * torch.sigmoid(self.unet(x))


def pipeline(gate, classifier_path, size, path):
    """One ONNX graph x -> gate -> classifier (the classifier's names prefixed 'classifier/'), written to path."""
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: it still exports Resize simply
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(gate.eval(), (torch.zeros(2, 1, size, size),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["masked"], dynamic_axes={"x": {0: "N"}, "masked": {0: "N"}})
    front = onnx.load_from_string(buffer.getvalue())
    back = onnx.compose.add_prefix(onnx.load(str(classifier_path)), "classifier/")
    front.ir_version = back.ir_version = min(front.ir_version, back.ir_version)
    merged = onnx.compose.merge_models(front, back, io_map=[("masked", back.graph.input[0].name)])
    onnx.checker.check_model(merged, full_check=True)
    onnx.save(merged, str(path))


def train_segmenter(args, seed, train_set, out, train_classifier):
    """U-Net on the masks, then the classifier on the masked images (train_classifier(images, masks, out) trains
    the backbone with lrpgraph's trainer and returns (model.onnx, s / epoch)); writes out/model.onnx (the whole
    pipeline) and returns seconds per epoch (U-Net + classifier)."""
    torch.manual_seed(seed)
    unet = UNet()
    loss = nn.BCEWithLogitsLoss()
    unet_epoch = fit(lambda x, m, y: loss(unet(x), m), list(unet.parameters()), train_set, args, seed)
    gate = Gate(unet).eval()
    with torch.no_grad():
        x = torch.from_numpy(train_set.images[:, None].astype(np.float32) / 255.0)
        masked = torch.cat([gate(part) for part in x.split(256)])[:, 0].numpy()
    images = np.clip(np.round(masked * 255.0), 0, 255).astype(np.uint8)
    shutil.rmtree(out / "data", ignore_errors=True)
    folders = datasets.write_folders(datasets.BiasedSet(images, train_set.masks, train_set.labels,
                                                        train_set.artefacts, train_set.classes), out / "data")
    classifier, classifier_epoch = train_classifier(*folders, out / "classifier")
    torch.save(unet.state_dict(), out / "unet.pt")
    pipeline(gate, classifier, train_set.images.shape[-1], out / "model.onnx")
    return unet_epoch + classifier_epoch


def untrained(backbone, out):
    """The control row: the initial backbone as the evaluated model (0 s per epoch)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(backbone, out / "model.onnx")
    return 0.0


def train(name, args, seed, backbone, out, train_classifier):
    """Train alternative `name` for one seed from backbone.onnx into out/; returns (model.onnx, s / epoch)."""
    train_set = datasets.biased_fashion_mnist("train", "biased", args.train_per_class, args.classes, args.size, seed,
                                              args.bias)
    if name == "rrr":
        per_epoch = train_rrr(args, seed, backbone, train_set, Path(out))
    elif name == "segmenter":
        per_epoch = train_segmenter(args, seed, train_set, Path(out), train_classifier)
    else:
        per_epoch = untrained(backbone, Path(out))
    return Path(out) / "model.onnx", per_epoch
