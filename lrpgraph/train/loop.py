"""Faster ISNet training on the imported relevance graph: data, steps, validation, checkpoints, write-back.

train(TrainConfig(...)) checks everything up front (model, variant, data, masks, options; LrpgraphError with
one line before any step), then trains: per step one forward + one relevance pass + one backward of
(1 - P) CE + P L_H (REFERENCE.md 5), gradients all-reduced across processes (torchrun: gloo on CPU, NCCL on
GPUs) and clipped, SGD or Adam, a step or cosine schedule per epoch. With --tune-epochs N the first N epochs
train on CE only and the last of them feeds C1C2Tuner (C1, C2 for the rest). Every epoch: validation
accuracy and background relevance fraction, an atomic checkpoint (weights, optimizer, scheduler, C1/C2,
history, RNG states of torch, numpy, python, the data order and the stochastic class draws), metrics.csv
and two plots. At the end both ONNX files are written with export.write_back and checked in onnxruntime.

Determinism: the data order and the stochastic variant's draws come from generators seeded by --seed and
drawn for the global batch on every rank, each rank taking samples rank, rank + world, ... of each global
batch; each rank's loss is weighted by its share of the batch and gradients are summed, so any number of
processes gives the single-process result up to float32 rounding, and --resume continues bit-identically.
"""

import csv
import dataclasses
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.utils.data import DataLoader

from lrpgraph import metadata
from lrpgraph.errors import LrpgraphError
from lrpgraph.train import isnet
from lrpgraph.train.data import MaskedImageFolder
from lrpgraph.train.importer import import_onnx
from lrpgraph.train.loss import C1C2Tuner, ISNetLoss, total_relevance

RESUME_KEYS = ("variant", "selective_class", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
               "schedule", "step_size", "step_gamma", "clip", "P", "A", "B", "E", "d", "C1", "C2", "psi",
               "tune_epochs", "seed", "flex_epsilon")
COLUMNS = ("epoch", "phase", "lr", "loss", "cross_entropy", "heatmap", "background", "foreground", "train_accuracy",
           "val_accuracy", "val_background_fraction", "samples_per_s", "seconds", "C1", "C2")


class Distributed:
    """The process group of a torchrun launch (WORLD_SIZE > 1: gloo on CPU, NCCL on GPUs), or one process."""

    def __init__(self, device="auto"):
        import torch.distributed as dist

        self.dist, self.owned = dist, False
        self.world, self.rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        if device not in ("auto", "cpu", "cuda"):
            raise LrpgraphError(f"--device {device}: auto, cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise LrpgraphError("--device cuda: no CUDA device is available; use --device cpu")
        cuda = device != "cpu" and torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owned = True
        if self.world > 1:
            self.world, self.rank = dist.get_world_size(), dist.get_rank()

    def sum(self, tensor):
        """All-reduce (sum) in place; float64 CPU tensors travel through the device for NCCL."""
        if self.world > 1:
            moved = tensor.to(self.device)
            self.dist.all_reduce(moved)
            tensor.copy_(moved)
        return tensor

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.world > 1:
            self.dist.barrier()

    def close(self):
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


class TrainingDiverged(LrpgraphError):
    """The loss became NaN or infinite: training stopped (the last checkpoint is kept)."""

    exit_code = 3


@dataclasses.dataclass
class TrainConfig:
    model: str
    images: str
    masks: str
    out: str
    val: str = None
    val_masks: str = None
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
    flex_epsilon: float = 0.01
    seed: int = 0
    resume: bool = False
    force: bool = False
    stop_after: int = None  # end this run after so many epochs (resumable), e.g. for time-limited jobs
    workers: int = 0
    device: str = "auto"
    threads: int = None
    progress: bool = True


def _check_options(c):
    checks = [(c.variant in isnet.VARIANTS, f"--variant {c.variant}: choose one of {', '.join(isnet.VARIANTS)}"),
              (c.selective_class in isnet.SELECTIVE_CLASSES, "--selective-class: predicted or lowest"),
              (c.epochs >= 1 and c.batch_size >= 1, "--epochs and --batch-size must be at least 1"),
              (c.optimizer in ("sgd", "adam"), f"--optimizer {c.optimizer}: sgd or adam"),
              (c.schedule in ("none", "step", "cosine"), f"--schedule {c.schedule}: none, step or cosine"),
              (c.lr > 0 and c.clip >= 0, "--lr must be > 0 and --clip >= 0"),
              (0 <= c.tune_epochs < c.epochs, f"--tune-epochs {c.tune_epochs} must be in [0, --epochs)"),
              (c.val is None or c.val_masks is not None or Path(f"{str(c.val).rstrip('/')}_masks").is_dir(),
               f"--val {c.val}: give --val-masks (there is no {str(c.val).rstrip('/')}_masks folder)")]
    for ok, message in checks:
        if not ok:
            raise LrpgraphError(message)
    ISNetLoss(c.P, c.A, c.B, c.E, c.d, c.C1, c.C2, c.psi)  # checks the loss options


def _check_binary_masks(dataset):
    """Every mask file holds 0 and one other value only (alpha ignored): anti-aliased or soft masks are refused."""
    from PIL import Image

    for _, mask_path, _ in dataset.samples:
        with Image.open(mask_path) as mask:
            array = np.asarray(mask.convert("RGBA") if mask.mode == "P" else mask)
            if mask.mode in ("LA", "RGBA", "PA", "P"):
                array = array[..., :-1]
        values = np.unique(array)
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            raise LrpgraphError(f"mask {mask_path} is not binary (values {values[:5].tolist()}...); give masks with 0 "
                                "for background and one value for foreground")


def _dataset(images, masks, shape, what):
    channels, size = shape[1], shape[2:]
    if channels not in (1, 3):
        raise LrpgraphError(f"the model's image input has {channels} channels; the trainer reads grayscale (1) "
                            "or RGB (3) images")
    data = MaskedImageFolder(images, masks, grayscale=channels == 1, size=size if all(size) else None)
    _check_binary_masks(data)
    if not all(size):
        from PIL import Image

        sizes = {Image.open(p).size for p, _, _ in data.samples}
        if len(sizes) > 1:
            raise LrpgraphError(f"{what} images have several sizes {sorted(sizes)[:3]} and the model takes any size; "
                                "resize them to one size")
    return data


def _collate(items):
    if not items:
        return None
    x, m, y = zip(*items)
    return torch.stack(x), torch.stack(m), torch.tensor(y, dtype=torch.int64)


def _atomic(path, write):
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


class Trainer:
    def __init__(self, config, dist):
        c, self.c, self.dist = config, config, dist
        _check_options(c)
        self.out = Path(c.out)
        self.start_plain = self.out / "start" / "model.onnx"  # the graphs the run starts from
        self.start_explained = self.out / "start" / "model.lrp.onnx"
        self.last = self.out / "checkpoints" / "last.pt"
        if c.resume and not self.last.is_file():
            raise LrpgraphError(f"--resume: {self.last} does not exist; start without --resume")
        if not c.resume and self.last.is_file() and not c.force:
            raise LrpgraphError(f"{self.out} holds a checkpoint; pass --resume to continue it or --force to start over")
        if c.resume:
            explained = onnx.load(self.start_explained)
            isnet.resolve(c.variant, metadata.read(explained).get(metadata.CONFIG), str(self.start_explained))
        else:
            plain, explained, _ = isnet.prepare(str(c.model), c.variant, c.flex_epsilon)
        self.spec = isnet.resolve(c.variant, metadata.read(explained)[metadata.CONFIG])
        self.classes = isnet.num_classes(explained)
        image = next(i for i in explained.graph.input if i.name == self.spec.image)
        shape = [d.dim_value or None for d in image.type.tensor_type.shape.dim]
        self.train_set = _dataset(c.images, c.masks, shape, "training")
        self.val_set = _dataset(c.val, c.val_masks or f"{str(c.val).rstrip('/')}_masks", shape, "validation") \
            if c.val else None
        found = len(self.train_set.classes)
        if found > self.classes:
            raise LrpgraphError(f"{c.images} has {found} class folders but the model has {self.classes} outputs")
        pre = metadata.read(explained).get(metadata.PREPROCESS) or {}
        self.mean = torch.tensor(pre["mean"]).reshape(1, -1, 1, 1) if pre.get("mean") else None
        self.std = torch.tensor(pre["std"]).reshape(1, -1, 1, 1) if pre.get("std") else None
        if not c.resume and dist.rank == 0:  # the graphs the run starts from; write_back needs them at the end
            for path, model in ((self.start_plain, plain), (self.start_explained, explained)):
                _atomic(path, lambda f, m=model: f.write(m.SerializeToString()))
        dist.barrier()
        self.module = import_onnx(explained).to(dist.device)
        self.params = list(self.module.weights.values())
        self.heatmaps = isnet.Heatmaps(self.module, self.spec, self.classes, c.selective_class)
        self.loss = ISNetLoss(c.P, c.A, c.B, c.E, c.d, c.C1, c.C2, c.psi)
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(self.params, c.lr, weight_decay=c.weight_decay)
        self.scheduler = {"none": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0),
                          "step": lambda o: torch.optim.lr_scheduler.StepLR(o, c.step_size, c.step_gamma),
                          "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, c.epochs)}[c.schedule](
            self.optimizer)
        self.order, self.draws = torch.Generator(), torch.Generator()
        self.order.manual_seed(c.seed)
        self.draws.manual_seed(c.seed + 1)
        torch.manual_seed(c.seed)
        np.random.seed(c.seed % 2 ** 32)
        random.seed(c.seed)
        self.epoch, self.history, self.best = 0, [], -1.0
        if c.resume:
            self._load()

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _state(self):
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "order": self.order.get_state(), "draws": self.draws.get_state()}
        if self.dist.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.dist.device)
        return {"format": 1, "epoch": self.epoch, "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "C1": self.loss.C1, "C2": self.loss.C2, "history": self.history, "best": self.best, "rng": rng,
                "config": {k: getattr(self.c, k) for k in RESUME_KEYS}}

    def _load(self):
        state = torch.load(self.last, map_location=self.dist.device, weights_only=False)
        changed = [k for k in RESUME_KEYS if state["config"].get(k) != getattr(self.c, k)]
        if changed:
            k = changed[0]
            raise LrpgraphError(f"--resume: the checkpoint was written with {k} = {state['config'][k]!r}, not "
                                f"{getattr(self.c, k)!r}; resume with the same options or start over with --force")
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss.C1, self.loss.C2 = state["C1"], state["C2"]
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.order.set_state(rng["order"].cpu())
        self.draws.set_state(rng["draws"].cpu())
        if "cuda" in rng and self.dist.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.dist.device)

    def _save(self, val_accuracy):
        """checkpoints/last.pt every epoch, best.pt when the validation accuracy improved."""
        improved = val_accuracy is not None and val_accuracy > self.best
        self.best = val_accuracy if improved else self.best
        state = self._state()
        _atomic(self.last, lambda f: torch.save(state, f))
        if improved:
            _atomic(self.out / "checkpoints" / "best.pt", lambda f: torch.save(state, f))

    # -- one epoch -----------------------------------------------------------------------------------------
    def _input(self, x):
        x = x.to(self.dist.device)
        if self.mean is not None:
            x = x - self.mean.to(x)
        return x / self.std.to(x) if self.std is not None else x

    def _batches(self, n, shuffle):
        order = torch.randperm(n, generator=self.order) if shuffle else torch.arange(n)
        return [order[i:i + self.c.batch_size].tolist() for i in range(0, n, self.c.batch_size)]

    def _loader(self, dataset, batches):
        local = [b[self.dist.rank::self.dist.world] for b in batches]
        return DataLoader(dataset, batch_sampler=local, num_workers=self.c.workers, collate_fn=_collate)

    def _reduce_gradients(self):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.sum(flat)
        offset = 0
        for p in self.params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def train_epoch(self, progress):
        c, phase = self.c, self.phase()
        batches = self._batches(len(self.train_set), shuffle=True)
        tuning = phase == "warmup" and self.epoch + 1 == c.tune_epochs
        maps_needed = phase == "isnet" or tuning
        sums, tuned, seen, start = torch.zeros(7, dtype=torch.float64), [], 0, time.perf_counter()
        bar = progress(total=len(batches), desc=f"epoch {self.epoch + 1}/{c.epochs} {phase}")
        for step, (batch, indices) in enumerate(zip(self._loader(self.train_set, batches), batches)):
            n = len(indices)
            draws = isnet.draw(self.draws, n, self.classes) if c.variant == "stochastic" else None
            self.optimizer.zero_grad(set_to_none=True)
            local = torch.zeros(7, dtype=torch.float64)
            if batch is not None:
                x, m, y = self._input(batch[0]), batch[1].to(self.dist.device), batch[2].to(self.dist.device)
                mine = None if draws is None else tuple(d[self.dist.rank::self.dist.world] for d in draws)
                logits, maps = self.heatmaps(x, mine) if maps_needed else (self.heatmaps.logits(x), None)
                if phase == "isnet":
                    parts = self.loss(logits, y, maps, m)
                    total, values = parts.total, parts
                else:
                    total = torch.nn.functional.cross_entropy(logits, y)
                    values = (total, total, torch.nan, torch.nan, torch.nan)
                    if tuning:
                        tuned.append(total_relevance(maps.detach()).cpu())
                (total * (len(y) / n)).backward()
                correct = (logits.detach().argmax(1) == y).sum()
                local = torch.tensor([_number(v) * len(y) for v in values] + [float(correct), len(y)],
                                     dtype=torch.float64)
            self._reduce_gradients()
            self.dist.sum(local)
            sums += local
            if not np.isfinite(local[0].item()):
                names = ("loss", "CE", "L_H", "L_bg", "L_fg")
                parts = ", ".join(f"{k} {local[i].item() / n:.4g}" for i, k in enumerate(names))
                raise TrainingDiverged(f"the loss became NaN or infinite at epoch {self.epoch + 1}, step {step + 1} "
                                       f"({parts}); training stopped; lower --lr or -P, or check the data "
                                       f"(last checkpoint: {self.last if self.last.is_file() else 'none yet'})")
            if c.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, c.clip)
            self.optimizer.step()
            seen += n
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix({k: f"{sums[i].item() / seen:.3g}" for i, k in ((1, "CE"), (3, "L_bg"), (4, "L_fg"))}
                            | {"img/s": f"{rate:.0f}"})
            bar.update(1)
        bar.close()
        if tuning:
            parts = self.dist.gather(torch.cat(tuned).reshape(-1) if tuned else torch.zeros(0))
            tuner = C1C2Tuner()
            tuner.update(torch.cat(parts))
            self.loss.C1, self.loss.C2 = tuner.result()
        seconds = time.perf_counter() - start
        means = (sums[:5] / sums[6]).tolist()
        return dict(zip(COLUMNS[3:8], means), train_accuracy=(sums[5] / sums[6]).item(), samples_per_s=seen / seconds,
                    seconds=seconds, phase=phase)

    def phase(self):
        if self.c.variant == "plain":
            return "plain"
        return "warmup" if self.epoch < self.c.tune_epochs else "isnet"

    @torch.no_grad()
    def validate(self):
        if self.val_set is None:
            return None, None
        sums = torch.zeros(4, dtype=torch.float64)
        batches = self._batches(len(self.val_set), shuffle=False)
        for batch in self._loader(self.val_set, batches):
            if batch is None:
                continue
            x, m, y = self._input(batch[0]), batch[1].to(self.dist.device), batch[2].to(self.dist.device)
            logits, maps = self.heatmaps.predicted(x)
            absolute = maps.abs()
            background = float((absolute * (1 - m[:, None])).sum())
            sums += torch.tensor([float((logits.argmax(1) == y).sum()), len(y), background, float(absolute.sum())],
                                 dtype=torch.float64)
        self.dist.sum(sums)
        return (sums[0] / sums[1]).item(), (sums[2] / sums[3]).item() if sums[3] > 0 else float("nan")

    # -- the run -------------------------------------------------------------------------------------------
    def run(self, progress):
        c, ran = self.c, 0
        while self.epoch < c.epochs:
            if c.stop_after is not None and ran >= c.stop_after:
                return {"stopped": True, "epoch": self.epoch, "history": self.history}
            lr = self.optimizer.param_groups[0]["lr"]
            row = self.train_epoch(progress)
            row["val_accuracy"], row["val_background_fraction"] = self.validate()
            self.scheduler.step()
            self.epoch += 1
            ran += 1
            row.update(epoch=self.epoch, lr=lr, C1=self.loss.C1, C2=self.loss.C2)
            self.history.append(row)
            if self.dist.rank == 0:
                self._save(row["val_accuracy"])
                write_metrics(self.out, self.history)
            self.dist.barrier()
        report, error = None, None
        if self.dist.rank == 0:
            from lrpgraph.train.export import write_back

            example = self._input(_collate([self.train_set[i] for i in range(min(4, len(self.train_set)))])[0])
            try:
                report = write_back(self.module, self.start_plain, self.start_explained, self.out / "model.onnx",
                                    self.out / "model.lrp.onnx", example=example.cpu().numpy())
            except LrpgraphError as err:
                error = str(err)
        errors = [e for e in self.dist.gather(error) if e]  # every rank stops alike, none waits forever
        if errors:
            raise LrpgraphError(errors[0])
        return {"stopped": False, "epoch": self.epoch, "history": self.history, "write_back": report,
                "C1": self.loss.C1, "C2": self.loss.C2, "module": self.module}


def write_metrics(out, history):
    """metrics.csv (atomically) and loss.png / accuracy.png."""
    def write(f):
        text = [",".join(COLUMNS)] + [",".join(_cell(row.get(k)) for k in COLUMNS) for row in history]
        f.write(("\n".join(text) + "\n").encode())

    _atomic(Path(out) / "metrics.csv", write)
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
        _atomic(Path(out) / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
        plt.close(fig)


def _number(value):
    return value.detach().item() if torch.is_tensor(value) else float(value)


def _cell(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def read_metrics(out):
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train(config, progress=None):
    """Run (or resume) a training; returns {"stopped", "epoch", "history", "write_back", "C1", "C2", "module"}
    (write_back: export.write_back's report on rank 0; module: the trained LrpModule)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = Distributed(config.device)
    try:
        trainer = Trainer(config, dist)
        if progress is None:
            from tqdm import tqdm

            def progress(**kw):
                return tqdm(disable=not config.progress or dist.rank != 0, unit="batch", dynamic_ncols=True, **kw)

        return trainer.run(progress)
    finally:
        dist.close()
