"""What `lrpgraph train` checks before its first step (lrpgraph.train.precheck), what it says when the final
round trip fails, make-dataset's layout as --val, and the importer against onnxruntime on MobileNetV3-style
graphs (HardSwish, HardSigmoid gates, BatchNorm left unfolded) converted with flex, the trainer's composite."""

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from fashion_data import tiny_cnn, write_folders
from torch import nn

import lrpgraph
from lrpgraph.train import export, precheck
from lrpgraph.train.cli import train as train_command
from lrpgraph.train.importer import import_onnx

CLASSES = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("precheck")
    images, masks = write_folders(root / "train", 16, CLASSES, size=36, seed=0)  # 36x36 grayscale
    onnx.save(tiny_cnn(CLASSES, channels=3, size=32), root / "rgb32.onnx")
    onnx.save(tiny_cnn(CLASSES, channels=1, size=36), root / "gray36.onnx")
    return dict(root=root, images=images, masks=masks)


def invoke(data, model, out, *extra):
    args = [str(data["root"] / model), "--images", str(data["images"]), "--masks", str(data["masks"]), "--out",
            str(out), "--epochs", "1", "--batch-size", "8", "--quiet", *extra]
    return CliRunner().invoke(train_command, args)


def test_images_unlike_the_model_input_stop_before_training(data, tmp_path):
    result = invoke(data, "rgb32.onnx", tmp_path / "out")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "is 36x36 grayscale but the model takes 3x32x32 RGB" in result.output and "--fit-images" in result.output
    assert not (tmp_path / "out").exists()  # nothing written, not even the start graphs
    fitted = invoke(data, "rgb32.onnx", tmp_path / "fit", "--fit-images")
    assert fitted.exit_code == 0, fitted.output
    assert "resized and converted to 3x32x32 RGB (--fit-images)" in fitted.output
    record = lrpgraph.metadata.Record.from_model(onnx.load(tmp_path / "fit" / "model.lrp.onnx"))
    assert record.labels == sorted(p.name for p in data["images"].iterdir())  # the class folders name the classes


def test_importer_unlike_onnxruntime_stops_before_training(data, tmp_path, monkeypatch):
    from lrpgraph.train import onnx_ops

    relu = onnx_ops.OPS["Relu"]
    monkeypatch.setitem(onnx_ops.OPS, "Relu", lambda ctx, x: relu(ctx, x) * 1.01)  # an importer that is off
    result = invoke(data, "gray36.onnx", tmp_path / "out")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "before training: round trip failed" in result.output and "nothing was trained" in result.output
    assert not (tmp_path / "out").exists()


def test_a_failed_final_round_trip_says_which_files_are_usable(data, tmp_path, monkeypatch):
    compare = export._compare

    def off_after_training(module, session, feeds, names, tolerance, what):
        if what == "explained":  # only the final check of the written explained model
            raise lrpgraph.LrpgraphError("round trip failed: (simulated)")
        return compare(module, session, feeds, names, tolerance, what)

    monkeypatch.setattr(export, "_compare", off_after_training)
    out = tmp_path / "out"
    result = invoke(data, "gray36.onnx", out)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{out / 'model.onnx'} (the trained classifier) is usable" in result.output
    assert "convert" in result.output and "last.pt" in result.output


def test_make_dataset_layout_is_a_valid_val(tmp_path):
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "masks").mkdir()
    assert precheck.default_val_masks(tmp_path / "val" / "images") == tmp_path / "val" / "masks"
    assert precheck.default_val_masks(tmp_path / "other") == tmp_path / "other_masks"


# ---- the importer against onnxruntime on MobileNetV3-style graphs, flex (the trainer's composite) ------------
class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * nn.functional.hardsigmoid(self.b(torch.relu(self.a(x.mean((2, 3), keepdim=True)))))


class WrittenOutHardSwish(nn.Module):
    """x * relu6(x + 3) / 6 in elementary ops (Add, Clip, Mul, Div), as paddle2onnx writes it below opset 14."""

    def forward(self, x):
        return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def _block(cin, cout, stride, groups=1, act=nn.Hardswish):
    return [nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), act()]


class MobileNetV3Like(nn.Module):
    """PP-LCNet / MobileNetV3 in small: Conv-BN-HardSwish, depthwise, an SE gate, a 1x1 head conv, Softmax."""

    def __init__(self, act=nn.Hardswish):
        super().__init__()
        self.features = nn.Sequential(*_block(3, 16, 2, act=act), *_block(16, 16, 1, 16, act), SqueezeExcite(16),
                                      *_block(16, 32, 2, act=act))
        self.head, self.fc = nn.Conv2d(32, 64, 1), nn.Linear(64, CLASSES)

    def forward(self, x):
        x = nn.functional.hardswish(self.head(self.features(x).mean((2, 3), keepdim=True)))
        return torch.softmax(self.fc(x.flatten(1)), 1)


def _legacy_export(model, size, opset):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics unlike the identity, so BN matters
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), torch.rand(1, 3, size, size), buffer, opset_version=opset, dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())  # BatchNormalization kept as nodes, as paddle2onnx writes


def _models():
    import torchvision

    yield "mnv3-like opset 13 (HardSigmoid * x)", _legacy_export(MobileNetV3Like(), 32, 13)
    yield "mnv3-like opset 15 (HardSwish)", _legacy_export(MobileNetV3Like(), 32, 15)
    yield "mnv3-like, HardSwish written out", _legacy_export(MobileNetV3Like(WrittenOutHardSwish), 32, 15)
    torch.manual_seed(0)
    yield "torchvision mobilenet_v3_small", _legacy_export(torchvision.models.mobilenet_v3_small(num_classes=10),
                                                           96, 15)


def test_importer_matches_onnxruntime_on_hardswish_graphs_with_flex():
    """The bound the trainer holds its round trip to (1e-5, L1 relative) on the untrained start models."""
    for name, plain in _models():
        explained = lrpgraph.convert(plain, composite="flex", target="seed")
        module = import_onnx(explained)
        session = ort.InferenceSession(explained.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = export.probe_feeds(module, session)
        with torch.no_grad():
            ours = module.run(feeds, ["relevance"])["relevance"].numpy()
        theirs = session.run(["relevance"], feeds)[0]
        error = np.abs(ours.astype(np.float64) - theirs).sum() / np.abs(theirs.astype(np.float64)).sum()
        assert error < 1e-5, (name, error)


def test_folder_labels_name_the_outputs_they_train():
    folders = ["cat", "dog"]
    assert precheck.folder_labels(None, folders, 2) == (["cat", "dog"], None)
    assert precheck.folder_labels(None, folders, 4)[0] == ["cat", "dog", "output 2 (no class folder)",
                                                         "output 3 (no class folder)"]
    labels, note = precheck.folder_labels(["tench", "goldfish", "shark"], folders, 3)
    assert labels == ["cat", "dog", "shark"]  # the head's third output keeps its own label
    assert note == ("the class folders name outputs 0 to 1; 2 of the model's labels are replaced "
                    "(0: 'tench' -> 'cat', 1: 'goldfish' -> 'dog')")
    assert precheck.folder_labels(["cat", "dog"], folders, 2) == (["cat", "dog"], None)


def test_train_records_class_folder_labels_with_fewer_folders_than_outputs(tmp_path):
    images, masks = write_folders(tmp_path / "two", 8, 2, size=36, seed=1)  # 2 class folders, a 4-output model
    model = tmp_path / "gray36.onnx"
    onnx.save(tiny_cnn(CLASSES, channels=1, size=36), model)
    lrpgraph.metadata.write(onnx_model := onnx.load(model), lrpgraph.metadata.LABELS, ["a", "b", "c", "d"])
    onnx.save(onnx_model, tmp_path / "labelled.onnx")
    for name in ("gray36.onnx", "labelled.onnx"):
        result = CliRunner().invoke(train_command, [str(tmp_path / name), "--images", str(images), "--masks",
                                                    str(masks), "--out", str(tmp_path / f"out_{name}"),
                                                    "--epochs", "1", "--batch-size", "8", "--quiet"])
        assert result.exit_code == 0, result.output
        record = lrpgraph.metadata.Record.from_model(onnx.load(tmp_path / f"out_{name}" / "model.lrp.onnx"))
        folders = sorted(p.name for p in images.iterdir())
        if name == "gray36.onnx":
            assert record.labels == folders + ["output 2 (no class folder)", "output 3 (no class folder)"]
        else:
            assert record.labels == folders + ["c", "d"]
            assert f"2 of the model's labels are replaced (0: 'a' -> '{folders[0]}'" in result.output
