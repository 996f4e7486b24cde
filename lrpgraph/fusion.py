"""Transformer blocks written out in elementary ops, recognised as one unit each for the relevance walk:
LayerNorm as ReduceMean, Sub, Pow (or Mul), ReduceMean, Add eps, Sqrt, Div (+ Mul scale, + Add shift);
RMSNorm as Pow (or Mul), ReduceMean, Add eps, Sqrt, then Div, or Reciprocal and Mul (+ Mul scale); GELU as
x * 0.5 * (1 + Erf(x / sqrt 2)) and in its tanh form x * 0.5 * (1 + Tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
in their usual orders; an Einsum of a signal and a constant matrix that is x @ W ('...k,kc->...c') or
x @ W^T ('...k,ck->...c'), with the constant as either operand, as the MatMul (Gemm) layer it is. The forward
graph is not changed: the matched nodes are replaced, in the list the walker explains, by one
LayerNormalization, RMSNormalization, Gelu, MatMul or Gemm node reading the pattern's input and writing its
output (REFERENCE.md section 9: the rules apply to the whole unit). A written-out norm may reduce over any
axes (a channel norm: axis 1 of [N, C, H, W]); its synthetic node carries them as `axes` (ONNX's `axis`
means "from there to the last axis")."""

import math

import numpy as np
from onnx import helper

from lrpgraph.graph import attrs_of


def fuse(nodes: list, inits: dict) -> list:
    """nodes with every recognised pattern replaced by one synthetic node (in the place of its last node)."""
    producer = {o: n for n in nodes for o in n.output}
    consumers = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    replaced, extra = set(), {}
    for node in nodes:
        match = None
        if node.op_type == "Div":
            match = _layer_norm(node, producer, consumers, inits) or _rms_norm(node, producer, consumers, inits)
        elif node.op_type == "Mul":
            match = _rms_norm(node, producer, consumers, inits)
        elif node.op_type == "Erf":
            match = _gelu(node, producer, consumers, inits)
        elif node.op_type == "Tanh":
            match = _gelu_tanh(node, producer, consumers, inits)
        elif node.op_type == "Einsum":
            match = _einsum_layer(node, inits)
        if match is not None and not (set(map(id, match[0])) & replaced) and _closed(match, consumers):
            members, fused = match
            replaced.update(map(id, members))
            extra[id(members[-1])] = fused
    return [extra[id(n)] if id(n) in extra else n for n in nodes if id(n) not in replaced or id(n) in extra]


def _closed(match, consumers):
    """No tensor inside the pattern is read outside it (else relevance would be lost there)."""
    members, fused = match
    inside = {id(n) for n in members}
    return all(id(c) in inside for n in members for o in n.output if o != fused.output[0]
               for c in consumers.get(o, []))


def _const(inits, name):
    return np.asarray(inits[name]) if name in inits else None


def _only(consumers, tensor):
    users = consumers.get(tensor, [])
    return users[0] if len(users) == 1 else None


def _axes(node, inits):
    """The axes a ReduceMean of a norm reduces (None: unknown, or not kept: the norm divides by it broadcast)."""
    attrs = attrs_of(node)
    if not attrs.get("keepdims", 1):
        return None
    if "axes" in attrs:
        return list(attrs["axes"])
    return [int(a) for a in _const(inits, node.input[1])] if len(node.input) > 1 and node.input[1] in inits else None


def _other(node, tensor):
    return node.input[1] if node.input[0] == tensor else node.input[0]


def _layer_norm(div, producer, consumers, inits):
    sub, sqrt = producer.get(div.input[0]), producer.get(div.input[1])
    if sub is None or sqrt is None or sub.op_type != "Sub" or sqrt.op_type != "Sqrt":
        return None
    mean = producer.get(sub.input[1])
    x = sub.input[0]
    if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != x:
        return None
    add = producer.get(sqrt.input[0])
    if add is None or add.op_type != "Add":
        return None
    var = producer.get(add.input[0]) or producer.get(add.input[1])
    eps = _const(inits, _other(add, var.output[0])) if var is not None else None
    if var is None or var.op_type != "ReduceMean" or eps is None or eps.size != 1:
        return None
    square = producer.get(var.input[0])
    d = sub.output[0]
    if square is None or not (square.op_type == "Pow" and square.input[0] == d and _const(inits, square.input[1]) is not None
                              and float(_const(inits, square.input[1])) == 2.0
                              or square.op_type == "Mul" and list(square.input) == [d, d]):
        return None
    axes = _axes(mean, inits)
    if not axes or axes != _axes(var, inits):
        return None
    members, out, scale, shift = [mean, sub, square, var, add, sqrt, div], div.output[0], "", ""
    nxt = _only(consumers, out)
    if nxt is not None and nxt.op_type == "Mul" and _other(nxt, out) in inits:
        scale, out = _other(nxt, out), nxt.output[0]
        members.append(nxt)
        nxt = _only(consumers, out)
    if nxt is not None and nxt.op_type == "Add" and _other(nxt, out) in inits:
        shift, out = _other(nxt, out), nxt.output[0]
        members.append(nxt)
    node = helper.make_node("LayerNormalization", [x, scale, shift], [out], name=div.name or out, axis=axes[0],
                            axes=axes, epsilon=float(eps))
    return members, node


def _scalar(inits, name, value):
    c = _const(inits, name)
    return c is not None and c.size == 1 and abs(float(c) - value) < 1e-6 * max(1.0, abs(value))


def _gelu(erf, producer, consumers, inits):
    scaled = producer.get(erf.input[0])
    if scaled is None or not (scaled.op_type == "Div" and _scalar(inits, scaled.input[1], math.sqrt(2))
                              or scaled.op_type == "Mul" and _scalar(inits, _other(scaled, scaled.input[0]), 1 / math.sqrt(2))):
        return None
    x = scaled.input[0] if scaled.op_type == "Div" or scaled.input[0] not in inits else scaled.input[1]
    return _gelu_tail(x, erf, [scaled, erf], producer, consumers, inits)


def _gelu_tanh(tanh, producer, consumers, inits):
    """Tanh(c (x + 0.044715 x^3)), c = sqrt(2 / pi), with x^3 as Pow(x, 3) or x * x * x; then the tail."""
    scaled = producer.get(tanh.input[0])
    if scaled is None or scaled.op_type != "Mul":
        return None
    inner = next((producer.get(t) for t in scaled.input if _scalar(inits, _other(scaled, t), math.sqrt(2 / math.pi))),
                 None)
    if inner is None or inner.op_type != "Add":
        return None
    for x, other in (inner.input, inner.input[::-1]):
        times = producer.get(other)
        if times is None or times.op_type != "Mul":
            continue
        cubed = next((t for t in times.input if _scalar(inits, _other(times, t), 0.044715)), None)
        cube = _cube(cubed, x, producer, inits) if cubed is not None else None
        if cube is not None:
            members = cube + [times, inner, scaled, tanh]
            return _gelu_tail(x, tanh, members, producer, consumers, inits, approximate="tanh")
    return None


def _cube(tensor, x, producer, inits):
    """The nodes computing tensor = x^3 (Pow(x, 3), x * (x * x) or (x * x) * x), or None."""
    node = producer.get(tensor)
    if node is None:
        return None
    if node.op_type == "Pow":
        return [node] if node.input[0] == x and _scalar(inits, node.input[1], 3.0) else None
    if node.op_type != "Mul" or x not in node.input:
        return None
    square = producer.get(_other(node, x))
    if square is not None and square.op_type == "Mul" and list(square.input) == [x, x]:
        return [square, node]
    return None


def _gelu_tail(x, f, members, producer, consumers, inits, **attrs):
    """The GELU after its inner function f (Erf or Tanh): (1 + f) times x and times 0.5, in either order, or
    times (x * 0.5)."""
    add = _only(consumers, f.output[0])
    if add is None or add.op_type != "Add" or not _scalar(inits, _other(add, f.output[0]), 1.0):
        return None
    members, out, half, with_x = members + [add], add.output[0], False, False
    for _ in range(2):
        nxt = _only(consumers, out)
        if nxt is None or nxt.op_type != "Mul":
            return None
        other = _other(nxt, out)
        half_x = producer.get(other)
        if other == x and not with_x:
            with_x = True
        elif _scalar(inits, other, 0.5) and not half:
            half = True
        elif half_x is not None and half_x.op_type == "Mul" and x in half_x.input and \
                _scalar(inits, _other(half_x, x), 0.5) and not (half or with_x):
            half = with_x = True
            members.append(half_x)
        else:
            return None
        members.append(nxt)
        out = nxt.output[0]
        if half and with_x:
            break
    if not (half and with_x):
        return None
    return members, helper.make_node("Gelu", [x], [out], name=f.name or out, **attrs)


def _rms_norm(last, producer, consumers, inits):
    """x / Sqrt(ReduceMean(x^2) + eps) (Div, or Mul by a Reciprocal or by 1 / Sqrt), times a constant scale."""
    if last.op_type == "Div":
        x, sqrt, recip = last.input[0], producer.get(last.input[1]), []
    else:
        for x, other in (last.input, last.input[::-1]):
            inv = producer.get(other)
            if inv is not None and (inv.op_type == "Reciprocal" or inv.op_type == "Div" and _scalar(inits, inv.input[0], 1.0)):
                sqrt, recip = producer.get(inv.input[-1]), [inv]
                break
        else:
            return None
    if sqrt is None or sqrt.op_type != "Sqrt" or (add := producer.get(sqrt.input[0])) is None or add.op_type != "Add":
        return None
    mean = producer.get(add.input[0]) or producer.get(add.input[1])
    eps = _const(inits, _other(add, mean.output[0])) if mean is not None else None
    if mean is None or mean.op_type != "ReduceMean" or eps is None or eps.size != 1 or not _axes(mean, inits):
        return None
    square = producer.get(mean.input[0])
    if square is None or not (square.op_type == "Pow" and square.input[0] == x and _scalar(inits, square.input[1], 2.0)
                              or square.op_type == "Mul" and list(square.input) == [x, x]):
        return None
    members, out, scale = [square, mean, add, sqrt] + recip + [last], last.output[0], ""
    nxt = _only(consumers, out)
    if nxt is not None and nxt.op_type == "Mul" and _other(nxt, out) in inits:
        scale, out = _other(nxt, out), nxt.output[0]
        members.append(nxt)
    axes = _axes(mean, inits)
    return members, helper.make_node("RMSNormalization", [x, scale], [out], name=last.name or out, axis=axes[0],
                                     axes=axes, epsilon=float(eps))


def _einsum_layer(node, inits):
    """An Einsum of a signal and a constant matrix that is x @ W ('...k,kc->...c', 'blk,kc->blc', any letters)
    as MatMul, or x @ W^T ('...k,ck->...c') as Gemm with transB, with the constant as either operand ('ck,bk->bc'
    is x @ W^T too): the fused node reads [x, W]. Other constant Einsums stay (refused)."""
    equation = attrs_of(node, decoded=True).get("equation", "").replace(" ", "")
    if len(node.input) != 2 or (node.input[0] in inits) == (node.input[1] in inits) or "->" not in equation:
        return None
    terms, out = equation.split("->")[0].split(","), equation.split("->")[1]
    first = node.input[0] in inits  # the constant is the first operand
    (a, w), (x, weight) = (terms[::-1], node.input[::-1]) if first else (terms, node.input)
    if len(w) != 2 or len(set(a.replace(".", ""))) != len(a.replace(".", "")) or len(a) < 1:
        return None
    k = a[-1]
    lead = a[:-1]
    if w == k + w[1] and out == lead + w[1] and w[1] not in a:
        return [node], helper.make_node("MatMul", [x, weight], list(node.output), name=node.name)
    if w == w[0] + k and out == lead + w[0] and w[0] not in a:  # x @ W^T (nn.Linear's layout), x of any rank:
        # a Gemm with transB for the walker, whose dense layer transposes W once and multiplies as MatMul does
        return [node], helper.make_node("Gemm", [x, weight], list(node.output), name=node.name, transB=1)
    return None
