"""The coloured-token picture of docs/transformers.md (docs/tokens.png), from scratch and offline: a tiny
BERT (transformers' BertForSequenceClassification, 2 layers, hidden 32) trained on review-like sentences
made from word lists (positive if it holds more words of the positive list than of the negative one), a
`tokenizers` WordLevel tokenizer saved as tokenizer.json, the model exported to ONNX, converted with
`lrpgraph convert --composite attn-lrp` and explained with `lrpgraph explain --vocab tokenizer.json`; the
page is rendered by Debian's chromium in headless mode. About a minute on two CPU cores.

    python examples/token_demo.py [--work out/tokens] [--png docs/tokens.png]
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import torch

POSITIVE = "great wonderful brilliant superb enjoyable moving delightful excellent".split()
NEGATIVE = "awful boring terrible dull clumsy tedious poor dreadful".split()
FILLER = ("the a this film movie plot story acting cast script music was is were and but with "
          "quite very really rather its of in at times ending scenes").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
# the sentences explained in the picture (not in the training set: they are written here)
SHOWN = ["the acting was superb and the music quite moving",
         "a dull plot with clumsy scenes but the cast is great",
         "this movie was tedious and the ending really awful",
         "the story is brilliant though at times rather boring"]


def sentence(rng, label):
    """Filler words with 1-2 words of the label's list and at most one fewer of the other list."""
    own, other = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
    k = rng.randint(1, 2)
    words = [rng.choice(own) for _ in range(k)] + [rng.choice(other) for _ in range(rng.randint(0, k - 1))]
    words += [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
    rng.shuffle(words)
    return " ".join(words)


def tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER + " ".join(SHOWN).split()))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(str(path))
    return tok


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def train(tok, n=2000, epochs=2, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    rng = random.Random(seed)
    torch.manual_seed(seed)
    labels = [rng.randint(0, 1) for _ in range(n)]
    batch = tok.encode_batch([sentence(rng, y) for y in labels])
    ids = torch.tensor([e.ids for e in batch])
    mask = torch.tensor([e.attention_mask for e in batch])
    y = torch.tensor(labels)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2, attn_implementation="eager")
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    split = n * 9 // 10
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(split)
        for k in range(0, split, 32):
            i = order[k:k + 32]
            loss = model(input_ids=ids[i], attention_mask=mask[i], labels=y[i]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(input_ids=ids[split:], attention_mask=mask[split:]).logits.argmax(1) == y[split:])
        print(f"epoch {epoch + 1}: held-out accuracy {accuracy.float().mean():.3f}", file=sys.stderr)
    return model.eval()


def export(model, path):
    ids = torch.ones(2, 8, dtype=torch.long)
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2, max=32)
    program = torch.onnx.export(Logits(model), (ids, torch.ones_like(ids)), None, external_data=False, verbose=False,
                                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
    path.write_bytes(program.model_proto.SerializeToString())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="out/tokens", help="folder for the model, tokenizer and page")
    parser.add_argument("--png", default="docs/tokens.png")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(work / "tokenizer.json")
    export(train(tok), work / "bert.onnx")
    with open(work / "sentences.jsonl", "w") as f:
        for text in SHOWN:
            f.write(json.dumps({"input_ids": tok.encode(text).ids}) + "\n")
    cli = [sys.executable, "-m", "lrpgraph.cli"]
    subprocess.run(cli + ["convert", str(work / "bert.onnx"), "--composite", "attn-lrp", "--force"], check=True)
    subprocess.run(cli + ["explain", str(work / "bert.lrp.onnx"), str(work / "sentences.jsonl"), "--vocab",
                          str(work / "tokenizer.json"), "--out", str(work / "page")], check=True)
    browser = shutil.which("chromium") or sys.exit("chromium missing: apt-get install chromium")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=640,330",
                    f"--screenshot={Path(args.png).resolve()}", (work / "page" / "index.html").resolve().as_uri()],
                   check=True, stderr=subprocess.DEVNULL)
    print(f"{args.png} written (page: {work / 'page' / 'index.html'})")


if __name__ == "__main__":
    main()
