"""ISNet variants (Bassi et al.: original, Dual, Selective and Stochastic ISNet): the graph each variant needs, and its heatmaps per training step.

variant     K   explained per image                                              graph (converted here)
plain       0   nothing: cross-entropy only (the baseline)                       flex, target seed (validation)
original    C   each class's logit: the batch repeated C times, one-hot seeds    flex, target seed
dual        2   all logits at once, with zplus rules and with epsilon rules      zplus + epsilon, target all
selective   1   eta_c = log(p_c + e) - log(1 - p_c + e), e = 0.01, of one class  flex, target seed
                (the predicted class or the lowest logit)
stochastic  1   one logit: the predicted class with probability 5/11, else a     flex, target seed
                uniformly random other class

LRP-Flex takes a gradient seed (d explained / d y); LRP composites take a relevance seed, y * that. A seed
that depends on the logits (selective, stochastic, validation's predicted class) is computed inside the
same graph run (LrpModule.run's `derived` inputs: computed from the logits), so one training step
is one forward, one relevance pass and one backward. The seed stays differentiable (the reference code's
double backpropagation through eta). Already converted models are accepted when they offer what the
variant needs (selective: target seed; stochastic and original: seed or index; dual: two LRP outputs,
zplus (or epsilon-plus) and epsilon, target all or seed; plain: any); a model converted with cp-lrp or
attn-lrp (gradient-form LRP, like flex) trains on that heatmap (benchmarks/bias_vit.py).
"""

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx
import torch

from lrpgraph import metadata
from lrpgraph.composites import COMPOSITES, GRADIENT_COMPOSITES  # flex, attn-lrp, cp-lrp: LRP in the gradient form
from lrpgraph.errors import LrpgraphError, NotConvertedError
from lrpgraph.graph import needed_nodes
from lrpgraph.rules import DEFAULT_FLEX_EPSILON
from lrpgraph.targets import SEED_INPUT as SEED
from lrpgraph.targets import TARGET_INPUT as TARGET

if TYPE_CHECKING:
    from lrpgraph.train.importer import LrpModule

VARIANTS = ("plain", "original", "dual", "selective", "stochastic")
SELECTIVE_CLASSES = ("predicted", "lowest")
PREDICTED_PROBABILITY = 5 / 11  # stochastic ISNet
SELECTIVE_E = 0.01
# z+ on the dense layer too: with epsilon there, the heatmap of the sum of all logits gives a feature
# f_a the relevance f_a * sum_j w_ja (the column sum of the dense weights), which softmax training can
# null, hiding a shortcut that raises one class and lowers the others (docs/bias.md)
DUAL_EXPLAIN = {"zplus": "zplus", "epsilon": "epsilon"}
ZPLUS_COMPOSITES = tuple(c.name for c in COMPOSITES.values() if c.table.get("conv") == "zplus")  # z+ on the Convs


def conversion(variant: str, flex_epsilon: float = DEFAULT_FLEX_EPSILON) -> dict:
    """Keyword arguments of lrpgraph.convert that give a plain model what the variant needs."""
    if variant == "dual":
        return dict(explain=dict(DUAL_EXPLAIN), target="all")
    return dict(composite="flex", target="seed", flex_epsilon=flex_epsilon)


def is_converted(model: onnx.ModelProto) -> bool:
    return metadata.Record.from_model(model) is not None


def strip_relevance(explained: onnx.ModelProto) -> onnx.ModelProto:
    """The plain classifier inside a converted model: its original outputs, only the nodes they need."""
    record = metadata.Record.from_model(explained)
    plain = onnx.ModelProto()
    plain.CopyFrom(explained)
    g = plain.graph
    keep_outputs = [o for o in g.output if o.name not in set(record.relevance_outputs)]
    nodes = needed_nodes(g.node, [o.name for o in keep_outputs])
    needed = {o.name for o in keep_outputs} | {t for node in nodes for t in node.input if t}
    inputs = [i for i in g.input if i.name in needed]
    inits = [i for i in g.initializer if i.name in needed]
    for field, items in ((g.node, nodes), (g.output, keep_outputs), (g.input, inputs), (g.initializer, inits)):
        kept = [type(x)() for x in items]
        for new, old in zip(kept, items):
            new.CopyFrom(old)
        del field[:]
        field.extend(kept)
    del g.value_info[:]
    metadata.strip(plain)
    return plain


def prepare(model_or_path: str | os.PathLike | onnx.ModelProto, variant: str,
            flex_epsilon: float = DEFAULT_FLEX_EPSILON, labels: list | None = None) -> tuple:
    """(plain ModelProto, explained ModelProto, converted_here) for a plain or an already converted model.

    A plain model is converted for the variant; a converted one is checked (resolve) and its plain part
    is cut out for the write-back. Raises LrpgraphError with one line for a model that cannot serve."""
    import lrpgraph

    if variant not in VARIANTS:
        raise LrpgraphError(f"unknown variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    source = lrpgraph.graph.load(model_or_path)
    is_path = isinstance(model_or_path, (str, os.PathLike))
    where = os.fspath(model_or_path) if is_path else "the model"
    if is_converted(source):
        resolve(variant, metadata.Record.from_model(source, where), where)
        return strip_relevance(source), source, False
    original = onnx.load(os.fspath(model_or_path)) if is_path else model_or_path
    explained = lrpgraph.convert(original, labels=labels, **conversion(variant, flex_epsilon))
    return original, explained, True


def num_classes(explained: onnx.ModelProto) -> int:
    """The number of logits of a converted model (static, the converter requires it)."""
    logits = metadata.Record.from_model(explained).logits
    inferred = onnx.shape_inference.infer_shapes(explained)
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        if info.name == logits:
            return int(info.type.tensor_type.shape.dim[1].dim_value)
    raise LrpgraphError(f"the logits '{logits}' have no inferred shape; give a model with static classes")


@dataclass
class Spec:
    """What a converted graph offers a variant: the relevance outputs used, the seed kind of each, the target."""

    variant: str
    outputs: list
    gradient: bool  # gradient seed (flex) or relevance seed (LRP)
    target: str
    logits: str  # the pre-softmax logits tensor
    image: str


def resolve(variant: str, record: "metadata.Record | dict | None", where: str = "the model") -> Spec:
    """A Spec for the variant from a converted model's metadata.Record (or its lrpgraph.config object);
    LrpgraphError if it lacks something."""
    if variant not in VARIANTS:
        raise LrpgraphError(f"unknown variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    if not record:
        raise NotConvertedError(f"{where} was not converted by lrpgraph; give the plain model to the trainer")
    if isinstance(record, dict):
        record = metadata.Record.from_config(record)
    target, explanations = record.target, record.explanations
    have = ", ".join(f"{o}={s}" for o, s in explanations.items())
    common = dict(target=target, logits=record.logits, image=record.image_input)
    if variant == "dual":
        zplus = [o for o, s in explanations.items() if s in ZPLUS_COMPOSITES]
        eps = [o for o, s in explanations.items() if s == "epsilon"]
        if not zplus or not eps or target not in ("all", "seed"):
            raise LrpgraphError(f"variant 'dual' needs a model converted with a zplus or epsilon-plus output, an "
                                f"epsilon output and target all (or seed); {where} has {have} with target '{target}'; "
                                "give the plain model and the trainer converts it")
        zplus.sort(key=lambda o: explanations[o] != "zplus")  # prefer z+ on every layer
        if explanations[zplus[0]] != "zplus":
            warnings.warn(f"{where}: dual's first map is {explanations[zplus[0]]}, which keeps epsilon at the dense "
                          "layer and cannot see a shortcut whose dense weights sum to zero over the classes "
                          "(docs/bias.md); give the plain model and the trainer converts it with zplus", stacklevel=2)
        return Spec(variant, [zplus[0], eps[0]], False, **common)
    allowed = ("seed",) if variant == "selective" else ("seed", "index") if variant != "plain" else \
        ("seed", "index", "top", "all")
    names = sorted(explanations, key=lambda o: explanations[o] != "flex")  # prefer an LRP-Flex output
    if target not in allowed:
        raise LrpgraphError(f"variant '{variant}' needs a model converted with target {' or '.join(allowed)}; "
                            f"{where} has target '{target}' ({have}); give the plain model and the trainer "
                            "converts it (composite flex, target seed)")
    if variant != "plain" and explanations[names[0]] not in GRADIENT_COMPOSITES and record.is_gradient(names[0]):
        raise LrpgraphError(f"variant '{variant}' needs LRP-Flex or an LRP composite; {where} explains {have}; "
                            "give the plain model and the trainer converts it")
    return Spec(variant, [names[0]], record.is_gradient(names[0]), **common)


def selective_gradient(logits: torch.Tensor, classes: torch.Tensor, e: float = SELECTIVE_E) -> torch.Tensor:
    """d eta_c / d y for eta_c = log(p_c + e) - log(1 - p_c + e), p = softmax(y): N x C, differentiable."""
    p = torch.softmax(logits, dim=1)
    pc = p.gather(1, classes[:, None])
    onehot = torch.nn.functional.one_hot(classes, logits.shape[1]).to(p.dtype)
    return (1.0 / (pc + e) + 1.0 / (1.0 - pc + e)) * pc * (onehot - p)


def stochastic_classes(logits: torch.Tensor, uniform: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Predicted class where uniform < 5/11, else the other class `other` (drawn in [0, C-2]) skipping it."""
    predicted = logits.argmax(1)
    other = other.to(predicted.device)
    other = other + (other >= predicted).long()
    return torch.where(uniform.to(predicted.device) < PREDICTED_PROBABILITY, predicted, other)


def draw(generator: torch.Generator, n: int, classes: int) -> tuple:
    """The stochastic variant's random numbers for n samples (drawn for the global batch on every rank)."""
    return torch.rand(n, generator=generator), torch.randint(0, max(classes - 1, 1), (n,), generator=generator)


class Heatmaps:
    """Computes logits and heatmaps N x K x C x h x w of a variant with an imported LrpModule."""

    def __init__(self, module: "LrpModule", spec: Spec, classes: int, selective_class: str = "predicted"):
        if selective_class not in SELECTIVE_CLASSES:
            raise LrpgraphError(f"--selective-class '{selective_class}': choose one of {', '.join(SELECTIVE_CLASSES)}")
        self.module, self.spec, self.classes, self.selective_class = module, spec, classes, selective_class

    def run(self, x: torch.Tensor, outputs: list, derived: str | None = None, fn: Callable | None = None) -> dict:
        """module.run on image x; the `derived` graph input (target or seed) = fn(logits) inside the same run."""
        m = self.module
        return m.run({m.image_input: x}, outputs, derived={derived: (self.spec.logits, fn)} if derived else None)

    def _seed(self, gradient_of):
        """Seed function for the graph's seed input: gradient seed g(y), or relevance seed y * g(y)."""
        if self.spec.gradient:
            return gradient_of
        return lambda y: y * gradient_of(y)

    def _outputs(self, out):
        maps = [out[o] for o in self.spec.outputs]
        return out[self.spec.logits], torch.stack(maps, 1)

    # -- the variants ------------------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, [self.spec.logits])[self.spec.logits]

    def __call__(self, x: torch.Tensor, draws: tuple | None = None) -> tuple:
        """(logits N x C, heatmaps N x K x C x h x w) of the training variant (draws: stochastic's numbers)."""
        s, outputs = self.spec, [self.spec.logits] + self.spec.outputs
        if s.variant == "plain":
            return self.logits(x), None
        if s.variant == "dual":
            if s.target == "all":
                return self._outputs(self.run(x, outputs))
            return self._outputs(self.run(x, outputs, SEED, lambda y: y))
        if s.variant == "original":
            return self._original(x, outputs)
        if s.variant == "selective":
            pick = torch.argmax if self.selective_class == "predicted" else torch.argmin
            fn = self._seed(lambda y: selective_gradient(y, pick(y.detach(), 1)))
            return self._outputs(self.run(x, outputs, SEED, fn))
        uniform, other = draws if draws is not None else draw(None, len(x), self.classes)
        if s.target == "index":
            return self._outputs(self.run(x, outputs, TARGET,
                                          lambda y: stochastic_classes(y.detach(), uniform, other)))
        fn = self._seed(lambda y: _onehot(stochastic_classes(y.detach(), uniform, other), y))
        return self._outputs(self.run(x, outputs, SEED, fn))

    def _original(self, x, outputs):
        n, c = len(x), self.classes
        repeated = x.repeat(c, *([1] * (x.dim() - 1)))  # copy k of the batch explains class k
        classes = torch.arange(c, device=x.device).repeat_interleave(n)
        if self.spec.target == "index":
            out = self.run(repeated, outputs, TARGET, lambda y: classes)
        else:
            out = self.run(repeated, outputs, SEED, self._seed(lambda y: _onehot(classes, y)))
        maps = out[self.spec.outputs[0]]
        maps = maps.reshape(c, n, *maps.shape[1:]).transpose(0, 1)
        return out[self.spec.logits][:n], maps

    def predicted(self, x: torch.Tensor) -> tuple:
        """(logits, heatmaps N x K x C x h x w) explaining the predicted class (dual: all logits), for validation."""
        s, outputs = self.spec, [self.spec.logits] + self.spec.outputs
        if s.target in ("top", "all"):
            return self._outputs(self.run(x, outputs))
        if s.target == "index":
            return self._outputs(self.run(x, outputs, TARGET, lambda y: y.argmax(1)))
        fn = (lambda y: y) if s.variant == "dual" else self._seed(lambda y: _onehot(y.argmax(1), y))
        return self._outputs(self.run(x, outputs, SEED, fn))


def _onehot(classes, like):
    return torch.nn.functional.one_hot(classes, like.shape[1]).to(like.dtype)
