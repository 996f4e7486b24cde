"""Token models in bulk runs: records of token ids (or texts, with a tokenizer.json) explained into rows with the
relevance per token, through the token runtime of `lrpgraph explain` (runtime/tokens.py: explain_inputs).

A record gives its token ids (the `tokens` column of sources.RECORD_COLUMNS) or its text (tokenized here with
the `tokenizers` package from the tokenizer.json's text the job carries) and, as JSON in `extra` (or, in a ray
Dataset given to lrpgraph.scale.explain, as columns of their own), the model's other inputs found as columns of
the same name (attention_mask, token_type_ids, ...; explain_inputs' defaults
where absent). Records of one batch are explained in groups of one length (and one kind of target), so no row
is padded: each row's relevance is what explain_inputs gives for that sequence alone. Rows carry `tokens` (the
ids), `token_strings` (with a tokenizer), `shape` [L] and the relevance per token (rows.token_schema).
"""

import json

import numpy as np

from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.tokens import explain_inputs


def check_options(session: object, options: object) -> None:
    """Refuse what bulk runs compute for images only, for a token model."""
    asked = [name for name, on in (("masks", options.masks), ("png", options.png),
                                   ("metrics", bool(options.metrics)), ("preprocess", bool(options.preprocess)))
             if on]
    if asked:
        raise LrpgraphError(f"{session.name} is a token model; {', '.join(asked)} apply to image models only "
                            "(token rows hold the relevance per token and its sum)")


def extra_inputs(session: object) -> tuple:
    """The model's inputs besides the token ids, the target and the noise seed (fed from columns of that name)."""
    fed = {session.image_input, session.target_input, "noise_seed"}
    return tuple(name for name in session.runner.inputs if name not in fed)


class TokenRows:
    """What an Explainer does for a token model: load a record (ids and other inputs) and explain a batch."""

    def __init__(self, session: object, options: object):
        check_options(session, options)
        self.session, self.options = session, options
        self.extra = extra_inputs(session)
        self.tokenizer = None
        if options.tokenizer:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str(options.tokenizer)

    def load(self, found: dict, i: int) -> tuple:
        """({input name: int64 array [L]}, None, target or None) of record i; LrpgraphError when unusable."""
        name = found["id"][i]
        if found["problem"][i]:
            raise LrpgraphError(found["problem"][i])
        inputs = json.loads(found["extra"][i]) if found["extra"][i] else {}
        inputs.update({k: found[k][i] for k in self.extra if found.get(k) and found[k][i] is not None})
        inputs = {k: v for k, v in inputs.items() if v is not None}
        if found["tokens"][i] is not None:
            ids = found["tokens"][i]
        elif found["text"][i] is not None:
            ids = self._tokenize(found["text"][i], name, inputs)
        else:
            raise LrpgraphError(f"{name}: no token ids (the value is null)")
        feeds = {self.session.image_input: np.asarray(ids, np.int64).reshape(-1)}
        for key, value in inputs.items():
            feeds[key] = np.asarray(value, np.int64).reshape(-1)
        if not feeds[self.session.image_input].size:
            raise LrpgraphError(f"{name}: no token ids (an empty sequence)")
        target = found["target"][i]
        return feeds, None, None if target is None or target < 0 else int(target)

    def _tokenize(self, text, name, inputs):
        """The text's token ids; attention_mask and token_type_ids from the encoding where the model takes them
        (over columns of those names, which cannot know how the text is tokenized)."""
        if self.tokenizer is None:
            raise LrpgraphError(f"{name}: a text needs a tokenizer (--tokenizer tokenizer.json)")
        encoding = self.tokenizer.encode(str(text))
        known = {"attention_mask": encoding.attention_mask, "token_type_ids": encoding.type_ids}
        for key in extra_inputs(self.session):
            if key in known:
                inputs[key] = known[key]
        return encoding.ids

    def explain(self, ids: list, loaded: dict, failed: dict) -> dict:
        """The columns of the loaded records, explained in groups of one length and target kind; a record the
        runtime refuses (an id out of range, a wrong input length) or whose values are not finite moves to
        failed."""
        groups = {}
        for i in sorted(loaded):
            feeds, _, target = loaded[i]
            groups.setdefault((len(feeds[self.session.image_input]), target is None), []).append(i)
        results = {}
        for (_, own), members in groups.items():
            try:
                results.update(self._group(members, loaded, not own))
            except LrpgraphError:  # explain each alone: only the records the runtime refuses fail
                for i in members:
                    reason = self._alone(i, loaded, results)
                    if reason is not None:
                        failed[i] = f"{ids[i]}: {reason}"
        for i, (logits, relevance, _) in list(results.items()):
            if not (np.isfinite(logits).all() and np.isfinite(relevance).all()):
                failed[i] = f"{ids[i]}: the relevance or the logits hold NaN or infinite values"
                del results[i]
        return self._columns([ids[i] for i in sorted(results)], [loaded[i][0] for i in sorted(results)],
                             [results[i] for i in sorted(results)])

    def _group(self, members, loaded, own):
        """{record: (logits [C], relevance [L], explained)} of records of one length."""
        names = loaded[members[0]][0].keys()
        feeds = {}
        for key in names:
            values = [loaded[i][0].get(key) for i in members]
            if any(v is None or len(v) != len(values[0]) for v in values):
                raise LrpgraphError(f"input {key!r} is missing or has another length than the token ids")
            feeds[key] = np.stack(values)
        target = (np.array([loaded[i][2] for i in members], np.int64) if own else self.options.target)
        logits, relevance, explained = explain_inputs(self.session, feeds, target)
        return {i: (logits[k], relevance[k], None if explained is None else int(explained[k]))
                for k, i in enumerate(members)}

    def _alone(self, i, loaded, results):
        """Explain record i alone after its group failed: None when it works (its result kept), else why not."""
        try:
            results.update(self._group([i], loaded, loaded[i][2] is not None))
            return None
        except LrpgraphError as alone:
            return str(alone)

    def _columns(self, ids, feeds, results):
        """The output columns of the explained records."""
        from lrpgraph import metrics

        session, n = self.session, len(ids)
        if not n:
            return {}
        logits = np.stack([r[0] for r in results]).astype(np.float32)
        probabilities = logits.astype(np.float64) if session.outputs_probabilities else metrics.softmax(logits)
        predicted = probabilities.argmax(axis=1)
        labels = session.labels if isinstance(session.labels, list) else None
        explained = [r[2] for r in results]
        token_ids = [f[session.image_input].tolist() for f in feeds]
        output = session.relevance_output
        columns = {"id": ids, "predicted": predicted.astype(np.int64),
                   "predicted_label": [str(labels[p]) if labels and p < len(labels) else None for p in predicted],
                   "probability": probabilities[np.arange(n), predicted], "logits": logits,
                   "explained": None if session.record.target == "all" else explained,
                   "tokens": token_ids, "shape": [[len(t)] for t in token_ids],
                   f"{output}_sum": [float(np.asarray(r[1], np.float64).sum()) for r in results]}
        if self.options.heatmaps:
            columns[output] = [np.asarray(r[1], self.options.dtype).tolist() for r in results]
        if self.tokenizer is not None:
            columns["token_strings"] = [[self.tokenizer.id_to_token(t) for t in row] for row in token_ids]
        return columns
