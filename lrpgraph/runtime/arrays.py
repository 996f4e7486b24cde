"""The two array backends of ExplainSession.explain: numpy in -> numpy out, torch in -> torch out.

Each backend runs one chunk of rows through the session's onnxruntime session and does the little array work
the batching needs (take / put rows, scale rows, concatenate, an empty result) in its own array type:
- NumpyOps feeds numpy arrays through the session's lrpgraph.ort.Runner.
- TorchOps binds torch tensors with IO binding on their own device (CPU, or CUDA device 0), so nothing is
  copied; the target feed is moved to that device and the logits are bound to a preallocated tensor when
  their shape and dtype are known (else onnxruntime allocates them on the CPU and they are moved over).
is_torch and to_numpy tell the types apart without importing torch when the caller has not.
"""

import sys
from typing import TYPE_CHECKING, Protocol

import numpy as np

from lrpgraph.ort import Runner, run_error

if TYPE_CHECKING:
    import torch


class Explaining(Protocol):
    """What a backend reads of the session it runs for (runtime.session.ExplainSession, which imports this
    module: the backends name no class of it)."""

    name: str
    image_input: str
    target_input: "str | None"
    logits_output: str
    relevance_outputs: list
    num_classes: "int | None"
    logits_float32: bool
    runner: Runner
    ort_session: object

    def constant_feeds(self) -> dict:
        """The inputs fed the same value on every run."""


def is_torch(value: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(array: object) -> np.ndarray:
    return array.detach().cpu().numpy() if is_torch(array) else np.asarray(array)


class NumpyOps:
    """numpy arrays through InferenceSession.run."""

    def __init__(self, session: Explaining):
        self.session = session

    def run(self, x: np.ndarray, feed: np.ndarray | None) -> tuple:
        """(logits, [relevance per heatmap output]) for the rows x and the target feed (None when the model takes
        none)."""
        s = self.session
        logits, *relevance = s.runner.run([s.logits_output, *s.relevance_outputs], s.runner.feeds(s.image_input, x, feed))
        return logits, relevance

    @staticmethod
    def take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[rows])

    @staticmethod
    def put(array: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        array[rows] = values
        return array

    @staticmethod
    def scale(array: np.ndarray, factors: np.ndarray) -> np.ndarray:
        return array * factors.astype(array.dtype).reshape((-1,) + (1,) * (array.ndim - 1))

    @staticmethod
    def cat(parts: list) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @staticmethod
    def empty(x: np.ndarray, classes: int) -> tuple:
        return np.zeros((0, classes), dtype=np.float32), np.zeros(x.shape, dtype=np.float32)


class TorchOps:
    """torch tensors on the session's own device, bound with IO binding."""

    def __init__(self, session: Explaining):
        self.session = session
        self.torch = sys.modules["torch"]

    def run(self, x: "torch.Tensor", feed: np.ndarray | None) -> tuple:
        """One run with IO binding: inputs and outputs are torch tensors on x's device."""
        s, torch = self.session, self.torch
        kind, index = ("cuda", x.device.index or 0) if x.device.type == "cuda" else ("cpu", 0)
        x = x.contiguous()
        binding = s.ort_session.io_binding()
        binding.bind_input(s.image_input, kind, index, np.float32, tuple(x.shape), x.data_ptr())
        if feed is not None:
            fed = torch.from_numpy(np.ascontiguousarray(feed)).to(x.device)  # alive until the run is over
            binding.bind_input(s.target_input, kind, index, feed.dtype.type, tuple(fed.shape), fed.data_ptr())
        for name, value in s.constant_feeds().items():
            binding.bind_cpu_input(name, value)
        logits = None  # bound first: when ORT allocates it, it is output 0 of copy_outputs_to_cpu
        if s.num_classes is not None and s.logits_float32:
            logits = torch.empty((x.shape[0], s.num_classes), dtype=torch.float32, device=x.device)
            binding.bind_output(s.logits_output, kind, index, np.float32, tuple(logits.shape), logits.data_ptr())
        else:
            binding.bind_output(s.logits_output, "cpu")
        relevance = [torch.empty(tuple(x.shape), dtype=torch.float32, device=x.device) for _ in s.relevance_outputs]
        for name, tensor in zip(s.relevance_outputs, relevance):
            binding.bind_output(name, kind, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream(x.device).synchronize()
        try:
            s.ort_session.run_with_iobinding(binding)
        except Exception as error:  # ORT raises its own exception types
            raise run_error(s.name, error) from None
        binding.synchronize_outputs()
        if logits is None:
            logits = torch.from_numpy(binding.copy_outputs_to_cpu()[0]).to(x.device)
        return logits, relevance

    def take(self, array: "torch.Tensor", rows: np.ndarray) -> "torch.Tensor":
        return array[self.torch.from_numpy(rows).to(array.device)].contiguous()

    def put(self, array: "torch.Tensor", rows: np.ndarray, values: "torch.Tensor") -> "torch.Tensor":
        array[self.torch.from_numpy(rows).to(array.device)] = values
        return array

    def scale(self, array: "torch.Tensor", factors: np.ndarray) -> "torch.Tensor":
        factors = self.torch.from_numpy(np.ascontiguousarray(factors, dtype=np.float32)).to(array.device)
        return array * factors.reshape((-1,) + (1,) * (array.dim() - 1))

    def cat(self, parts: list) -> "torch.Tensor":
        return parts[0] if len(parts) == 1 else self.torch.cat(parts)

    def empty(self, x: "torch.Tensor", classes: int) -> tuple:
        return x.new_zeros((0, classes)), x.new_zeros(tuple(x.shape))
