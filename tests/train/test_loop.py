"""The training loop (lrpgraph.train.loop) and `lrpgraph train`: two processes give one process's weights
(acceptance 5), a stopped and resumed run ends bit-identically (acceptance 6), outputs, and every bad input
stops with one line and exit 2 before training (NaN: exit 3).

The ISNet loss with LRP rules is ill-conditioned (one ulp in one weight moves the weights by ~1e-4 after a
dozen SGD steps at momentum 0.99), so the two-process comparison is over one epoch of a few steps, where
float32 rounding stays at the 1e-7 level while the steps move the weights by ~1e-3."""

import os
import socket
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from fashion_data import tiny_cnn, write_folders
from onnx import numpy_helper
from PIL import Image

import lrpgraph
from lrpgraph.train.cli import train as train_command
from lrpgraph.train.config import TrainConfig
from lrpgraph.train.history import COLUMNS, read_metrics
from lrpgraph.train.loop import train

CLASSES = 4



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    images, masks = write_folders(root / "train", 65, CLASSES, seed=0)  # 65 = 4 x 16 + 1: an empty shard at the end
    val_images, val_masks = write_folders(root / "val", 16, CLASSES, seed=1, split="test")
    onnx.save(tiny_cnn(CLASSES), root / "model.onnx")
    return dict(root=root, model=root / "model.onnx", images=images, masks=masks, val=val_images, val_masks=val_masks)


def config(data, out, **kw):
    base = dict(model=str(data["model"]), images=str(data["images"]), masks=str(data["masks"]), out=str(out),
                variant="stochastic", epochs=1, batch_size=16, progress=False)
    return TrainConfig(**{**base, **kw})


def weights(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def free_port():
    with socket.socket() as s:  # a port nobody listens on now (not one derived from the pid, which may be taken)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- acceptance 5: torchrun with two gloo processes = one process with the same global batch ------------------
def test_two_processes_give_the_single_process_weights(data, tmp_path):
    args = [str(data["model"]), "--images", str(data["images"]), "--masks", str(data["masks"]), "--variant",
            "stochastic", "--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crashing rank prints its stacks
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
              str(free_port()), "-m", "lrpgraph.train"]
    done = subprocess.run(launch + args + ["--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                          timeout=300)
    written = (tmp_path / "two" / "model.onnx").is_file()  # tells a crash at teardown from one in training
    assert done.returncode == 0, f"exit {done.returncode}, model.onnx written: {written}\n{done.stderr[:4000]}"
    train(config(data, tmp_path / "one"))
    two, one, start = (weights(tmp_path / d / "model.onnx") for d in ("two", "one", "one/start"))
    moved = max(np.abs(one[k] - start[k]).max() for k in one)
    differ = max(np.abs(one[k] - two[k]).max() for k in one)
    assert moved > 1e-3 and differ < 1e-6, (moved, differ)


# ---- acceptance 6: stop after an epoch, resume, and end where the uninterrupted run ends ---------------------
def test_stop_and_resume_is_bit_identical(data, tmp_path):
    options = dict(epochs=3, tune_epochs=1, schedule="cosine", val=str(data["val"]), val_masks=str(data["val_masks"]))
    whole = train(config(data, tmp_path / "whole", **options))
    first = train(config(data, tmp_path / "parts", stop_after=2, **options))
    assert first["stopped"] and first["epoch"] == 2
    assert not (tmp_path / "parts" / "model.onnx").exists()
    resumed = train(config(data, tmp_path / "parts", resume=True, **options))
    a, b = weights(tmp_path / "whole" / "model.lrp.onnx"), weights(tmp_path / "parts" / "model.lrp.onnx")
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    same = [k for k in COLUMNS if k not in ("seconds", "samples_per_s")]
    assert [[str(r[k]) for k in same] for r in whole["history"]] == [[str(r[k]) for k in same]
                                                                     for r in resumed["history"]]
    # C1/C2 tuned after the warm-up epoch (CE only), then the heatmap loss
    phases = [row["phase"] for row in whole["history"]]
    assert phases == ["warmup", "isnet", "isnet"] and (whole["C1"], whole["C2"]) != (1.0, 25.0)
    assert whole["C1"] > 0 and whole["C2"] <= 25 * whole["C1"]
    # outputs: metrics, plots, checkpoint contents
    out = tmp_path / "whole"
    rows = read_metrics(out)
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 3
    assert 0 <= float(rows[-1]["val_accuracy"]) <= 1 and 0 < float(rows[-1]["val_background_fraction"]) < 1
    for png in ("loss.png", "accuracy.png"):
        assert Image.open(out / png).size[0] > 100
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert {"module", "optimizer", "scheduler", "rng", "history", "C1", "C2"} <= set(state)
    assert {"torch", "numpy", "python", "order", "draws"} <= set(state["rng"])
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_progress_bar_shows_loss_parts_and_speed(data, tmp_path):
    shown = []

    class Bar:
        def __init__(self, **kw):
            shown.append(kw["desc"])

        def set_postfix(self, values):
            shown.append(values)

        def update(self, n):
            pass

        def close(self):
            pass

    train(config(data, tmp_path / "bar", variant="selective"), progress=Bar)
    assert shown[0] == "epoch 1/1 isnet" and {"CE", "L_bg", "L_fg", "img/s"} <= set(shown[-1])


# ---- bad input: one line, exit 2, before any training ------------------------------------------------------
def invoke(data, out, *extra, images=None, masks=None, model=None):
    args = [str(model or data["model"]), "--images", str(images or data["images"]), "--masks",
            str(masks or data["masks"]), "--out", str(out), "--epochs", "1", "--batch-size", "16", "--quiet", *extra]
    return CliRunner().invoke(train_command, args)


def copy_tree(data, tmp_path):
    import shutil

    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(data["images"], images)
    shutil.copytree(data["masks"], masks)
    first = sorted(images.rglob("*.png"))[0]
    return images, masks, first, masks / first.relative_to(images)


def edit_missing_mask(images, masks, image, mask):
    mask.unlink()


def edit_mask_size(images, masks, image, mask):
    Image.new("L", (16, 16)).save(mask)


def edit_soft_mask(images, masks, image, mask):
    Image.fromarray(np.arange(1024, dtype=np.uint8).reshape(32, 32) % 3 * 100).save(mask)


def edit_stray_image(images, masks, image, mask):
    Image.open(image).save(images / "stray.png")


@pytest.mark.parametrize("edit,message", [(edit_missing_mask, "has no mask"), (edit_mask_size, "is 16x16 but"),
                                          (edit_soft_mask, "is not binary"), (edit_stray_image, "not inside a class")])
def test_bad_data_stops_with_one_line(data, tmp_path, edit, message):
    images, masks, image, mask = copy_tree(data, tmp_path)
    edit(images, masks, image, mask)
    result = invoke(data, tmp_path / "out", images=images, masks=masks)
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "out" / "checkpoints").exists()


def test_bad_models_stop_with_one_line(data, tmp_path):
    plain = tiny_cnn(CLASSES)
    flex = tmp_path / "flex.onnx"
    onnx.save(lrpgraph.convert(plain, composite="flex", target="seed"), flex)
    unsupported = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Hardmax", ["x"], ["y"], axis=1)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 32, 32])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1, 32, 32])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(unsupported, tmp_path / "hardmax.onnx")
    onnx.save(tiny_cnn(2), tmp_path / "two_classes.onnx")
    cases = [(flex, ["--variant", "dual"], "variant 'dual' needs"), (tmp_path / "hardmax.onnx", [], "Hardmax"),
             (tmp_path / "missing.onnx", [], "no such file"),
             (tmp_path / "two_classes.onnx", [], "4 class folders but the model has 2 outputs"),
             (data["model"], ["--val", str(tmp_path)], "give --val-masks")]
    for model, extra, message in cases:
        result = invoke(data, tmp_path / "out", *extra, model=model)
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    assert invoke(data, tmp_path / "out", "--variant", "selective", model=flex).exit_code == 0  # converted: accepted
    result = invoke(data, tmp_path / "out")
    assert result.exit_code == 2 and "--resume" in result.output  # an existing run is not overwritten


def test_nan_loss_stops_training(data, tmp_path):
    result = invoke(data, tmp_path / "out", "--lr", "1e12", "--clip", "0", "--momentum", "0", "--variant", "selective")
    assert result.exit_code == 3 and "NaN or infinite" in result.output and result.output.count("\n") == 1, \
        result.output


# ---- a rank that fails in setup stops every rank (no rank waits at a barrier forever) --------------------------
def test_a_rank_failing_in_setup_stops_every_rank(data, tmp_path):
    """Rank 1 cannot read its training images (as on a node without the data); rank 0 can, writes the start
    graphs and then must stop with an error naming rank 1 instead of waiting at the barrier."""
    script = tmp_path / "rank_one_fails.py"
    script.write_text(
        "import os, sys\n"
        "import lrpgraph.train.loop as loop\n"
        "from lrpgraph.errors import LrpgraphError\n"
        "real = loop._dataset\n"
        "def dataset(images, masks, shape, what, *rest):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise LrpgraphError(f'{images}: not readable on this node')\n"
        "    return real(images, masks, shape, what, *rest)\n"
        "loop._dataset = dataset\n"
        "from lrpgraph.train.cli import train\n"
        "train(prog_name='lrpgraph train')\n")
    args = [str(data["model"]), "--images", str(data["images"]), "--masks", str(data["masks"]), "--epochs", "1",
            "--batch-size", "16", "--threads", "1", "--quiet", "--out", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crashing rank prints its stacks
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
              str(free_port()), str(script)]
    done = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "not readable on this node" in done.stderr and "rank 1 of 2 failed" in done.stderr, done.stderr[-3000:]


def test_cuda_setup_switches_tf32_off(monkeypatch):
    """TF32 (torch's cuDNN default) would move heatmaps by ~1e-3; the trainer's device setup turns it off."""
    from lrpgraph.train.distributed import Distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        Distributed("auto")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic) = saved
