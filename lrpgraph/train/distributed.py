"""The processes of one training run: a torchrun process group (WORLD_SIZE > 1) or a single process.

Distributed picks the device (--device auto: CUDA when available), joins the group (gloo on CPU, NCCL on GPUs)
when torchrun started several processes, and offers the few collectives the trainer uses: sum (all-reduce in
place), gather (any picklable object, one per rank), agree (a barrier that carries each rank's error, so that
a rank failing in setup stops every rank instead of leaving the others waiting forever), barrier and close.
With one process they do nothing (agree raises the error, if any).

On CUDA, TF32 is switched off for matrix products and cuDNN convolutions (torch's cuDNN default is on): TF32
rounds the mantissa to 10 bits, which moves heatmaps by ~1e-3 and fails the write-back's 1e-5 round trip
against onnxruntime. Bit-identical resume is a CPU property: CUDA kernels with atomic adds (the scatter-add
of max-pooling relevance, for one) sum in a run-dependent order.
"""

import os

import torch

from lrpgraph.errors import LrpgraphError


class Distributed:
    """The process group of a torchrun launch (WORLD_SIZE > 1: gloo on CPU, NCCL on GPUs), or one process."""

    def __init__(self, device: str = "auto"):
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
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owned = True
        if self.world > 1:
            self.world, self.rank = dist.get_world_size(), dist.get_rank()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place; float64 CPU tensors travel through the device for NCCL."""
        if self.world > 1:
            moved = tensor.to(self.device)
            self.dist.all_reduce(moved)
            tensor.copy_(moved)
        return tensor

    def gather(self, obj: object) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def agree(self, error: BaseException | None) -> None:
        """Every rank calls this at the same point with its own error (an exception or None); if any rank failed,
        every rank raises: the failing rank its own exception, the others an LrpgraphError naming it."""
        messages = self.gather(None if error is None else f"{type(error).__name__}: {error}"
                               if not isinstance(error, LrpgraphError) else str(error))
        if error is not None:
            raise error
        failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
        if failed:
            rank, message = failed[0]
            raise LrpgraphError(f"rank {rank} of {self.world} failed: {message}")

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()
