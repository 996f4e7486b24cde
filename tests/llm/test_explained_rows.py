"""The relevance path of a causal LM starts from the explained rows only (lrpgraph/explained_rows.py): under
`top` and `index` no node of the relevance pass reads the logits [N, L, V] but the Gather of the explained rows,
and the result equals the seed at the whole logits (target `seed` with one-hot seeds, which keeps the old path),
for the LRP composites."""

import numpy as np
import onnxruntime as ort
import pytest

import lrpgraph

pytest.importorskip("transformers")
import llm_models  # noqa: E402

K_TUPLES = np.array([[[8, 5], [3, 17]], [[5, 9], [0, 40]]], np.int64)


@pytest.mark.parametrize("composite", ["attn-lrp", "cp-lrp"])
def test_rows_only_and_equal_to_the_whole_seed(composite):
    exported = llm_models.export(llm_models.build("qwen2"))
    ids, mask = (t.numpy() for t in llm_models.batch())
    feeds = {"input_ids": ids, "attention_mask": mask}
    by_index = lrpgraph.convert(exported, composite=composite, target="index")
    for converted in (by_index, lrpgraph.convert(exported, composite=composite)):
        readers = [n.op_type for n in converted.graph.node if n.name.startswith("lrp/") and "logits" in n.input]
        assert readers == ["GatherND"], readers
    seeded = lrpgraph.convert(exported, composite=composite, target="seed")
    whole_readers = [n.op_type for n in seeded.graph.node if n.name.startswith("lrp/") and "logits" in n.input]
    assert whole_readers and "GatherND" not in whole_readers  # the lm_head's rule on the whole [N, L, V]
    onehot = np.zeros((2, 2, ids.shape[1], llm_models.VOCAB), np.float32)
    for n in range(2):
        for k, (p, t) in enumerate(K_TUPLES[n]):
            onehot[n, k, p, t] = 1.0
    rows = ort.InferenceSession(by_index.SerializeToString(), providers=["CPUExecutionProvider"])
    whole = ort.InferenceSession(seeded.SerializeToString(), providers=["CPUExecutionProvider"])
    got = rows.run(["relevance"], {**feeds, "target": K_TUPLES})[0]
    ref = whole.run(["relevance"], {**feeds, "relevance_seed": onehot})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)
