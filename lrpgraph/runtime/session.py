"""ExplainSession: run a converted model in ONNX Runtime and get (logits, relevance) back, in batches.
relevance is one array, or a dict {output name: array} for a model with several heatmap outputs
(`convert --explain NAME=SPEC ...`).

Choices worth knowing:
- The class to explain is fed through the model's `target` (int64 [N]) or `relevance_seed`
  (float32 [N, classes]) input; which one is decided by the inputs the model really has, and checked
  against the target mode recorded in its metadata.
- target=None on a model with a target/seed input means "the predicted class". The logits do not
  depend on the target, so one run with class 0 gives them; only the rows whose prediction is not 0
  are run a second time. Models converted with target 'top' do this in one run.
- On a seed model a float array is passed as it is ([classes] is repeated for every row); its explained
  class is its argmax. An int, integer sequence or None is explained as an index model would: the
  seed is one-hot for gradient composites, and logit * one-hot for LRP composites, which is done by
  running the one-hot seed and multiplying each row's relevance by its logit (every LRP rule is
  linear in the relevance it receives, so this equals feeding logit * one-hot).
- The logits are read from config "logits_output" (else "logits" when it is a graph output, else the
  first output); with outputs_probabilities they are the model's probabilities.
- numpy in -> numpy out. torch in -> torch out, on the input's device. A torch tensor on the session's
  own device (CUDA tensor + CUDA session, or CPU + CPU) is bound with IO binding, so nothing is copied;
  the two array backends (NumpyOps, TorchOps) are in arrays.py, this module batches rows and plans targets.
"""

import os
import sys

import numpy as np

from lrpgraph import metadata
from lrpgraph.runtime import ktargets, tokens
from lrpgraph.errors import LrpgraphError, NotConvertedError
from lrpgraph.ort import NOISE_SEED_INPUT, SEED_INPUT, TARGET_INPUT, Runner, session_options, source_of
from lrpgraph.runtime.arrays import NumpyOps, TorchOps, is_torch, to_numpy
from lrpgraph.runtime.providers import CPU, CUDA, choose_providers, cuda_options

__all__ = ["ExplainSession", "DEFAULT_BATCH_SIZE",
           "CPU", "CUDA", "choose_providers", "cuda_options"]  # the providers' names are public here too

DEFAULT_BATCH_SIZE = 32


def _read_record(session, name):
    """The lrpgraph metadata.Record from ORT's custom metadata map."""
    record = metadata.Record.from_props(session.get_modelmeta().custom_metadata_map, name)
    if record is None:
        raise NotConvertedError(
            f"{name} has no lrpgraph metadata: it is not a converted model; "
            "run `lrpgraph convert` on it first and use the .lrp.onnx it writes"
        )
    return record


class ExplainSession:
    """A converted model in ONNX Runtime; .explain(batch, target) -> (logits, relevance). .ort_session is the
    underlying onnxruntime.InferenceSession, .providers the providers it really uses. On CUDA: tf32=False
    keeps float32 arithmetic exact to float32 (use_tf32 0); device_id picks the GPU (torch tensors on
    another GPU are copied to it and the results back)."""

    def __init__(self, path_or_model: str | os.PathLike | bytes | object, provider: str | None = None,
                 threads: int | None = None, optimization: str = "all", batch_size: int = DEFAULT_BATCH_SIZE,
                 tf32: bool = False, device_id: int = 0):
        source, self.name = source_of(path_or_model)
        session_options(threads, optimization)  # bad options are refused before the providers are looked at
        if not isinstance(device_id, (int, np.integer)) or isinstance(device_id, bool) or device_id < 0:
            raise LrpgraphError(f"device_id must be a GPU index (an integer >= 0), got {device_id!r}")
        self.device_id = int(device_id)
        requested = choose_providers(provider, bool(tf32), self.device_id)
        self.runner = Runner(source, requested, threads, optimization, name=self.name)
        self.ort_session = self.runner.session
        self.providers = self.runner.providers
        self.device = "cuda" if self.providers and self.providers[0] == CUDA else "cpu"
        if requested[0] != CPU and self.device != "cuda":
            raise LrpgraphError(
                f"provider 'cuda' asked for, but onnxruntime fell back to {self.providers[0]} for {self.name} "
                "(CUDA/cuDNN libraries missing?); fix the CUDA install or use provider 'cpu'"
            )
        self.batch_size = _positive(batch_size, "batch_size")
        self._read_config()

    def _read_config(self):
        self.record = record = _read_record(self.ort_session, self.name)
        self.config = record.config()  # the lrpgraph.config object, as stored
        self.preprocess, self.labels, self.version = record.preprocess, record.labels, record.version
        self.target_mode = record.target
        self.outputs_probabilities = record.outputs_probabilities
        inputs, outputs = self.runner.inputs, self.runner.outputs
        self.tokens = record.token_input
        self._find_tensors(inputs, outputs)
        record.check_inputs(list(inputs), self.name)  # a tampered target mode: one line
        shape = list(inputs[self.image_input].shape)
        if self.tokens:  # token ids [N, L]: explain_inputs feeds them and the other inputs by name
            shape = [None, None, None, None]
        if len(shape) != 4:
            raise LrpgraphError(
                f"{self.name}: image input {self.image_input!r} has shape {shape}, expected [N, C, H, W]"
            )
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:])
        classes = (list(outputs[self.logits_output].shape)[-1:] or [None])[0] if not record.k_targets else None
        labels_count = len(self.labels) if isinstance(self.labels, list) else None
        self.num_classes = classes if isinstance(classes, int) and classes > 0 else labels_count
        self.logits_float32 = outputs[self.logits_output].type == "tensor(float)"

    def _find_tensors(self, inputs, outputs):
        """Set image_input, logits_output, relevance_output and target_input; check they exist."""
        record = self.record
        self.image_input = record.image_input or next(iter(inputs), None)
        logits = record.logits if record.logits in outputs else None
        self.logits_output = record.logits_output or logits or next(iter(outputs), None)
        self.relevance_outputs = record.relevance_outputs
        self.relevance_output = self.relevance_outputs[0]  # the first (the only one on most models)
        for role, tensor, known in (
            ("image input", self.image_input, inputs),
            ("logits output", self.logits_output, outputs),
            *(("relevance output", name, outputs) for name in self.relevance_outputs),
        ):
            if tensor not in known:
                raise LrpgraphError(
                    f"{self.name}: its metadata names {tensor!r} as the {role}, but the graph has no such tensor; "
                    "convert the model again"
                )
        self.target_input = self.runner.target_input
        if self.tokens:
            return
        if inputs[self.image_input].type != "tensor(float)":
            raise LrpgraphError(
                f"{self.name}: image input {self.image_input!r} is {inputs[self.image_input].type}, not float32"
            )
        want = {"index": TARGET_INPUT, "seed": SEED_INPUT}.get(self.target_mode)
        if want is not None and self.target_input != want:
            raise LrpgraphError(
                f"{self.name}: converted with target {self.target_mode!r} but has no {want!r} input; convert it again"
            )
        extra = [n for n in inputs if n not in (self.image_input, self.target_input, NOISE_SEED_INPUT)]
        if extra:
            raise LrpgraphError(
                f"{self.name}: inputs {', '.join(extra)} besides the image cannot be fed by ExplainSession; "
                "give them default values (initializers) before converting"
            )

    def explain_inputs(self, inputs: dict, target: int | np.ndarray | None = None) -> tuple:
        """(logits, relevance [N, L]) of a text model: inputs {graph input name: array} (token ids and, if
        given, attention_mask, token_type_ids, ...; see runtime/tokens.py for defaults), target as explain's."""
        return tokens.explain_inputs(self, inputs, target)[:2]

    def __repr__(self):
        return (
            f"ExplainSession({self.name!r}, device={self.device!r}, target={self.target_mode!r}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    # ---- targets -------------------------------------------------------------------------------

    def _target_feed(self, target, n):
        """A _Plan for n rows: what to feed, the explained classes, and whether to predict / scale (a KPlan on a
        model with K targets per sample, runtime/ktargets.py)."""
        if self.record.k_targets:
            return ktargets.plan(self, target, n)
        if is_torch(target):
            target = target.detach().cpu().numpy()
        if self.target_input is None:
            if target is not None:
                raise LrpgraphError(
                    f"{self.name} was converted with target {self.target_mode!r} and has no target input; "
                    "convert it with target 'index' (or 'seed') to choose the explained class"
                )
            return _Plan(None, None, False, False)
        array = None if target is None else np.asarray(target)
        if array is not None and self.target_input == SEED_INPUT and array.dtype.kind == "f":
            seed = self._seed_feed(array, n)
            return _Plan(seed, seed.argmax(axis=1).astype(np.int64) if n else None, False, False)
        scale = [self.target_input == SEED_INPUT and not self._gradient_seed(o) for o in self.relevance_outputs]
        scale = scale if any(scale) else False
        if scale and self.outputs_probabilities:
            raise LrpgraphError(
                f"{self.name} takes a relevance seed and outputs probabilities, so the logit * one-hot seed for a "
                "class cannot be formed; pass the seed itself as a float array [N, classes]"
            )
        if array is None:
            return _Plan(self._class_feed(np.zeros(n, dtype=np.int64)), None, True, scale)
        classes = self._class_indices(array, n)
        return _Plan(self._class_feed(classes), classes, False, scale)

    def _gradient_seed(self, output):
        """True when output's seed is a gradient (one-hot), False when it is relevance (logit * one-hot)."""
        return self.record.is_gradient(output)

    def check_target(self, target: object, n: int = 1) -> None:
        """Raise LrpgraphError now if target cannot be used with this model (for n images)."""
        self._target_feed(target, n)

    def _class_indices(self, array, n):
        if array.dtype.kind not in "iu":
            raise LrpgraphError(
                f"target must be a class index or a sequence of class indices (integers), got {array.dtype} values"
            )
        if array.ndim == 0:
            array = np.full(n, int(array), dtype=np.int64)
        if array.ndim != 1 or len(array) != n:
            raise LrpgraphError(
                f"target gives {array.size} class indices for a batch of {n} images; give one int or one per image"
            )
        array = array.astype(np.int64)
        self._check_range(array)
        return array

    def _check_range(self, classes, count=None):
        count = count if count is not None else self.num_classes
        if count is None or classes.size == 0:
            return
        bad = classes[(classes < 0) | (classes >= count)]
        if bad.size:
            raise LrpgraphError(
                f"target class {int(bad[0])} is out of range: {self.name} has {count} classes (0 to {count - 1})"
            )

    def _seed_feed(self, seed, n):
        seed = seed.astype(np.float32)
        if seed.ndim == 1:
            seed = np.broadcast_to(seed, (n, seed.shape[0]))
        width = self.num_classes if self.num_classes is not None else seed.shape[-1]
        if seed.ndim != 2 or seed.shape != (n, width):
            raise LrpgraphError(
                f"relevance seed has shape {list(seed.shape)}; expected [{n}, {width}] (or [{width}] for every image)"
            )
        return np.ascontiguousarray(seed)

    def _class_feed(self, classes):
        return self.runner.target_feed(classes, self.num_classes)

    # ---- running -------------------------------------------------------------------------------

    def _check_batch_shape(self, shape):
        want = self.input_shape
        if len(shape) != 4 or any(w is not None and w != g for w, g in zip(want, shape[1:])):
            text = ", ".join("?" if w is None else str(w) for w in want)
            raise LrpgraphError(f"batch has shape {list(shape)}; {self.name} expects [N, {text}] float32 images")

    @property
    def several(self) -> bool:
        """True when the model has several heatmap outputs (convert --explain NAME=SPEC ...)."""
        return len(self.relevance_outputs) > 1

    def explain(self, batch: object, target: object = None, batch_size: int | None = None,
                return_targets: bool = False) -> tuple:
        """(logits, relevance) for a batch [N, C, H, W]; with return_targets also the explained classes.

        relevance is an array [N, C, H, W] on a model with one heatmap output; on a model with several
        (`convert --explain NAME=SPEC ...`) it is a dict {output name: array}, e.g. {"relevance_lrp": ...,
        "relevance_gig": ...}, in the order the model lists them (session.relevance_outputs).
        target: None (the predicted class), an int, a sequence of N ints, or for seed models a float
        seed [N, classes] / [classes]. The explained classes are an int64 array, or None for 'all'.
        On a model with K targets per sample (a detector's head, convert --from; session.record.k_targets):
        logits is the explained tensor [N, *S], target index tuples [N, K, len(S)] (or seeds [N, K, *S]),
        relevance [N, K, C, H, W], the explained targets index tuples (runtime/ktargets.py).
        """
        size = _positive(batch_size if batch_size is not None else self.batch_size, "batch_size")
        if is_torch(batch):
            logits, relevance, explained = self._explain_torch(batch, target, size)
        else:
            array = np.asarray(batch)
            if array.dtype.kind not in "fiu":
                raise LrpgraphError(f"batch must hold numbers, got dtype {array.dtype}")
            self._check_batch_shape(array.shape)
            x = np.ascontiguousarray(array, dtype=np.float32)
            logits, relevance, explained = self.explain_rows(x, target, NumpyOps(self), size)
        relevance = dict(zip(self.relevance_outputs, relevance)) if self.several else relevance[0]
        return (logits, relevance, explained) if return_targets else (logits, relevance)

    def explain_rows(self, x: object, target: object, ops: object, batch_size: int | None = None) -> tuple:
        """(logits, [relevance per heatmap output], explained classes) for the rows x: the one loop that turns a
        target into feeds (the module's docstring) and runs them in chunks of batch_size rows. ops runs a chunk
        and does the array work in x's own type: arrays.NumpyOps or TorchOps for images [N, C, H, W],
        tokens.TokenOps for a text model's inputs by name (tokens.Feeds); x.shape[0] is the number of rows and
        x[rows] a chunk. The classes are None for target 'all'."""
        n = x.shape[0]
        size = batch_size or self.batch_size
        plan = self._target_feed(target, n)
        logits_parts, relevance_parts, predicted = [], [], []
        for start in range(0, n, size):
            logits, relevance, classes = self._run_chunk(x[start:min(start + size, n)], plan, start, ops)
            predicted.append(classes)
            logits_parts.append(logits)
            relevance_parts.append(relevance)
        explained = plan.explained
        if self.num_classes is None and explained is not None and logits_parts and not self.record.k_targets:
            self._check_range(explained, to_numpy(logits_parts[0]).shape[1])
        if plan.predict or (self.record.k_targets and predicted and predicted[0] is not None):
            explained = np.concatenate(predicted) if predicted else np.zeros(0, dtype=np.int64)
        if not logits_parts:
            logits, empty = ops.empty(x, self.num_classes or 0)
            return logits, [empty for _ in self.relevance_outputs], explained
        relevance = [ops.cat([part[k] for part in relevance_parts]) for k in range(len(relevance_parts[0]))]
        logits = ops.cat(logits_parts)
        if explained is None and self.target_mode == "top" and not self.record.k_targets:
            explained = to_numpy(logits).argmax(axis=1).astype(np.int64)
        return logits, relevance, explained

    def _run_chunk(self, x, plan, start, ops):
        """(logits, [relevance], explained classes) of the chunk x, rows start.. of the plan."""
        if self.record.k_targets:
            return ktargets.run_chunk(self, x, plan, start, ops)
        rows = slice(start, start + x.shape[0])
        feed = None if plan.feed is None else plan.feed[rows]
        logits, relevance = ops.run(x, feed)
        classes = None if plan.explained is None else plan.explained[rows]
        if plan.predict:
            classes = to_numpy(logits).argmax(axis=1).astype(np.int64)
            redo = np.nonzero(classes != 0)[0]  # the first run explained class 0
            if redo.size:
                _, again = ops.run(ops.take(x, redo), self._class_feed(classes[redo]))
                relevance = [ops.put(r, redo, a) for r, a in zip(relevance, again)]
        if plan.scale:
            self._check_range(classes, to_numpy(logits).shape[1])
            factors = to_numpy(logits)[np.arange(len(classes)), classes]
            relevance = [ops.scale(r, factors) if s else r for r, s in zip(relevance, plan.scale)]
        return logits, relevance, classes

    def constant_feeds(self) -> dict:
        """Inputs fed the same value on every run: {noise_seed: its default} on SmoothGrad/SmoothTaylor models."""
        return self.runner.constant_feeds()

    def _explain_torch(self, batch, target, size):
        torch = sys.modules["torch"]
        self._check_batch_shape(tuple(batch.shape))
        home = batch.device
        same = home.type == self.device
        x = batch.detach().to(dtype=torch.float32)
        if not same:
            logits, relevance, explained = self.explain_rows(
                np.ascontiguousarray(x.cpu().numpy()), target, NumpyOps(self), size
            )
            return torch.from_numpy(logits).to(home), [torch.from_numpy(r).to(home) for r in relevance], explained
        if home.type == "cuda" and (home.index or 0) != self.device_id:  # the CUDA provider's own GPU
            x = x.to(f"cuda:{self.device_id}").contiguous()
            logits, relevance, explained = self.explain_rows(x, target, TorchOps(self), size)
            return logits.to(home), [r.to(home) for r in relevance], explained
        return self.explain_rows(x.contiguous(), target, TorchOps(self), size)


class _Plan:
    """How to run a target: feed (array or None), explained (int64 per row or None), predict (find the
    predicted class first), scale (multiply each row's relevance by its explained logit)."""

    def __init__(self, feed, explained, predict, scale):
        self.feed, self.explained, self.predict, self.scale = feed, explained, predict, scale


def _positive(value, what):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise LrpgraphError(f"{what} must be a positive integer, got {value!r}")
    return int(value)
