"""Targets of a model that takes K targets per sample (convert's explained tensor y [N, *S] other than a
classifier's logits; metadata.Record.k_targets): what ExplainSession.explain_rows feeds and how it reads
the results back. relevance is [N, K, *input].

- `target` models take index tuples into S: an int array [N, K, len(S)], [K, len(S)] or [len(S)] for every
  sample; with len(S) == 1 also [N] or [N, K] (one or K classes per sample). target=None explains the
  largest element of S per sample (a causal LM's logits [N, L, V]: the next token, next_token): a first run
  finds it, a second explains it.
- `relevance_seed` models take float seeds [N, *S] or [N, K, *S], fed as they are; index tuples are fed as
  one-hot seeds, and for an LRP composite each heatmap is then multiplied by its element of y (every LRP
  rule is linear in the relevance it receives).
- `top` and `all` models take no target: K = 1.
The explained targets come back as index tuples [N, K, len(S)] (None for float seeds and 'all')."""

import numpy as np

from lrpgraph.errors import LrpgraphError
from lrpgraph.ort import SEED_INPUT
from lrpgraph.runtime.arrays import to_numpy


class KPlan:
    """How to run K targets: feed (array or None), explained ([N, K, len(S)] int64 or None), predict (find
    each sample's largest element first), scale ([True/False per heatmap output] or False)."""

    def __init__(self, feed: np.ndarray | None, explained: np.ndarray | None, predict: bool = False,
                 scale: list | bool = False):
        self.feed, self.explained, self.predict, self.scale = feed, explained, predict, scale


def plan(session: object, target: object, n: int) -> KPlan:
    """The KPlan of target for n samples on session (an ExplainSession with record.k_targets)."""
    sizes = list(session.record.explained_shape)
    if hasattr(target, "detach"):
        target = target.detach().cpu().numpy()
    if session.target_input is None:
        if target is not None:
            raise LrpgraphError(f"{session.name} was converted with target {session.target_mode!r} and has no target "
                                "input; convert it with target 'index' (or 'seed') to choose what is explained")
        return KPlan(None, None)
    array = None if target is None else np.asarray(target)
    if array is not None and array.dtype.kind == "f":
        if session.target_input != SEED_INPUT:
            raise LrpgraphError(f"target is a float array, but {session.name} takes index tuples (int64) into "
                                f"{sizes}; convert it with target 'seed' to pass seeds")
        return KPlan(_seeds(array, n, sizes), None)
    scale = [session.target_input == SEED_INPUT and not session.record.is_gradient(o)
             for o in session.relevance_outputs]
    scale = scale if any(scale) else False
    if array is None:
        return KPlan(_feed(session, np.zeros((n, 1, len(sizes)), np.int64), sizes), None, True, scale)
    tuples = index_tuples(array, n, sizes)
    return KPlan(_feed(session, tuples, sizes), tuples, False, scale)


def index_tuples(array: np.ndarray, n: int, sizes: list) -> np.ndarray:
    """int64 [n, K, len(S)] from the accepted layouts (module docstring), range-checked."""
    rank = len(sizes)
    if array.dtype.kind not in "iu":
        raise LrpgraphError(f"target must hold integer index tuples into {sizes}, got {array.dtype} values")
    if rank == 1 and array.ndim < 3:  # classes: one for all, [N] or [N, K]
        array = np.broadcast_to(array, (n,)) if array.ndim == 0 else array
        array = array.reshape(array.shape[:1] + (-1, 1))
    elif array.ndim in (1, 2):  # one tuple [r] or K tuples [K, r] for every sample
        tuples = array.reshape(-1, array.shape[-1])
        array = np.broadcast_to(tuples[None], (n,) + tuples.shape)
    if array.ndim != 3 or array.shape[0] != n or array.shape[2] != rank:
        raise LrpgraphError(f"target has shape {list(array.shape)}; give index tuples [{n}, K, {rank}] into the "
                            f"explained tensor's {sizes} (or [K, {rank}] / [{rank}] for every sample)")
    bad = (array < 0) | (array >= np.asarray([np.iinfo(np.int64).max if s is None else s for s in sizes]))
    if bad.any():
        where = tuple(int(v) for v in array[np.nonzero(bad)[:2]][0])
        raise LrpgraphError(f"target {list(where)} is out of range for the explained tensor's {sizes}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _fits(shape, sizes):
    """Whether a shape is sizes, a None size (a causal LM's length) taking any."""
    return len(shape) == len(sizes) and all(s is None or d == s for d, s in zip(shape, sizes))


def _seeds(seed, n, sizes):
    seed = seed.astype(np.float32)
    if _fits(seed.shape[1:], sizes) and seed.shape[0] == n:
        seed = seed[:, None]
    if seed.ndim != len(sizes) + 2 or seed.shape[0] != n or not _fits(seed.shape[2:], sizes):
        raise LrpgraphError(f"relevance seed has shape {list(seed.shape)}; expected [{n}, {', '.join(map(str, sizes))}]"
                            f" or [{n}, K, {', '.join(map(str, sizes))}]")
    return np.ascontiguousarray(seed)


def _feed(session, tuples, sizes):
    """What the target input takes for index tuples [n, K, r]: the tuples, or one-hot seeds [n, K, *S]."""
    if session.target_input != SEED_INPUT:
        return tuples
    if None in sizes:
        raise LrpgraphError(f"{session.name} takes float seeds [N, K, L, V] (target 'seed' on a causal LM's logits); "
                            "pass them, or convert with target 'index' to pass (position, token) tuples")
    n, k = tuples.shape[:2]
    flat = np.ravel_multi_index(tuple(np.moveaxis(tuples, -1, 0)), sizes)
    onehot = np.zeros((n, k, int(np.prod(sizes))), np.float32)
    np.put_along_axis(onehot, flat[..., None], 1.0, axis=-1)
    return onehot.reshape((n, k, *sizes))


def largest(values: object, sizes: list) -> np.ndarray:
    """The index tuple of each sample's largest element: [N, 1, len(S)]."""
    flat = to_numpy(values).reshape(len(to_numpy(values)), -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, sizes), axis=-1)[:, None].astype(np.int64)


def next_token(values: object, x: object) -> np.ndarray:
    """A causal LM's next token per sample as a (position, token) tuple [N, 1, 2]: the argmax token at the last
    position where the fed attention_mask is 1 (the last position without one), as target 'top' explains."""
    y = to_numpy(values)
    mask = getattr(x, "arrays", {}).get("attention_mask")
    present = np.ones(y.shape[:2]) if mask is None else np.asarray(mask)
    position = (present * np.arange(1, y.shape[1] + 1)).argmax(1)
    token = y[np.arange(len(y)), position].argmax(-1)
    return np.stack([position, token], -1)[:, None].astype(np.int64)


def run_chunk(session: object, x: object, plan_: KPlan, start: int, ops: object) -> tuple:
    """(explained tensor, [relevance [n, K, *input]], explained tuples) of the chunk x, rows start.."""
    rows = slice(start, start + x.shape[0])
    sizes = list(session.record.explained_shape)
    feed = None if plan_.feed is None else plan_.feed[rows]
    sequence = None in sizes
    if sequence:  # a causal LM's length L: its token ids' [N, L] (checked before the run, whose Gather needs it)
        sizes = [x.shape[1] if s is None else s for s in sizes]
    tuples = None if plan_.explained is None else plan_.explained[rows]
    if tuples is not None and (tuples >= np.asarray(sizes)).any():
        raise LrpgraphError(f"target {tuples[np.nonzero((tuples >= np.asarray(sizes)).any(-1))][0].tolist()} is out of "
                            f"range for the explained tensor's {sizes}")
    values, relevance = ops.run(x, feed)
    if plan_.predict:
        tuples = next_token(values, x) if sequence else largest(values, sizes)
        _, relevance = ops.run(x, _feed(session, tuples, sizes))
    elif plan_.feed is None and session.target_mode == "top":
        tuples = largest(values, sizes)
    if plan_.scale and tuples is not None:
        y = to_numpy(values)
        factors = y[(np.arange(len(y))[:, None],) + tuple(np.moveaxis(tuples, -1, 0))]
        relevance = [_scale(r, factors) if s else r for r, s in zip(relevance, plan_.scale)]
    return values, relevance, tuples


def _scale(array, factors):
    shape = factors.shape + (1,) * (array.ndim - 2)
    if hasattr(array, "detach"):
        return array * array.new_tensor(factors.astype(np.float32)).reshape(shape)
    return array * factors.astype(array.dtype).reshape(shape)
