"""The conversion pipeline: load -> canonicalize -> plan -> backward walk -> outputs -> check."""

import os
import tempfile
from collections import defaultdict

import onnx
from onnx import TensorProto, helper

from lrpgraph import __version__, composites, graph, metadata, targets
from lrpgraph.canonicalize import canonicalize
from lrpgraph.converters import CONVERTERS, Context
from lrpgraph.errors import LrpgraphError

RELEVANCE = "relevance"


def convert(model_or_path, composite="epsilon-plus", target="top", rules=(), epsilon=None, stabilizer=1e-6,
            gamma=0.25, alpha=2.0, beta=1.0, low=0.0, high=1.0, flex_epsilon=0.01, preprocess=None, labels=None):
    """Rewrite an ONNX classifier so that it also returns `relevance`, an LRP heatmap shaped like its input.

    composite: a name from composites.COMPOSITES; target: top | index | seed | all; rules: overrides
    'OpType=rule:params' or 'node name=rule:params'. Returns the new onnx.ModelProto (checked)."""
    model = graph.load(model_or_path)
    canon = canonicalize(model)
    options = dict(epsilon=epsilon, stabilizer=stabilizer, gamma=gamma, alpha=alpha, beta=beta, low=low, high=high,
                   flex_epsilon=flex_epsilon)
    plan = composites.plan(canon.units, composite, rules, **options)
    b = graph.Builder(model)
    logits_shape = canon.shapes.get(canon.logits)
    if not logits_shape or len(logits_shape) != 2 or logits_shape[1] is None:
        raise LrpgraphError(f"the logits '{canon.logits}' must have a static shape [N, classes] (got {logits_shape})")
    batch = model.graph.input[[i.name for i in model.graph.input].index(canon.image)].type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or (batch.dim_value or "N")
    gradient = composite in composites.GRADIENT_COMPOSITES
    seed, new_inputs = targets.seed(b, canon.logits, logits_shape[1], target, batch_dim, gradient)
    heat = walk(Context(b, canon.shapes, canon.inits, canon.signal, canon.nonneg), canon, plan, seed)
    b.scope = "output"
    heat = b.zeros_like(canon.image) if heat is None else heat
    b.nodes.append(helper.make_node("Identity", [heat], [RELEVANCE], name=f"lrp/output/{RELEVANCE}"))
    _attach(model, b, new_inputs, canon)
    config = {"composite": composite, "target": target, "image_input": canon.image, "logits": canon.logits,
              "logits_output": model.graph.output[0].name, "outputs_probabilities": canon.outputs_probabilities,
              "relevance_outputs": [RELEVANCE], "options": {k: v for k, v in options.items() if v is not None},
              "overrides": list(rules), "rules": {name: str(rule) for name, rule in plan.items()}}
    metadata.write(model, metadata.VERSION, __version__)
    metadata.write(model, metadata.CONFIG, config)
    if preprocess:
        metadata.write(model, metadata.PREPROCESS, preprocess)
    if labels:
        metadata.write(model, metadata.LABELS, list(labels))
    check(model)
    return model


def walk(ctx, canon, plan, seed):
    """Visit the units in reverse topological order, carrying relevance from outputs to inputs; where a
    tensor feeds several units, the relevance arriving from each is summed. Returns the image's relevance."""
    pending = defaultdict(list)
    pending[canon.logits].append(seed)
    for unit in reversed(canon.units):
        arriving = [pending.pop(t, None) for t in unit.outputs]
        if not any(arriving):
            continue
        ctx.b.scope = unit.name
        r_outs = [ctx.b.sum(r) if r else None for r in arriving]
        r_ins = CONVERTERS[unit.op](ctx, unit, plan[unit.name], r_outs)
        for tensor, r in zip(unit.inputs, r_ins):
            if r is not None and tensor in canon.signal:
                pending[tensor].append(r)
    ctx.b.scope = "input"
    return ctx.b.sum(pending.get(canon.image, []))


def _attach(model, b, new_inputs, canon):
    g = model.graph
    g.node.extend(b.nodes)
    g.initializer.extend(b.initializers)
    g.input.extend(new_inputs)
    image = next(i for i in g.input if i.name == canon.image)
    out = helper.make_tensor_value_info(RELEVANCE, TensorProto.FLOAT, None)
    out.type.CopyFrom(image.type)
    out.doc_string = "LRP relevance of each input value for the explained logit(s), shaped like the image input"
    g.output.append(out)


def check(model):
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise LrpgraphError(f"internal error: the converted model fails onnx.checker ({str(err).splitlines()[0]}); "
                            "please report it with the model") from None


def save(model, path, force=False):
    """Write atomically (temporary file, then rename); refuse to overwrite without force."""
    path = os.fspath(path)
    if os.path.exists(path) and not force:
        raise LrpgraphError(f"{path} exists; pass --force to overwrite it or -o to write elsewhere")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".lrpgraph-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
