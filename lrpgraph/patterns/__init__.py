"""Pattern units: small structures of a graph recognised by their op types, each a pattern (the op type of its
anchor node and the structure it expects around it), a check that returns a match or the reason it failed, and
a rewrite. Op types are tested only here and in the op records (the catalog).

- match.py: the vocabulary (the graph as a pattern reads it, Pattern, Match, NearMiss).
- fusions.py: the fusions canonicalize runs (norms.py, gelu.py, einsum.py): written-out blocks as one unit
  each, and the near-misses with the reason each did not fuse (`lrpgraph inspect` prints them).
- ends.py: the ends of the explained path: the logits before an output head, token ids into an embedding.
- constants.py: Constant nodes and Identity aliases of constants, which loading turns into initializers.
- stabilizer.py: the stabilised divisions of the emitted relevance graph that simplify.py rewrites.

This package file imports nothing, so that graph.py can import constants.py."""
