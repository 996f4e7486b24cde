"""A run's metrics history on disk: metrics.csv (one row per epoch, COLUMNS) and the loss.png / accuracy.png plots.

write_metrics rewrites all three after every epoch from the trainer's history (a list of dicts keyed by COLUMNS);
read_metrics reads metrics.csv back as rows of strings. atomic_write (temporary file in the same folder, fsync,
rename) is how these files and the trainer's checkpoints are written, so a killed run never leaves half a file.
"""

import csv
import os
import tempfile
from pathlib import Path

import numpy as np

COLUMNS = ("epoch", "phase", "lr", "loss", "cross_entropy", "heatmap", "background", "foreground", "train_accuracy",
           "val_accuracy", "val_background_fraction", "samples_per_s", "seconds", "C1", "C2")


def atomic_write(path, write):
    """Call write(f) on a binary temporary file next to path, fsync it, then rename it to path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_metrics(out, history):
    """metrics.csv (atomically) and loss.png / accuracy.png."""
    def write(f):
        text = [",".join(COLUMNS)] + [",".join(_cell(row.get(k)) for k in COLUMNS) for row in history]
        f.write(("\n".join(text) + "\n").encode())

    atomic_write(Path(out) / "metrics.csv", write)
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
        atomic_write(Path(out) / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
        plt.close(fig)


def _cell(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_metrics(out):
    """metrics.csv of the run in out, as a list of dicts (column -> string)."""
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))
