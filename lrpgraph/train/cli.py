"""`lrpgraph train`: Faster ISNet training of an ONNX classifier (a click command; torch is imported on use).

    lrpgraph train model.onnx --images data/train --masks data/train_masks --val data/val \\
        --variant selective --epochs 30 --batch-size 64 --out runs/exp1
    torchrun --nproc-per-node 2 -m lrpgraph.train model.onnx ...      # data parallel, same options
"""

import os
import sys

import click

from lrpgraph.rules import DEFAULT_FLEX_EPSILON

VARIANTS = ("plain", "original", "dual", "selective", "stochastic")  # isnet.VARIANTS, without importing torch


@click.command("train")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--images", required=True, type=click.Path(file_okay=False),
              help="training images: one sub-folder per class")
@click.option("--masks", required=True, type=click.Path(file_okay=False),
              help="foreground masks under the same relative paths (nonzero = foreground)")
@click.option("--val", type=click.Path(file_okay=False), help="validation images (class folders)")
@click.option("--val-masks", type=click.Path(file_okay=False),
              help="validation masks [VAL_masks, or VAL/../masks for VAL .../images]")
@click.option("--fit-images", is_flag=True,
              help="resize (bilinear) and convert images whose size or colour differs from the model's input")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="run folder: model.onnx, model.lrp.onnx, checkpoints/, metrics.csv, loss.png, accuracy.png")
@click.option("--variant", type=click.Choice(VARIANTS), default="selective", show_default=True,
              help="ISNet variant; plain = cross-entropy only (baseline)")
@click.option("--selective-class", type=click.Choice(["predicted", "lowest"]), default="predicted",
              show_default=True, help="selective ISNet: explain the predicted class or the lowest logit")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="global batch (split across torchrun processes)")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--momentum", type=float, default=0.99, show_default=True, help="SGD momentum")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--schedule", type=click.Choice(["none", "step", "cosine"]), default="none", show_default=True,
              help="learning-rate schedule, stepped per epoch")
@click.option("--step-size", type=click.IntRange(min=1), default=10, show_default=True, help="step schedule: epochs")
@click.option("--step-gamma", type=float, default=0.1, show_default=True, help="step schedule: factor")
@click.option("--clip", type=float, default=1.0, show_default=True, help="gradient norm clipping (0 = off)")
@click.option("-P", "P", type=float, default=0.7, show_default=True, help="weight of the heatmap loss")
@click.option("-A", "A", type=float, default=1.0, show_default=True, help="weight of L_bg")
@click.option("-B", "B", type=float, default=1.0, show_default=True, help="weight of L_fg")
@click.option("-E", "E", type=float, default=1.0, show_default=True, help="background activation constant")
@click.option("-d", "d", type=float, default=0.9, show_default=True, help="GWRP decay")
@click.option("--C1", "C1", type=float, default=1.0, show_default=True)
@click.option("--C2", "C2", type=float, default=25.0, show_default=True)
@click.option("--psi", type=click.Choice(["hybrid", "L2"]), default="hybrid", show_default=True)
@click.option("--tune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="auto-tune C1/C2: so many warm-up epochs on cross-entropy only, then C1C2Tuner")
@click.option("--flex-epsilon", type=float, default=DEFAULT_FLEX_EPSILON, show_default=True, help="eps of LRP-Flex's ReLUs")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoints/last.pt (bit-identically)")
@click.option("--force", is_flag=True, help="start over in an OUT that holds a checkpoint")
@click.option("--stop-after", type=click.IntRange(min=1), help="end this run after so many epochs (resumable)")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="data loader processes")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="torch intra-op threads per process")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train(model: str, quiet: bool, **options) -> None:
    """Train MODEL (a plain ONNX classifier, or one converted for the variant) with the ISNet heatmap loss."""
    from lrpgraph.errors import LrpgraphError
    from lrpgraph.train import require_torch

    try:
        try:
            from lrpgraph.train.config import TrainConfig
            from lrpgraph.train.loop import train as run
        except ModuleNotFoundError as error:  # the runtime-only install: say which extra to install
            require_torch(error)
        result = run(TrainConfig(model=model, progress=not quiet, **options))
    except LrpgraphError as err:
        rank = os.environ.get("RANK", "0")
        click.echo(f"lrpgraph: error: {'' if rank == '0' else f'(rank {rank}) '}{err}", err=True)
        sys.exit(err.exit_code)
    if os.environ.get("RANK", "0") == "0":
        _report(result, options["out"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun process ends here, its files written and closed and the process group destroyed. Its
        # normal interpreter exit ran C++ static destructors that, now and then under load, destroyed a
        # still-joinable thread (rank 0 aborted: "terminate called without an active exception", exit -6,
        # after writing the model); leaving without them makes the exit status the run's.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _report(result: dict, out: str) -> None:
    last = result["history"][-1] if result["history"] else {}
    if result["stopped"]:
        click.echo(f"stopped after epoch {result['epoch']}; continue with --resume")
        return
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "val_accuracy", "val_background_fraction")
                        if last.get(k) is not None)
    click.echo(f"trained {result['epoch']} epochs ({summary}); wrote {os.path.join(out, 'model.onnx')} and "
               f"{os.path.join(out, 'model.lrp.onnx')}")
