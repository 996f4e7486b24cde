"""The backward walk: relevance (or a gradient) carried from the logits back to the image, unit by unit."""

from collections import defaultdict

from lrpgraph.catalog import RECORDS, Canonical, Context, Unit
from lrpgraph.converters import converter_of
from lrpgraph.rules import Rule, check_rule


class Walker:
    """Emits, into the builder b, the nodes that carry a seed at the logits back to the image input.

    A walker is called as walker(view, plan, seed) with a canonical view (canonicalize.Canonical, or a
    method's clone of one), a plan {unit name: Rule} and the seed tensor; it returns the name of the image's
    relevance, or None when nothing reaches the image. It can be called several times (a method walks
    several clones); each call reads its view through a fresh Context (`ctx`), which the converters get.

    Override points, in the order a call reaches them:

        __call__(view, plan, seed)
            +-- start(view, seed)          the tensors that hold relevance first: {logits: [seed]}
            +-- visit(unit)                each unit, from the logits back; skips units nothing reaches
            |     +-- combine(parts)       the relevance arriving at one tensor from several units: the sum
            |     +-- run_unit(unit, rule, r_outs)   the converter attached to the op: relevance of each input
            +-- finish()                   the image's relevance: combine() of what reached it

    message: "relevance", or "gradient" where the LRP rules receive and return g = R / x (Context.message;
    the attn-lrp and cp-lrp composites)."""

    def __init__(self, b: object, message: str = "relevance") -> None:
        self.b = b  # graph.Builder
        self.message = message
        self.ctx: Context | None = None
        self.view: Canonical | None = None
        self.plan: dict = {}
        self.pending: dict = {}  # {tensor: [relevance names arriving at it]}

    def __call__(self, view: Canonical, plan: dict, seed: str) -> str | None:
        self.ctx = Context(self.b, view.shapes, view.inits, view.signal, view.nonneg, message=self.message)
        self.view, self.plan = view, plan
        self.pending = self.start(view, seed)
        for unit in reversed(view.units):
            self.visit(unit)
        return self.finish()

    def start(self, view: Canonical, seed: str) -> dict:
        """{tensor: [relevance]} before the first unit: the seed at the logits."""
        pending = defaultdict(list)
        pending[view.logits].append(seed)
        return pending

    def visit(self, unit: Unit) -> None:
        """Carry the relevance at the unit's outputs to those of its inputs that depend on the image."""
        arriving = [self.pending.pop(t, None) for t in unit.outputs]
        if not any(arriving):
            return
        self.b.scope = unit.name
        r_outs = [self.combine(r) if r else None for r in arriving]
        rule = self.plan[unit.name]
        check_rule(RECORDS[unit.op], unit, rule)
        r_ins = self.run_unit(unit, rule, r_outs)
        for tensor, r in zip(unit.inputs, r_ins):
            if r is not None and tensor in self.view.signal:
                self.pending[tensor].append(r)

    def combine(self, parts: list) -> str | None:
        """One tensor from the relevance arriving at a tensor (a fan-out): their sum (None for none)."""
        return self.b.sum(parts)

    def run_unit(self, unit: Unit, rule: Rule, r_outs: list) -> list:
        """The relevance of each of the unit's inputs (None where none flows), from the converter attached to its op."""
        return converter_of(unit)(self.ctx, unit, rule, r_outs)

    def finish(self) -> str | None:
        """The image's relevance: what reached the image input, combined."""
        self.b.scope = "input"
        return self.combine(self.pending.get(self.view.input, []))
