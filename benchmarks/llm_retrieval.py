"""Does attn-lrp point at the right token of a causal LM? A check that can fail (docs/llm.md, "Does it point at
the right token").

A small Hugging Face LlamaForCausalLM (random init, torch, one thread) learns a synthetic retrieval task: a
prompt lists key value pairs with distinct keys and distinct values and ends with the key asked for,

    k3 7 k1 2 k5 9 k0 4 k6 8 k1      ->  2

(the loss is on the answers only; without the '=' and '?' of "k3=7 ... k1?", which the small model did not learn
to look past within a few minutes of training). The trained model is exported (torch.onnx.export, dynamo), converted with
`--composite attn-lrp --target index` and run in onnxruntime on held-out prompts. Among the prompts it answers
correctly, the script counts how often the most relevant prompt token is the queried key's value token (its
position: values are distinct, so there is one), for

  attn-lrp            the converted graph in onnxruntime: relevance of the predicted token at the last position
  input x gradient    torch autograd on the embeddings of the same model, summed over the hidden axis
  random              a random ranking of the prompt's positions (expected: 1 / prompt length)

and exits 1 unless attn-lrp reaches --threshold (90 %). With --page DIR it also writes `lrpgraph explain`'s page
for a few held-out prompts (DIR/index.html, the picture in docs/llm.png).

    python benchmarks/llm_retrieval.py --page out/llm_page
"""

import argparse
import os
import sys
import time

import numpy as np

KEYS, VALUES = 8, 10


def vocabulary() -> list:
    """The tokens: keys k0.., digits 0-9 (id 0 is [UNK], never produced by the task)."""
    return ["[UNK]"] + [f"k{i}" for i in range(KEYS)] + [str(v) for v in range(VALUES)]


def write_tokenizer(path: str) -> object:
    """A WordLevel tokenizer.json over vocabulary(), split on whitespace and punctuation (the `tokenizers` format)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocabulary())}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(path)
    return tok


def make_prompts(rng: np.random.Generator, count: int, pairs: int) -> tuple:
    """(texts, answers, value positions): `pairs` key value pairs (keys and values distinct), then the key asked
    for. The value position is the token index of the queried key's value in the prompt (2 tokens per pair)."""
    texts, answers, where = [], [], []
    for _ in range(count):
        keys = rng.choice(KEYS, pairs, replace=False)
        values = rng.choice(VALUES, pairs, replace=False)
        asked = int(rng.integers(pairs))
        texts.append(" ".join(f"k{k} {v}" for k, v in zip(keys, values)) + f" k{keys[asked]}")
        answers.append(str(values[asked]))
        where.append(2 * asked + 1)
    return texts, answers, np.array(where)


def encode(tok, texts: list) -> np.ndarray:
    """Token ids [N, L] (every prompt has the same length)."""
    return np.array([tok.encode(t).ids for t in texts], np.int64)


def build_model(hidden: int, layers: int, heads: int, seed: int) -> object:
    """A small LlamaForCausalLM (grouped-query attention: half as many key/value heads)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(vocabulary()), hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      num_key_value_heads=max(1, heads // 2), max_position_embeddings=64,
                                      attn_implementation="eager")
    return transformers.LlamaForCausalLM(config)


def train(model, tok, steps: int, pairs: int, batch: int, seed: int, lr: float = 3e-3, log=print) -> float:
    """AdamW on the answers' cross-entropy. A training sequence asks for every key once after the pairs
    ('k3 7 k1 2 k1 2 k3 7'; the loss at each key asked for), each batch with 2 to `pairs` pairs: more answers per
    sequence and short prompts teach the lookup sooner. Returns the mean accuracy of the last 50 steps."""
    import torch

    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    recent = []
    for step in range(steps):
        ids, asked_at, answers = training_batch(rng, tok, batch, int(rng.integers(2, pairs + 1)))
        logits = model(input_ids=torch.from_numpy(ids)).logits[:, asked_at]
        labels = torch.from_numpy(answers)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        recent = (recent + [float((logits.argmax(-1) == labels).float().mean())])[-50:]
        if step % 200 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.3f}, accuracy (last 50 steps) {np.mean(recent):.2f}")
    model.eval()
    return float(np.mean(recent)) if recent else 0.0


def training_batch(rng: np.random.Generator, tok, batch: int, pairs: int) -> tuple:
    """(ids [N, L], the positions of the keys asked for [pairs], the answers after them [N, pairs])."""
    rows, answers = [], []
    for _ in range(batch):
        keys = rng.choice(KEYS, pairs, replace=False)
        values = rng.choice(VALUES, pairs, replace=False)
        order = rng.permutation(pairs)
        text = " ".join(f"k{k} {v}" for k, v in zip(keys, values)) + " " + \
            " ".join(f"k{keys[i]} {values[i]}" for i in order)
        rows.append(tok.encode(text).ids)
        answers.append([tok.token_to_id(str(values[i])) for i in order])
    asked_at = 2 * pairs + 2 * np.arange(pairs)
    return np.array(rows, np.int64), asked_at, np.array(answers, np.int64)


def export(model, path: str, length: int) -> None:
    """torch.onnx.export (dynamo) with a dynamic batch and sequence length; inputs input_ids, attention_mask."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "llm"))
    from llm_models import Logits  # the logits [N, L, V] of a causal LM, as the tests export it

    ids = torch.ones(2, length, dtype=torch.int64)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=64)
    torch.onnx.export(Logits(model).eval(), (ids, torch.ones_like(ids)), path, dynamo=True, external_data=False,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                      verbose=False)


def input_x_gradient(model, ids: np.ndarray) -> tuple:
    """(predicted token [N], relevance [N, L]): embeddings times the gradient of the predicted logit at the last
    position, summed over the hidden axis (torch autograd, float64)."""
    import torch

    model = model.double()
    embeddings = model.get_input_embeddings()(torch.from_numpy(ids)).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings).logits[:, -1]
    predicted = logits.argmax(-1)
    logits.gather(1, predicted[:, None]).sum().backward()
    model.float()
    return predicted.numpy(), (embeddings * embeddings.grad).sum(-1).detach().numpy()


def converted_relevance(path: str, ids: np.ndarray, threads: int) -> tuple:
    """(predicted token [N], logits at the last position [N, V], relevance [N, L]) from the converted graph in
    onnxruntime: a first call for the logits, then one explaining (last position, predicted token)."""
    from lrpgraph.runtime.llm import CausalLM

    lm = CausalLM(path, threads=threads)
    mask = np.ones_like(ids)
    last = lm.logits(ids, mask)[:, -1]
    predicted = last.argmax(-1)
    targets = np.stack([np.full(len(ids), ids.shape[1] - 1), predicted], axis=1)[:, None]
    _, relevance = lm.explain(ids, mask, targets)
    return predicted, last, relevance[:, 0]


def hit_rate(relevance: np.ndarray, where: np.ndarray, keep: np.ndarray) -> float:
    """Among the rows in keep: the fraction whose most relevant position is where (the value's position)."""
    if not keep.any():
        return 0.0
    return float((relevance[keep].argmax(-1) == where[keep]).mean())


def random_ranking(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Relevance drawn at random: its argmax is a uniformly random position."""
    return rng.random(shape)


def parse(argv: list | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pairs", type=int, default=5, help="key=value pairs per prompt")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--held-out", type=int, default=500, help="held-out prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.9, help="the check: attn-lrp's hit rate at least this")
    p.add_argument("--work", default="out/llm_retrieval", help="folder for the ONNX files and tokenizer.json")
    p.add_argument("--page", default=None, help="also write lrpgraph explain's page for 3 held-out prompts here")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    return p.parse_args(argv)


def run(args: argparse.Namespace, log=print) -> dict:
    """Train, export, convert, score; the figures as a dict (the keys of the printed table)."""
    import torch

    import lrpgraph

    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    tok = write_tokenizer(os.path.join(args.work, "tokenizer.json"))
    model = build_model(args.hidden, args.layers, args.heads, args.seed)
    start = time.perf_counter()
    train_acc = train(model, tok, args.steps, args.pairs, args.batch, args.seed, log=log)
    seconds = time.perf_counter() - start
    texts, answers, where = make_prompts(np.random.default_rng(args.seed + 1000), args.held_out, args.pairs)
    ids = encode(tok, texts)
    onnx_path, lrp_path = (os.path.join(args.work, n) for n in ("retrieval.onnx", "retrieval.lrp.onnx"))
    export(model, onnx_path, ids.shape[1])
    lrpgraph.save(lrpgraph.convert(onnx_path, composite="attn-lrp", target="index"), lrp_path, force=True)
    predicted, last, lrp = converted_relevance(lrp_path, ids, args.threads)
    with torch.no_grad():
        torch_last = model(input_ids=torch.from_numpy(ids)).logits[:, -1].numpy()
    ixg_predicted, ixg = input_x_gradient(model, ids)
    answer_ids = np.array([tok.token_to_id(a) for a in answers])
    correct = predicted == answer_ids
    rng = np.random.default_rng(args.seed + 2000)
    result = {"train_seconds": seconds, "train_accuracy": train_acc, "held_out": len(ids),
              "correct": int(correct.sum()), "prompt_tokens": int(ids.shape[1]),
              "logits_max_abs_diff": float(np.abs(last - torch_last).max()),
              "same_prediction": bool((ixg_predicted == predicted).all()),
              "attn-lrp": hit_rate(lrp, where, correct), "input x gradient": hit_rate(ixg, where, correct),
              "random": hit_rate(random_ranking(rng, lrp.shape), where, correct)}
    if args.page:
        from lrpgraph.runtime.llm import CausalLM
        from lrpgraph.runtime.prompts import explain_prompts

        explain_prompts(CausalLM(lrp_path, threads=args.threads), tok, texts[:3], 1, args.page, progress=False)
    return result


def report(result: dict, threshold: float) -> bool:
    """Print the table; True when attn-lrp reaches the threshold."""
    print(f"held-out prompts: {result['held_out']} ({result['prompt_tokens']} tokens each), answered correctly: "
          f"{result['correct']}; training {result['train_seconds']:.0f} s, last accuracy {result['train_accuracy']:.2f}")
    print(f"converted graph vs torch: logits max |diff| {result['logits_max_abs_diff']:.2e}")
    print("most relevant prompt token = the queried key's value, among the correctly answered prompts:")
    for name in ("attn-lrp", "input x gradient", "random"):
        print(f"  {name:<18} {100 * result[name]:5.1f} %")
    ok = result["attn-lrp"] >= threshold and result["correct"] > 0
    print(f"check attn-lrp >= {100 * threshold:.0f} %: {'pass' if ok else 'FAIL'}")
    return ok


def main(argv: list | None = None) -> int:
    args = parse(argv)
    return 0 if report(run(args), args.threshold) else 1


if __name__ == "__main__":
    sys.exit(main())
