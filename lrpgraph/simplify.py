"""Cheaper relevance arithmetic after the walk, the same heatmap up to float32 rounding.

A layer whose output z feeds a ReLU (a = relu(z)) divides the relevance arriving at a by stab(z), and that
relevance is a product a * g (or a sum of such products, one per consumer of a) written by the rules of
the layers that read a (x * backward(s), the norm rule's x_i * s). Then
    (a * g) / stab(z) = g * (a / (a + eps))      (eps > 0)
exactly where z <= 0 (a = 0: zero either way) and up to rounding where z > 0 (a = z, stab(z) = z + eps).
The right side needs no sign test (GreaterOrEqual, Where) on z and no division on the relevance path:
a / (a + eps) depends on the forward pass only, and z is then read by nothing but its ReLU, which
onnxruntime fuses into the Conv (no layout reorder of z)."""

from onnx import helper, numpy_helper


def relu_denominators(b: "Builder", forward_nodes: list) -> int:
    """Rewrite, in the builder b's nodes, every Div(a * g, stab(z)) with a = Relu(z) as Mul(g, a / (a + eps)).
    forward_nodes: the model's own nodes (where the ReLUs are). Returns the number of divisions rewritten."""
    every = list(forward_nodes) + list(b.nodes)
    producer = {o: n for n in every for o in n.output}
    uses = {}
    for n in every:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    values = {i.name: numpy_helper.to_array(i) for i in b.initializers}
    relu_of = {n.input[0]: n.output[0] for n in every if n.op_type == "Relu"}
    ratios, new, dropped, count = {}, {}, [], 0
    for div in b.nodes:
        if div.op_type != "Div":
            continue
        found = _stabilized(div.input[1], producer, values)
        if found is None or found[0] not in relu_of:
            continue
        z, eps = found
        a = relu_of[z]
        factors = _factors(div.input[0], a, producer, uses)
        if factors is None:
            continue
        name = div.name
        nodes = []
        if a not in ratios:  # a / (a + eps), once per ReLU output
            nodes += [helper.make_node("Add", [a, eps], [f"{name}/relu_stab"], name=f"{name}/relu_stab"),
                      helper.make_node("Div", [a, f"{name}/relu_stab"], [f"{name}/relu_ratio"], name=f"{name}/relu_ratio")]
            ratios[a] = f"{name}/relu_ratio"
        g = factors[0]
        if len(factors) > 1:
            g = f"{name}/signal"
            nodes.append(helper.make_node("Sum", factors, [g], name=g))
        nodes.append(helper.make_node("Mul", [g, ratios[a]], list(div.output), name=f"{name}/relu_scaled"))
        new[id(div)] = nodes
        dropped += [producer[div.input[0]], producer[div.input[1]]]
        count += 1
    if not count:
        return 0
    nodes = []
    for n in b.nodes:
        nodes.extend(new.get(id(n), [n]))
    b.nodes[:] = _without_dead(nodes, dropped, forward_nodes)
    return count


def _stabilized(d, producer, values):
    """(z, name of the eps constant) when d = z + Where(z >= 0, eps, -eps) with eps > 0 (Builder.stab)."""
    add = producer.get(d)
    if add is None or add.op_type != "Add":
        return None
    z, shift = add.input
    where, test = producer.get(shift), None
    if where is not None and where.op_type == "Where":
        test = producer.get(where.input[0])
    if test is None or test.op_type != "GreaterOrEqual" or list(test.input[:1]) != [z]:
        return None
    zero, plus, minus = (values.get(t) for t in (test.input[1], where.input[1], where.input[2]))
    if any(v is None or v.size != 1 for v in (zero, plus, minus)):
        return None
    eps = float(plus.reshape(-1)[0])
    if float(zero.reshape(-1)[0]) != 0.0 or not eps > 0 or float(minus.reshape(-1)[0]) != -eps:
        return None
    return z, where.input[1]


def _factors(r, a, producer, uses):
    """[g_1, ...] when r = a * g (or a sum of such products) and nothing else reads r or the products."""
    node = producer.get(r)
    if node is None or uses.get(r, 0) != 1:
        return None
    parts = list(node.input) if node.op_type == "Sum" else [r]  # Builder.sum's fan-in
    factors = []
    for t in parts:
        mul = producer.get(t)
        if mul is None or mul.op_type != "Mul" or a not in mul.input or (t != r and uses.get(t, 0) != 1):
            return None
        factors.append(mul.input[1] if mul.input[0] == a else mul.input[0])
    return factors


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

