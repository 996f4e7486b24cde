"""The options of one training run (TrainConfig), their checks, and the ones a --resume must repeat.

TrainConfig mirrors `lrpgraph train`'s options one to one. check_options raises LrpgraphError with one line for
an option that cannot work, before any data is read; the model, data and masks are checked by the Trainer.
RESUME_KEYS are the options a checkpoint records: --resume refuses to continue a run whose value differs.
"""

import dataclasses

from lrpgraph.errors import LrpgraphError
from lrpgraph.rules import DEFAULT_FLEX_EPSILON
from lrpgraph.train import isnet
from lrpgraph.train.precheck import default_val_masks
from lrpgraph.train.loss import ISNetLoss

RESUME_KEYS = ("variant", "selective_class", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
               "schedule", "step_size", "step_gamma", "clip", "P", "A", "B", "E", "d", "C1", "C2", "psi",
               "tune_epochs", "seed", "flex_epsilon")


@dataclasses.dataclass
class TrainConfig:
    model: str
    images: str
    masks: str
    out: str
    val: str = None
    val_masks: str = None
    fit_images: bool = False  # resize and convert images whose size or colour differs from the model's input
    variant: str = "selective"
    selective_class: str = "predicted"
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "none"  # none | step | cosine (per epoch)
    step_size: int = 10
    step_gamma: float = 0.1
    clip: float = 1.0  # gradient norm clipping; 0 = off
    P: float = 0.7
    A: float = 1.0
    B: float = 1.0
    E: float = 1.0
    d: float = 0.9
    C1: float = 1.0
    C2: float = 25.0
    psi: str = "hybrid"
    tune_epochs: int = 0  # C1/C2 auto-tuning: warm-up epochs on CE only
    flex_epsilon: float = DEFAULT_FLEX_EPSILON
    seed: int = 0
    resume: bool = False
    force: bool = False
    stop_after: int = None  # end this run after so many epochs (resumable), e.g. for time-limited jobs
    workers: int = 0
    device: str = "auto"
    threads: int = None
    progress: bool = True


def check_options(c: TrainConfig) -> None:
    """Raise LrpgraphError naming the first option of TrainConfig c that cannot work."""
    checks = [(c.variant in isnet.VARIANTS, f"--variant {c.variant}: choose one of {', '.join(isnet.VARIANTS)}"),
              (c.selective_class in isnet.SELECTIVE_CLASSES, "--selective-class: predicted or lowest"),
              (c.epochs >= 1 and c.batch_size >= 1, "--epochs and --batch-size must be at least 1"),
              (c.optimizer in ("sgd", "adam"), f"--optimizer {c.optimizer}: sgd or adam"),
              (c.schedule in ("none", "step", "cosine"), f"--schedule {c.schedule}: none, step or cosine"),
              (c.lr > 0 and c.clip >= 0, "--lr must be > 0 and --clip >= 0"),
              (0 <= c.tune_epochs < c.epochs, f"--tune-epochs {c.tune_epochs} must be in [0, --epochs)"),
              (c.val is None or c.val_masks is not None or default_val_masks(c.val).is_dir(),
               f"--val {c.val}: give --val-masks (there is no {default_val_masks(c.val)} folder)")]
    for ok, message in checks:
        if not ok:
            raise LrpgraphError(message)
    ISNetLoss(c.P, c.A, c.B, c.E, c.d, c.C1, c.C2, c.psi)  # checks the loss options
