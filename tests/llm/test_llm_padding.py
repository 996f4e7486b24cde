"""A padded batch of two prompts padded on the left (the padding first, as batched generation pads): the
next-token relevance of the converted graph against LXT 2.1's efficient mode in float64, padding tokens
exactly 0; and a learned position table (GPT-2's n_positions) checked before a run, in one line."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lrpgraph
from lrpgraph.errors import LrpgraphError

pytest.importorskip("lxt")
pytest.importorskip("transformers")
import llm_models  # noqa: E402
import lxt_llm_ref  # noqa: E402

TOL = 1e-4
MODELS = list(llm_models.CONFIGS)


def left_padded() -> dict:
    """llm_models.batch() with each row's padding moved to its start: [N, L] ids and mask."""
    ids, mask = (t.numpy() for t in llm_models.batch())
    shift = (mask == 0).sum(1)
    rows = [np.roll(row, s) for row, s in zip(ids, shift)], [np.roll(row, s) for row, s in zip(mask, shift)]
    return {"input_ids": np.stack(rows[0]), "attention_mask": np.stack(rows[1])}


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """{name: (the exported model, LXT's logits and relevance)} for the left-padded batch: one subprocess."""
    tmp = tmp_path_factory.mktemp("left")
    feeds = left_padded()
    assert feeds["attention_mask"][1, 0] == 0 and feeds["attention_mask"][:, -1].all()
    np.savez(tmp / "inputs.npz", **feeds)
    models, cases = {}, []
    for name in MODELS:
        model = llm_models.build(name)
        torch.save(model.state_dict(), tmp / f"{name}.pt")
        models[name] = llm_models.export(model)
        cases.append(dict(model=name, state=str(tmp / f"{name}.pt"), inputs=str(tmp / "inputs.npz"), targets=None))
    arrays = lxt_llm_ref.run(dict(method="attn-lrp", cases=cases, out=str(tmp / "left.npz"), float32_mask=True))
    assert all(np.isfinite(arrays[f"{i}_relevance"]).all() for i in range(len(MODELS)))
    return {name: (models[name], arrays[f"{i}_logits"], arrays[f"{i}_relevance"]) for i, name in enumerate(MODELS)}, feeds


@pytest.mark.parametrize("name", MODELS)
def test_left_padding_matches_lxt(padded, name):
    models, feeds = padded
    exported, ref_logits, ref = models[name]
    converted = lrpgraph.convert(exported, composite="attn-lrp")
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, relevance = session.run(["logits", "relevance"], feeds)
    real = feeds["attention_mask"] == 1
    np.testing.assert_allclose(logits[real], ref_logits[real], rtol=1e-4, atol=1e-5)
    error = float(np.abs(relevance - ref).sum() / np.abs(ref).sum())
    print(f"{name} left-padded attn-lrp: L1 vs LXT {error:.1e}")
    assert error <= TOL
    assert np.all(relevance[~real] == 0)


def _gpt2(n_positions):
    """A random GPT-2 with n_positions learned positions, exported (dynamo, lengths up to n_positions)."""
    import transformers

    torch.manual_seed(0)
    kwargs = dict(llm_models.CONFIGS["gpt2"][2], n_positions=n_positions)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs, use_cache=False)).eval()
    ids = torch.ones(1, 4, dtype=torch.int64)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("length", min=2, max=n_positions)}
    program = torch.onnx.export(llm_models.Logits(model).eval(), (ids, torch.ones_like(ids)), None, verbose=False,
                                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                dynamic_shapes=(dims, dims))
    return program.model_proto.SerializeToString()


def test_position_limit_checked_before_running(tmp_path):
    """GPT-2 with 12 learned positions: CausalLM finds the table (12 rows), a prompt that with the generated
    tokens needs 13 positions is refused in one line naming 12 and 13, where the unconverted graph itself
    fails in onnxruntime at 13 positions and runs at 12; a rotary model (Llama) has no such limit."""
    from lrpgraph.runtime.llm import CausalLM, check_lengths

    exported = _gpt2(12)
    plain = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    ids = np.arange(1, 13, dtype=np.int64)[None]
    plain.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    ids13 = np.arange(1, 14, dtype=np.int64)[None]
    with pytest.raises(Exception):  # the limit is real: the position Gather's index 12 is out of range
        plain.run(None, {"input_ids": ids13, "attention_mask": np.ones_like(ids13)})
    path = tmp_path / "gpt2.lrp.onnx"
    lrpgraph.save(lrpgraph.convert(exported, composite="attn-lrp", target="index"), str(path))
    lm = CausalLM(str(path))
    assert lm.positions is not None and lm.positions[1] == 12
    check_lengths(lm, [list(range(1, 11))], 3, ["prompt 1"])  # 10 + 3 - 1 = 12 positions: fits
    with pytest.raises(LrpgraphError) as error:
        check_lengths(lm, [list(range(1, 11))], 4, ["prompt 1"])  # 13 positions
    message = str(error.value)
    assert "\n" not in message and "12" in message and "13 positions" in message and "prompt 1" in message
    with pytest.raises(LrpgraphError, match="13 positions"):
        lm.explain(ids13, np.ones_like(ids13), np.array([[[12, 3]]]))
    llama = tmp_path / "llama.lrp.onnx"
    lrpgraph.save(lrpgraph.convert(llm_models.export(llm_models.build("llama")), composite="attn-lrp",
                                   target="index"), str(llama))
    assert CausalLM(str(llama)).positions is None
