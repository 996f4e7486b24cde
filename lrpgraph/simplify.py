"""Cheaper relevance arithmetic after the walk, the same heatmap up to float32 rounding.

A layer with output z divides the relevance arriving at z (or at what z becomes) by stab(z) = z + eps * s(z),
s(0) = +1. Where that relevance is a product v * g (or a sum of such products, one per layer reading v),
written by the rules of the layers that read v (x * backward(s), the norm rule's x_i * s), the division
needs no sign test (GreaterOrEqual, Where), and the ratio it leaves depends on the forward pass only:

- ReLU: v = a = relu(z).  (a * g) / stab(z) = g * (a / (a + eps)): exact where z <= 0 (a = 0: zero either
  way), up to rounding where z > 0. z is then read by nothing but its ReLU, which onnxruntime fuses into
  the Conv (no layout reorder of z).
- Clip with lower bound 0 (ReLU6): v = a = clip(z, 0, hi).  (a * g) / stab(z) = g * (a / (max(z, 0) + eps)),
  zero either way where z <= 0, and max(z, 0) + eps = stab(z) where z > 0 (a = hi above hi).
- Identity: v = z itself (a Conv read by a residual sum).  (z * g) / stab(z) = g * (|z| / (|z| + eps)),
  since z / stab(z) and |z| / (|z| + eps) are the same float for every z (negation is exact).
- With K targets per sample the walk reads the forward tensors tiled K times along the batch: a tiled a is the
  ReLU (Clip) of the tiled z, and the same forms hold for the copies.
- Through a MaxPool of a = relu(z): the relevance arriving at a is the winner-take-all route of m * g
  (m the pooled values), and each window's winner p has a[p] = m. Where m > 0, z[p] = m, so
  route(m * g) / stab(z) = route(g * (m / (m + eps))); where m = 0 the window routes 0 either way. The
  division then acts on the pooled tensor instead of the 4x larger one, without a sign test.

eps > 0 in every case (with eps = 0 the ratios would be 0/0)."""

from collections.abc import Mapping

from onnx import helper

from lrpgraph.catalog import Initializers
from lrpgraph.graph import Builder
from lrpgraph.patterns.stabilizer import clips_from_zero, products, relu_outputs, stabilized_division, tiled_copies


def denominators(b: Builder, forward_nodes: list, inits: Mapping) -> int:
    """Rewrite, in the builder b's nodes, every Div(v * g, stab(z)) of the forms above.
    forward_nodes: the model's own nodes (where the ReLUs are); inits: its initializers by name (a Clip's
    bounds; canonicalize.Initializers). Returns the number of divisions rewritten."""
    every = list(forward_nodes) + list(b.nodes)
    producer = {o: n for n in every for o in n.output}
    uses = {}
    for n in every:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    values = Initializers(b.initializers)
    relu_of = _through_tiles(b, relu_outputs(every))
    clip_of = _through_tiles(b, clips_from_zero(forward_nodes, inits))
    ratios, new, before, dropped, rewired, count = {}, {}, {}, [], {}, 0
    for div in b.nodes:
        found = stabilized_division(div, producer, values)
        if found is None:
            continue
        z, eps = found
        name, numerator = div.name, div.input[0]
        route = b.routes.get(numerator)
        if route is not None and route[2] == relu_of.get(z):  # through a MaxPool of relu(z)
            r, m, _ = route
            factors = products(r, m, producer, uses)
            if factors is None:
                continue
            nodes = _ratio(name, m, eps, "relu", {})
            nodes += _scaled(name, factors, f"{name}/ratio", [f"{name}/routed"])
            before[r] = nodes  # ahead of the route, which reads r
            rewired[r] = f"{name}/routed"
            new[id(div)] = [helper.make_node("Identity", [numerator], list(div.output), name=f"{name}/identity")]
            dropped.append(producer[div.input[1]])
        else:
            v, kind = (relu_of[z], "relu") if z in relu_of else (clip_of[z], "clip") if z in clip_of else (z, "abs")
            factors = products(numerator, v, producer, uses)
            if factors is None:
                continue
            nodes = _ratio(name, v, eps, kind, ratios, z, None if b.webgpu else b.const(0.0))
            new[id(div)] = nodes + _scaled(name, factors, ratios[(v, eps)], list(div.output))
            dropped += [producer[numerator], producer[div.input[1]]]
        count += 1
    if not count:
        return 0
    nodes = []
    for n in b.nodes:
        read = [t for t in n.input if t in rewired]
        for t in read:
            nodes.extend(before.pop(t, []))
        if read:
            n.input[:] = [rewired.get(t, t) for t in n.input]
        nodes.extend(new.get(id(n), [n]))
    dropped += [producer[r] for r in rewired if r in producer]
    b.nodes[:] = _without_dead(nodes, dropped, forward_nodes)
    return count


def _through_tiles(b: Builder, pairs: dict) -> dict:
    """pairs {z: a} plus {tiled z: tiled a} where the K-target walk reads both copies tiled K times along the batch
    (targets.tile's Tile nodes, all with the same repeats): the tiled a is the ReLU or Clip of the tiled z."""
    tiled = tiled_copies(b.nodes, f"{b.prefix}/tile/")
    out = dict(pairs)
    out.update({tiled[z]: tiled[a] for z, a in pairs.items() if z in tiled and a in tiled})
    return out


def _ratio(name, v, eps, kind, ratios, z=None, zero=None):
    """Nodes for v / (v + eps) (kind 'relu', v >= 0), |v| / (|v| + eps) (kind 'abs') or v / (max(z, 0) + eps)
    (kind 'clip'), once per v and eps."""
    if (v, eps) in ratios:
        return []
    nodes, top, under = [], v, v
    if kind == "abs":
        nodes.append(helper.make_node("Abs", [v], [f"{name}/abs"], name=f"{name}/abs"))
        top = under = f"{name}/abs"
    elif kind == "clip":  # max(z, 0), not Relu: onnxruntime would run a Relu in its blocked layout and then
        # reorder its output for the Add, next to the reorder of z that the Clip itself needs (WebGPU: Relu,
        # which it runs; it has no Min kernel, docs/web.md, and Max was not measured there)
        pos = helper.make_node("Relu", [z], [f"{name}/pos"], name=f"{name}/pos") if zero is None \
            else helper.make_node("Max", [z, zero], [f"{name}/pos"], name=f"{name}/pos")
        nodes.append(pos)
        under = f"{name}/pos"
    nodes += [helper.make_node("Add", [under, eps], [f"{name}/ratio_stab"], name=f"{name}/ratio_stab"),
              helper.make_node("Div", [top, f"{name}/ratio_stab"], [f"{name}/ratio"], name=f"{name}/ratio")]
    ratios[(v, eps)] = f"{name}/ratio"
    return nodes


def _scaled(name, factors, ratio, outputs):
    """Nodes for (g_1 + ...) * ratio into outputs."""
    nodes, g = [], factors[0]
    if len(factors) > 1:
        g = f"{name}/signal"
        nodes.append(helper.make_node("Sum", factors, [g], name=g))
    return nodes + [helper.make_node("Mul", [g, ratio], outputs, name=f"{name}/scaled")]


def _without_dead(nodes, candidates, forward_nodes):
    """nodes less those of candidates (and what only they read, recursively) whose outputs nothing reads."""
    candidates = {id(n) for n in candidates}
    while True:
        read = {t for n in list(forward_nodes) + nodes for t in n.input}
        dead = [n for n in nodes if id(n) in candidates and not any(o in read for o in n.output)]
        if not dead:
            return nodes
        gone = {id(n) for n in dead}
        producer = {o: n for n in nodes for o in n.output}
        for n in dead:
            candidates |= {id(producer[t]) for t in n.input if t in producer}
        nodes = [n for n in nodes if id(n) not in gone]
