"""Causal language models: prompts in, greedy generation, and the relevance of every generated token for the
prompt in one call (`lrpgraph explain MODEL --prompt ... --tokenizer tokenizer.json --generate K`).

A converted causal LM takes token ids [N, L] (and, where the graph has them, attention_mask, position_ids and
empty past_key_values.*), outputs logits [N, L, V], and with `--target index` takes K (position, token) tuples
per sample (`target` [N, K, 2]) and outputs relevance [N, K, L]: row k is the relevance of every input token
for logit (position_k, token_k). The token generated after position p is explained at (p, that token), so K
generated tokens are explained in one call on the prompt followed by the first K - 1 generated tokens.

Prompts of different lengths share a batch padded on the right (mask 0): in a causal LM a position never sees
the ones after it, so the padding changes no logit of a real position. A model exported with a static
sequence length L takes every batch padded to L, and prompt plus generated tokens must fit in it.

Generation runs a forward-only copy of the converted graph (the nodes the logits need, built in memory) where
the model is small enough to copy; otherwise the converted graph itself with one dummy target per step."""

import sys

import numpy as np
from tqdm import tqdm

from lrpgraph import graph
from lrpgraph.errors import LrpgraphError
from lrpgraph.ort import TARGET_INPUT, Runner
from lrpgraph.runtime.session import ExplainSession

PAST_PREFIX = "past_key_values"  # optimum's cache inputs, fed empty (prefill)
COPY_LIMIT = 1 << 30  # bytes: larger models generate with the converted graph instead of a forward-only copy


class CausalLM:
    """A converted causal LM in onnxruntime: .logits(ids, mask) for generation, .explain(ids, mask, targets)
    for (logits [N, L, V], relevance [N, K, L]). .length is the static sequence length (None: any)."""

    def __init__(self, model: str, provider: str | None = None, threads: int | None = None):
        self.session = session = ExplainSession(model, provider=provider, threads=threads)
        self.name = session.name
        check_causal(session)
        self.inputs = session.runner.inputs
        self.ids_input = session.image_input
        dims = list(self.inputs[self.ids_input].shape)
        self.length = dims[1] if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 0 else None
        self.vocab = _vocab_size(session)
        unknown = [n for n in self.inputs if n not in (self.ids_input, TARGET_INPUT, "attention_mask", "position_ids")
                   and not n.startswith(PAST_PREFIX)]
        if unknown:
            raise LrpgraphError(f"{self.name} needs input(s) {', '.join(unknown)} that a prompt cannot give; a causal "
                                "LM takes input_ids and optionally attention_mask, position_ids, past_key_values.*")
        self.forward = _forward_runner(model, session, provider, threads)
        self.positions = position_table(model, self.ids_input, session.logits_output) if isinstance(model, str) \
            else None  # (table, rows) of a learned position table (GPT-2's wpe): at most that many positions

    def feeds(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        """The graph's inputs for right-padded ids [N, L] and mask [N, L] (padded to the static length)."""
        self.check_positions(ids.shape[1], f"a batch of {ids.shape[1]} tokens")
        if self.length is not None and ids.shape[1] < self.length:
            pad = ((0, 0), (0, self.length - ids.shape[1]))
            ids, mask = np.pad(ids, pad), np.pad(mask, pad)
        feeds = {self.ids_input: ids.astype(np.int64)}
        for name, info in self.inputs.items():
            if name == "attention_mask":
                feeds[name] = mask.astype(np.float32 if info.type == "tensor(float)" else np.int64)
            elif name == "position_ids":
                feeds[name] = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
            elif name.startswith(PAST_PREFIX):
                feeds[name] = _empty_past(info, len(ids))
        return feeds

    def check_positions(self, need: int, what: str) -> None:
        """LrpgraphError when need positions pass the learned position table (onnxruntime would fail in its
        Gather, mid-run)."""
        if self.positions is not None and need > self.positions[1]:
            table, rows = self.positions
            raise LrpgraphError(f"{what} needs {need} positions, but {self.name} has a learned position table of "
                                f"{rows} ('{table}'): at most {rows} tokens; shorten the prompt or generate fewer")

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """logits [N, L, V] of right-padded ids (the forward-only graph, or the converted one, a dummy target)."""
        feeds = self.feeds(ids, mask)
        runner, names = self.forward
        if TARGET_INPUT in runner.inputs:
            feeds[TARGET_INPUT] = np.zeros((len(ids), 1, 2), np.int64)
        return runner.run(names[:1], feeds)[0]

    def explain(self, ids: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> tuple:
        """(logits [N, L, V], relevance [N, K, L]) for targets [N, K, 2] of (position, token) in one call."""
        s = self.session
        feeds = {**self.feeds(ids, mask), TARGET_INPUT: np.ascontiguousarray(targets, np.int64)}
        logits, relevance = s.runner.run([s.logits_output, s.relevance_output], {**feeds, **s.constant_feeds()})
        return logits[:, :ids.shape[1]], relevance[..., :ids.shape[1]]


def check_causal(session: ExplainSession) -> None:
    """LrpgraphError unless session is a causal LM converted with --target index (logits [N, L, V])."""
    record = session.record
    shape = record.explained_shape
    fix = ("--prompt needs a causal language model (token ids [N, L] in, logits [N, L, vocab] out) converted "
           "with `lrpgraph convert MODEL.onnx --composite attn-lrp --target index`")
    if not record.token_input or shape is None or len(shape) != 2:
        what = "an image model" if not record.token_input else "a text classifier (logits [N, classes])" \
            if shape is None else f"a model whose explained tensor is [N, {', '.join(map(str, shape))}]"
        raise LrpgraphError(f"{session.name} is {what}, not a causal language model; {fix}")
    if session.target_input != TARGET_INPUT:
        raise LrpgraphError(f"{session.name} was converted with target {record.target!r}, so it cannot explain "
                            f"the generated tokens; {fix}")


def _vocab_size(session):
    size = session.record.explained_shape[-1]
    if not isinstance(size, int) or size <= 0:
        size = (list(session.runner.outputs[session.logits_output].shape) or [None])[-1]
    if not isinstance(size, int) or size <= 0:
        raise LrpgraphError(f"{session.name}: the vocabulary size (the logits' last dimension) is not static")
    return size


def _empty_past(info, n):
    """An empty cache tensor: the batch dimension n, every other symbolic dimension 0 (no past tokens)."""
    dims, first = [], True
    for d in info.shape:
        if isinstance(d, int) and d > 0:
            dims.append(d)
        else:
            dims.append(n if first else 0)
            first = False
    return np.zeros(dims, np.float16 if info.type == "tensor(float16)" else np.float32)


def _forward_runner(model, session, provider, threads):
    """(Runner, [logits output]): a forward-only copy of the converted graph where one can be built in memory
    (no external data, under COPY_LIMIT bytes), else the converted graph's own runner."""
    import onnx

    logits = session.logits_output
    own = (session.runner, [logits, session.relevance_output])
    if not isinstance(model, str):
        return own
    proto = onnx.load(model, load_external_data=False)
    if proto.ByteSize() > COPY_LIMIT or any(t.data_location == onnx.TensorProto.EXTERNAL
                                            for t in proto.graph.initializer):
        return own
    nodes = graph.needed_nodes(proto.graph.node, {logits})
    used = {t for n in nodes for t in n.input} | {logits}
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    keep_inits = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep_inits)
    for field, keep in ((proto.graph.input, lambda v: v.name in used), (proto.graph.output, lambda v: v.name == logits),
                        (proto.graph.value_info, lambda v: v.name in used)):
        kept = [v for v in field if keep(v)]
        del field[:]
        field.extend(kept)
    runner = Runner(proto, session.runner.providers, threads, name=f"{session.name} (forward)")
    return runner, [logits]


def position_table(path: str, ids: str, logits: str) -> tuple | None:
    """(name, rows) of a learned position table in the forward of the model at path: a Gather from a float
    initializer [rows, D] whose indices come from the graph's inputs but not from the token ids' values (they
    follow from the length or the mask, as GPT-2's position ids do), or None (rotary models)."""
    import onnx

    from lrpgraph.catalog import RECORDS, record_of, stops_signal

    proto = onnx.load(path, load_external_data=False)
    tables = {t.name: t.dims[0] for t in proto.graph.initializer
              if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    from_ids, from_inputs = {ids}, {i.name for i in proto.graph.input}
    found = None
    for node in graph.needed_nodes(proto.graph.node, {logits}):
        if record_of(node) is RECORDS["Gather"] and node.input[0] in tables and node.input[1] in from_inputs - from_ids:
            rows = tables[node.input[0]]
            found = (node.input[0], rows) if found is None or rows < found[1] else found
        if not stops_signal(node) and any(t in from_ids for t in node.input):  # (Shape: no value of the ids)
            from_ids.update(node.output)
        if any(t in from_inputs for t in node.input):
            from_inputs.update(node.output)
    return found


def generate(lm: CausalLM, prompts: list, steps: int, progress: bool = False) -> list:
    """Greedy decoding: [generated ids (steps of them)] per prompt (lists of ids), the prompts batched with
    right padding."""
    lengths = np.array([len(p) for p in prompts])
    width = int(lengths.max()) + max(steps, 1)
    ids = np.zeros((len(prompts), width), np.int64)
    for n, p in enumerate(prompts):
        ids[n, :len(p)] = p
    rows = np.arange(len(prompts))
    out = []
    for _ in tqdm(range(steps), desc="generating", unit="token", disable=not progress, file=sys.stderr, leave=False):
        used = int(lengths.max())
        mask = (np.arange(used)[None] < lengths[:, None]).astype(np.int64)
        logits = lm.logits(ids[:, :used], mask)
        token = logits[rows, lengths - 1].argmax(axis=-1)
        ids[rows, lengths] = token
        lengths = lengths + 1
        out.append(token)
    return np.stack(out, axis=1).tolist() if out else [[] for _ in prompts]


def explain_generated(lm: CausalLM, prompts: list, generated: list) -> tuple:
    """(relevance [N, K, W] of every input position for each generated token, logits at the explained
    positions [N, K, V]) in one call: the inputs are prompt + generated[:-1], target k is (len(prompt) - 1 + k,
    generated[k]). Positions past a row's own input carry no relevance (padding)."""
    k = len(generated[0])
    seqs = [list(p) + list(g[:-1]) for p, g in zip(prompts, generated)]
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int64)
    mask = np.zeros_like(ids)
    targets = np.zeros((len(seqs), k, 2), np.int64)
    for n, (s, p, g) in enumerate(zip(seqs, prompts, generated)):
        ids[n, :len(s)], mask[n, :len(s)] = s, 1
        targets[n, :, 0] = len(p) - 1 + np.arange(k)
        targets[n, :, 1] = g
    logits, relevance = lm.explain(ids, mask, targets)
    at = logits[np.arange(len(seqs))[:, None], targets[..., 0]]
    return relevance, at


def check_lengths(lm: CausalLM, prompts: list, steps: int, labels: list) -> None:
    """LrpgraphError when a prompt is empty, or prompt plus generated tokens exceed the static length."""
    for p, label in zip(prompts, labels):
        if not len(p):
            raise LrpgraphError(f"{label} is empty after tokenization; give a prompt with at least one token")
        need = len(p) + max(steps, 1) - 1
        if lm.length is not None and need > lm.length:
            raise LrpgraphError(f"{label} has {len(p)} tokens; with --generate {steps} it needs {need} positions, "
                                f"but {lm.name} takes at most {lm.length}: shorten the prompt or generate fewer")
        lm.check_positions(need, f"{label} ({len(p)} tokens, --generate {steps})")
        bad = [i for i in p if not 0 <= i < lm.vocab]
        if bad:
            raise LrpgraphError(f"{label}: token id {bad[0]} is outside the model's vocabulary of {lm.vocab}; is "
                                "the tokenizer the model's own?")
