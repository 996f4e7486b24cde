"""Faster ISNet training on the imported relevance graph: the Trainer (data, steps, validation, checkpoints,
write-back) and train(), which runs it.

train(TrainConfig(...)) (config.py) checks everything up front (model, variant, data, masks, options; LrpgraphError
with one line before any step), then trains: per step one forward + one relevance pass + one backward of
(1 - P) CE + P L_H (the ISNet loss of loss.py), gradients all-reduced across processes (distributed.py; torchrun: gloo on
CPU, NCCL on GPUs) and clipped, SGD or Adam, a step or cosine schedule per epoch. With --tune-epochs N the first
N epochs train on CE only and the last of them feeds C1C2Tuner (C1, C2 for the rest). Every epoch: validation
accuracy and background relevance fraction, an atomic checkpoint (weights, optimizer, scheduler, C1/C2,
history, RNG states of torch, numpy, python, the data order and the stochastic class draws), metrics.csv
and two plots (history.py). At the end both ONNX files are written with export.write_back and checked in
onnxruntime.

Determinism: the data order and the stochastic variant's draws come from generators seeded by --seed and
drawn for the global batch on every rank, each rank taking samples rank, rank + world, ... of each global
batch; each rank's loss is weighted by its share of the batch and gradients are summed, so any number of
processes gives the single-process result up to float32 rounding, and --resume continues bit-identically.
"""

import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.utils.data import DataLoader

from lrpgraph import metadata
from lrpgraph.errors import LrpgraphError
from lrpgraph.files import atomic_write
from lrpgraph.train import isnet, precheck
from lrpgraph.train.config import RESUME_KEYS, TrainConfig, check_options
from lrpgraph.train.data import MaskedImageFolder
from lrpgraph.train.distributed import Distributed
from lrpgraph.train.history import COLUMNS, write_metrics
from lrpgraph.train.importer import import_onnx
from lrpgraph.train.loss import C1C2Tuner, ISNetLoss, total_relevance


class TrainingDiverged(LrpgraphError):
    """The loss became NaN or infinite: training stopped (the last checkpoint is kept)."""

    exit_code = 3


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


def _dataset(images, masks, shape, what, fit=False):
    channels, size = shape[1], shape[2:]
    if channels not in (1, 3):
        raise LrpgraphError(f"the model's image input has {channels} channels; the trainer reads grayscale (1) "
                            "or RGB (3) images")
    data = MaskedImageFolder(images, masks, grayscale=channels == 1, size=size if all(size) else None)
    data.fitted = precheck.check_images(data.samples, shape, fit, what)
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


class Trainer:
    def __init__(self, config: TrainConfig, dist: Distributed):
        self.c, self.dist = config, dist
        error, explained = None, None
        try:
            explained = self._prepare()
        except Exception as err:  # noqa: BLE001 - every rank must learn of it (Distributed.agree)
            error = err
        dist.agree(error)  # the point where rank 0 has written the start graphs; no rank waits forever
        self._build(explained)

    def _prepare(self):
        """Options, start graphs and data sets; rank 0 writes the start graphs. Returns the explained graph."""
        c, dist = self.c, self.dist
        check_options(c)
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
            isnet.resolve(c.variant, metadata.Record.from_model(explained), str(self.start_explained))
        else:
            plain, explained, _ = isnet.prepare(str(c.model), c.variant, c.flex_epsilon)
        record = metadata.Record.from_model(explained)
        self.spec = isnet.resolve(c.variant, record)
        self.classes = isnet.num_classes(explained)
        image = next(i for i in explained.graph.input if i.name == self.spec.image)
        shape = [d.dim_value or None for d in image.type.tensor_type.shape.dim]
        self.train_set = _dataset(c.images, c.masks, shape, "training", c.fit_images)
        self.val_set = _dataset(c.val, c.val_masks or precheck.default_val_masks(c.val), shape, "validation",
                                c.fit_images) if c.val else None
        self.notes = [d.fitted for d in (self.train_set, self.val_set) if d is not None and d.fitted]
        found = len(self.train_set.classes)
        if found > self.classes:
            raise LrpgraphError(f"{c.images} has {found} class folders but the model has {self.classes} outputs")
        if not c.resume:  # class folder k trains output k: the folders name those outputs
            record.labels, note = precheck.folder_labels(record.labels, list(self.train_set.classes), self.classes)
            record.write(explained)
            self.notes += [note] if note else []
        pre = record.preprocess or {}
        self.mean = torch.tensor(pre["mean"]).reshape(1, -1, 1, 1) if pre.get("mean") else None
        self.std = torch.tensor(pre["std"]).reshape(1, -1, 1, 1) if pre.get("std") else None
        self.start_module = import_onnx(explained)  # the importer against onnxruntime, before any step
        precheck.check_start(self.start_module, explained, self._input(self._example()).cpu().numpy())
        if not c.resume and dist.rank == 0:  # the graphs the run starts from; write_back needs them at the end
            for path, model in ((self.start_plain, plain), (self.start_explained, explained)):
                atomic_write(path, lambda f, m=model: f.write(m.SerializeToString()), durable=True)
        return explained

    def _build(self, explained):
        """The torch module, heatmaps, loss, optimizer, schedule and generators (and the checkpoint on --resume)."""
        c, dist = self.c, self.dist
        self.module = self.start_module.to(dist.device)
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
        atomic_write(self.last, lambda f: torch.save(state, f), durable=True)
        if improved:
            atomic_write(self.out / "checkpoints" / "best.pt", lambda f: torch.save(state, f), durable=True)

    # -- one epoch -----------------------------------------------------------------------------------------
    def _input(self, x):
        x = x.to(self.dist.device)
        if self.mean is not None:
            x = x - self.mean.to(x)
        return x / self.std.to(x) if self.std is not None else x

    def _example(self):
        """The first (up to) 4 training images: the probe batch of the round-trip checks."""
        return _collate([self.train_set[i] for i in range(min(4, len(self.train_set)))])[0]

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

    def train_epoch(self, progress: Callable) -> dict:
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

    def phase(self) -> str:
        if self.c.variant == "plain":
            return "plain"
        return "warmup" if self.epoch < self.c.tune_epochs else "isnet"

    @torch.no_grad()
    def validate(self) -> tuple:
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
    def run(self, progress: Callable) -> dict:
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

            from lrpgraph.train.export import RoundTripError

            example = self._input(self._example())
            try:
                report = write_back(self.module, self.start_plain, self.start_explained, self.out / "model.onnx",
                                    self.out / "model.lrp.onnx", example=example.cpu().numpy())
            except RoundTripError as err:
                error = precheck.failed_write_back(str(err), self.out, err.plain_ok)
            except LrpgraphError as err:
                error = str(err)
        errors = [e for e in self.dist.gather(error) if e]  # every rank stops alike, none waits forever
        if errors:
            raise LrpgraphError(errors[0])
        return {"stopped": False, "epoch": self.epoch, "history": self.history, "write_back": report,
                "C1": self.loss.C1, "C2": self.loss.C2, "module": self.module}


def _number(value):
    return value.detach().item() if torch.is_tensor(value) else float(value)


def train(config: TrainConfig, progress: Callable | None = None) -> dict:
    """Run (or resume) a training; returns {"stopped", "epoch", "history", "write_back", "C1", "C2", "module"}
    (write_back: export.write_back's report on rank 0; module: the trained LrpModule)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = Distributed(config.device)
    try:
        trainer = Trainer(config, dist)
        if dist.rank == 0 and trainer.notes:  # what --fit-images does to the data, said before the first step
            import sys

            print("\n".join(trainer.notes), file=sys.stderr)
        if progress is None:
            from tqdm import tqdm

            def progress(**kw):
                return tqdm(disable=not config.progress or dist.rank != 0, unit="batch", dynamic_ncols=True, **kw)

        return trainer.run(progress)
    finally:
        dist.close()
