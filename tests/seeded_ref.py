"""A seed at any tensor the graph explains, without the target modes: the conversion steps (pipeline.read,
canonicalize, pipeline.plan, walker.Walker, methods.emit) driven directly, with the seed a new graph input
`relevance_seed` shaped like the explained tensor (a detector's raw head output, a segmenter's logits map).
The tests of which graphs convert use it to compare heatmaps with zennit and autograd at a seed of their own."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from lrpgraph import composites, graph, methods, pipeline
from lrpgraph.canonicalize import canonicalize
from lrpgraph.methods.options import MethodOptions
from lrpgraph.rules import RuleOptions
from lrpgraph.walker import Walker

SEED = "relevance_seed"


def seeded(model, spec="epsilon", image_size=None, method_options=None, rules=(), **options):
    """The model with `relevance_seed` (shaped like the explained tensor) as an input and `relevance` as an
    output: spec is a composite or a method, rules its overrides ('OpType=rule')."""
    source = pipeline.read(model, image_size)
    canon = canonicalize(source.view)
    m = source.model
    b = graph.Builder(m)
    shape = ["N"] + list(canon.shapes[canon.logits][1:])
    info = helper.make_tensor_value_info(SEED, TensorProto.FLOAT, shape)
    walker = Walker(b, "gradient" if spec in composites.MESSAGE_COMPOSITES else "relevance")
    new_inputs = [info]
    if methods.is_method(spec):
        heat, more = methods.emit(b, m, canon, spec, SEED, method_options or MethodOptions(), walker)
        new_inputs += more
    else:
        plan = pipeline.plan(canon, spec, rules, RuleOptions(**options))
        heat = walker(canon, plan, SEED)
        if spec in composites.MESSAGE_COMPOSITES:
            heat = b.mul(canon.input, heat)
    b.nodes.append(helper.make_node("Identity", [heat], ["relevance"], name="lrp/output"))
    g = m.graph
    g.node.extend(b.nodes)
    used = {t for node in g.node for t in node.input}
    g.initializer.extend(i for i in b.initializers if i.name in used)
    g.input.extend(new_inputs)
    out = helper.make_tensor_value_info("relevance", TensorProto.FLOAT, None)
    out.type.CopyFrom(next(i for i in g.input if i.name == canon.input).type)
    g.output.append(out)
    onnx.checker.check_model(graph.skeleton(m))
    return m


def run(model, x, seed_fn, extra=None):
    """(explained tensor, relevance): seed_fn(explained tensor) gives the seed; extra: more feeds."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    feeds = {image: np.asarray(x, np.float32)}
    seed_shape = [d for d in next(i for i in session.get_inputs() if i.name == SEED).shape]
    probe = dict(feeds, **{SEED: np.zeros([x.shape[0]] + seed_shape[1:], np.float32)}, **(extra or {}))
    out = dict(zip(names, session.run(None, probe)))
    y = out[names[0]]
    feeds[SEED] = np.asarray(seed_fn(y), np.float32)
    feeds.update(extra or {})
    return y, session.run(["relevance"], feeds)[0]


def same_as_onnxruntime(model, feeds):
    """lrpgraph.train's importer (float64) gives every output of the model as onnxruntime (float32) does."""
    import torch

    from lrpgraph.train.importer import import_onnx

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, feeds)))
    module = import_onnx(model).double()
    got = module.run({k: torch.as_tensor(v, dtype=torch.float64) for k, v in feeds.items()})
    for name in names:
        ref = expected[name]
        np.testing.assert_allclose(got[name].detach().numpy(), ref, rtol=1e-4,
                                   atol=1e-4 * max(float(np.abs(ref).max()), 1e-6), err_msg=name)
