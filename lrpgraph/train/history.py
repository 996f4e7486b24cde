"""A run's metrics history on disk: metrics.csv (one row per epoch, COLUMNS) and the loss.png / accuracy.png plots.

write_metrics rewrites all three after every epoch from the trainer's history (a list of dicts keyed by COLUMNS);
read_metrics reads metrics.csv back as rows of strings. The files are written with lrpgraph.files.atomic_write
(durable), as the trainer's checkpoints are, so a killed run never leaves half a file.
"""

import csv
from pathlib import Path

import numpy as np

from lrpgraph.files import atomic_write

COLUMNS = ("epoch", "phase", "lr", "loss", "cross_entropy", "heatmap", "background", "foreground", "train_accuracy",
           "val_accuracy", "val_background_fraction", "samples_per_s", "seconds", "C1", "C2")


def write_metrics(out: Path, history: list) -> None:
    """metrics.csv (atomically) and loss.png / accuracy.png."""
    def write(f):
        text = [",".join(COLUMNS)] + [",".join(_cell(row.get(k)) for k in COLUMNS) for row in history]
        f.write(("\n".join(text) + "\n").encode())

    atomic_write(Path(out) / "metrics.csv", write, durable=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = [row["epoch"] for row in history]
    for name, keys, label in (("loss.png", ("loss", "cross_entropy", "heatmap", "background", "foreground"), "loss"),
                              ("accuracy.png", ("train_accuracy", "val_accuracy", "val_background_fraction"),
                               "fraction")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            values = [row.get(key) for row in history]
            if any(v is not None and np.isfinite(v) for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=key)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(Path(out) / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100), durable=True)
        plt.close(fig)


def _cell(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_metrics(out: Path) -> list:
    """metrics.csv of the run in out, as a list of dicts (column -> string)."""
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))
