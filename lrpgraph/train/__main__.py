"""`python -m lrpgraph.train ...` is `lrpgraph train ...`.

Data parallel: `torchrun --nproc-per-node 2 -m lrpgraph.train MODEL ...`."""

from lrpgraph.train.cli import train

if __name__ == "__main__":
    train(prog_name="lrpgraph train")
