"""A stand-in causal LM and an offline tokenizer for the prompt tests: a bias-free network that mixes token
embeddings causally (a lower-triangular average over positions, written as a MatMul by a constant, so the
sequence length is static), then a ReLU layer and a head to logits [N, L, V]. Under attn-lrp its linear layers
take LRP-0 and the ReLU passes relevance, so with no biases the relevance of a token is input x gradient on its
embedding, summed over the embedding: torch autograd is the independent reference."""

import torch

SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "<b>bold</b> & <i>x</i>",
             "k1 = 2 k3 = 7 k1 ?", "one two three four five six seven eight nine ten"]


def word_tokenizer(path, sentences=SENTENCES):
    """A WordLevel tokenizer (split on whitespace and punctuation) trained on sentences, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(path))
    return tok


class CausalToy(torch.nn.Module):
    """ids [N, L] -> logits [N, L, V]; position p sees positions <= p only."""

    def __init__(self, vocab, length, dim=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim, bias=False)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        tril = torch.tril(torch.ones(length, length))
        self.register_buffer("causal", (tril / tril.sum(1, keepdim=True)).T.contiguous())

    def from_embeddings(self, e):
        h = (e.transpose(1, 2) @ self.causal.to(e.dtype)).transpose(1, 2)
        return self.head(torch.relu(self.mix(h)))

    def forward(self, input_ids):
        return self.from_embeddings(self.emb(input_ids))


def export(module, length, path):
    """torch.onnx.export with a dynamic batch and the static length."""
    ids = torch.zeros(2, length, dtype=torch.int64)
    torch.onnx.export(module, (ids,), str(path), input_names=["input_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "n"}, "logits": {0: "n"}}, dynamo=False, opset_version=17)


def input_x_gradient(module, ids, targets):
    """float64 reference: [K, L] relevance of each token for logit (position, token) of each target."""
    m = module.double()
    e = m.emb(torch.as_tensor(ids)[None]).detach().requires_grad_(True)
    logits = m.from_embeddings(e)[0]
    rows = []
    for position, token in targets:
        (grad,) = torch.autograd.grad(logits[position, token], e, retain_graph=True)
        rows.append((grad * e).sum(-1)[0].detach())
    m.float()
    return torch.stack(rows).numpy()
