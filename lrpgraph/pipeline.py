"""The conversion pipeline, one named step each: read (load, image size, quantized view) -> canonicalize ->
plan -> seed and backward walk (walker.Walker) per heatmap -> outputs and metadata -> check.
`lrpgraph inspect` runs the same read, canonicalize and plan."""

import os
from dataclasses import dataclass, replace

import onnx
from onnx import TensorProto, helper

from lrpgraph import (bounds, checks, composites, explained_rows, graph, metadata, methods, recompute, simplify,
                      targets, untrusted)
from lrpgraph.canonicalize import canonicalize
from lrpgraph.catalog import Canonical
from lrpgraph.converters import contrib, quantized
from lrpgraph.errors import LrpgraphError
from lrpgraph.image_size import fix_image_size
from lrpgraph.recorded_shapes import check_shapes_agree
from lrpgraph.metadata import RELEVANCE
from lrpgraph.methods.options import MethodOptions
from lrpgraph.rules import RuleOptions
from lrpgraph.walker import Walker


@dataclass
class Source:
    """A model read for explaining (read). model: the model as loaded, its image size fixed, which convert
    extends; view: what canonicalize and the rules read, the model itself or, for a QDQ model, its
    dequantized view (quantized.dequantized_view) with folded, the tensors whose DequantizeLinear it folded."""

    model: onnx.ModelProto
    where: str  # the path, or "the given model", for messages
    view: onnx.ModelProto
    folded: set
    strict: bool = True  # the model passes onnx.checker's full check, so the converted one is held to it
    record: metadata.Record | None = None  # a model lrpgraph converted: its record (read stops after loading)


@dataclass
class Request:
    """What one convert call asks for, its options typed (build_options) and its heatmaps named."""

    explanations: dict  # {output name: composite or method}
    target: str
    rules: list | tuple  # the --rule overrides
    options: RuleOptions
    method_options: MethodOptions
    webgpu: bool = False
    preprocess: dict | None = None
    labels: list | None = None
    image_size: tuple | list | None = None
    from_tensor: str | None = None  # the explained tensor (None: the logits convert finds)


def convert(model_or_path: str | os.PathLike | bytes | onnx.ModelProto, composite: str = "epsilon-plus",
            target: str = "top", rules: list | tuple = (), method: str | None = None,
            explain: dict | list | None = None, options: RuleOptions | None = None,
            method_options: MethodOptions | None = None, preprocess: dict | None = None, labels: list | None = None,
            webgpu: bool = False, image_size: tuple | list | None = None, from_tensor: str | None = None,
            **option_values) -> onnx.ModelProto:
    """Rewrite an ONNX model so that it also returns a heatmap shaped like its image input.

    composite: an LRP rule preset (composites.COMPOSITES); method: a gradient-family method instead
    (methods.METHODS); explain: several at once, {"NAME": composite or method} or ["NAME=SPEC"], giving
    outputs relevance_NAME (otherwise the one output is `relevance`). target: top | index | seed | all.
    rules: overrides 'OpType=rule:params' or 'NAME=rule:params'. options: the rule options (rules.RuleOptions),
    method_options the methods' (methods.options.MethodOptions); option_values: any of their fields by name
    (epsilon=..., stabilizer, gamma, alpha, beta, low, high, flex_epsilon; steps, quadrature, baseline, chunk,
    samples, noise_level), on top of them. webgpu: exact alternatives to the ops that onnxruntime-web's WebGPU
    backend lacks (docs/web.md). image_size: (H, W) for a model exported with symbolic spatial sizes (fix_image_size).
    from_tensor: the tensor to explain, a graph output or an inner tensor (the graph after it keeps computing
    the outputs); by default the logits of a classifier, else the first output. Any explained tensor other
    than a classifier's logits [N, C] takes K targets per sample (targets.explained_seed; relevance [N, K, ...]).
    Returns the checked onnx.ModelProto."""
    options, method_options = build_options(options, method_options, **option_values)
    source = read(model_or_path, image_size, webgpu)
    _refuse_converted(source)
    canon = canonical(source, from_tensor)
    request = Request(_explanations(explain, method, composite), target, rules, options, method_options, webgpu,
                      preprocess, labels, image_size, from_tensor)
    _check_request(source, canon, request)
    heatmaps = {output: heatmap(source, canon, request, output) for output in request.explanations}
    model = source.model
    _attach(model, heatmaps, canon, request.explanations, _k_layout(canon, request))
    if contrib.has_nbits(model):
        contrib.adopt(model, source.view)
    elif source.view is not model:
        quantized.shadow(model, source.view, source.folded, sum(len(b.nodes) for b, _, _ in heatmaps.values()))
    _record(model, canon, request, heatmaps).write(model)
    check(model, source.strict)
    return model


@untrusted.malformed_refused
def read(model_or_path: str | os.PathLike | bytes | onnx.ModelProto, image_size: tuple | list | None = None,
         webgpu: bool = False) -> Source:
    """The pipeline's first steps: load (graph.load), fix the image size (fix_image_size), make a ceil_mode
    pooling exact for WebGPU, take a QDQ model's dequantized view. A model lrpgraph converted is only loaded:
    its Source has a record, and convert and inspect say who converted it."""
    model = graph.load(model_or_path)
    where = os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else "the given model"
    record = metadata.Record.from_model(model, where)
    if record is not None:
        return Source(model, where, model, set(), record=record)
    if image_size is not None:
        model = fix_image_size(model, image_size, where)
    strict = passes_full_check(model)
    if not strict:  # a recorded shape that contradicts the ops (an edited file) is refused; ceil_mode pooling is not
        check_shapes_agree(graph.skeleton(model), where)
    if webgpu:
        from lrpgraph.web import without_ceil_mode

        if without_ceil_mode(model):
            model = graph.infer_shapes(model)
    view, folded = quantized.dequantized_view(model) if quantized.is_quantized(model) else (model, set())
    if contrib.has_nbits(model):  # int4 MatMulNBits: the rules read its dequantized weights
        view = contrib.nbits_view(view)
    return Source(model, where, view, folded, strict)


def _refuse_converted(source):
    done = source.record
    if done is not None:
        raise LrpgraphError(f"{source.where}: already {converted_by(source.model)}; convert the original classifier "
                            f"it was made from (input '{done.image_input or '?'}', output "
                            f"'{done.logits_output or '?'}', without the relevance outputs) instead")


@untrusted.malformed_refused
def canonical(source: Source, from_tensor: str | None = None) -> Canonical:
    """The canonical view of what is explained (canonicalize): the tensor from_tensor, or else the logits
    (a classifier's [N, classes]) or first output; checked to have a static shape [N, ...]."""
    if from_tensor is not None:
        produced = {t for n in source.view.graph.node for t in n.output} | {o.name for o in source.view.graph.output}
        if from_tensor not in produced:
            raise LrpgraphError(f"--from '{from_tensor}': {source.where} has no such tensor computed by a node; name "
                                "a graph output or a node's output (`lrpgraph inspect` lists the nodes)")
    canon = canonicalize(source.view, from_tensor)
    shape = canon.shapes.get(canon.logits)
    if not targets.is_classic(shape, from_tensor) and not _is_sequence(canon, from_tensor):
        targets.explained_shape(canon.logits, shape)
    return canon


def plan(canon: Canonical, composite: str, rules: list | tuple = (), options: RuleOptions | None = None,
         preprocess: dict | None = None) -> dict:
    """{unit name: Rule}: the composite's rules with the overrides (composites.plan), the zbox bounds taken from
    the stored normalisation (bounds.from_preprocess) and carried through in-graph normalisation to the first
    layers (bounds.first_layer_maps)."""
    options = bounds.from_preprocess(preprocess, options or RuleOptions())
    return composites.plan(canon.units, composite, rules, options, first_bounds=bounds.first_layer_maps(canon))


def _check_request(source, canon, request):
    """The preprocessing and labels fit the model's input and classes."""
    dims = [d.dim_value or None for d in _image(source.model, canon).type.tensor_type.shape.dim]
    checks.check_preprocess(request.preprocess, dims[1:], f"the model's input '{canon.input}'")
    if targets.is_classic(canon.shapes[canon.logits], request.from_tensor):
        checks.check_labels(request.labels, canon.shapes[canon.logits][1])


@untrusted.malformed_refused
def heatmap(source: Source, canon: Canonical, request: Request, output: str) -> tuple:
    """Emit the heatmap `output` into a builder of its own: (builder, [new graph inputs], {unit name: rule text}
    for an LRP composite, None for a method)."""
    model, spec = source.model, request.explanations[output]
    b = graph.Builder(model, prefix="lrp" if output == RELEVANCE else f"lrp/{output[len(RELEVANCE) + 1:]}",
                      webgpu=request.webgpu)
    gradient = methods.is_method(spec) or spec in composites.GRADIENT_COMPOSITES
    batch = _image(model, canon).type.tensor_type.shape.dim[0]
    batch = batch.dim_param or batch.dim_value or "N"
    shape = canon.shapes[canon.logits]
    sequence = _is_sequence(canon, request.from_tensor)
    mask = targets.mask_input(model) if sequence else None
    head = explained_rows.head_unit(canon, request.target) if sequence and not methods.is_method(spec) else None
    if targets.is_classic(shape, request.from_tensor):
        seed, new_inputs = targets.seed(b, canon.logits, shape[1], request.target, batch, gradient)
        heat, more, used = _walk(b, model, canon, canon, request, spec, seed)
    elif head is not None:  # the lm_head's relevance on the explained rows only
        rows, new_inputs = explained_rows.rows(b, canon, head, request.target, mask, batch, gradient)
        k = None if request.target == "top" else b.op("Shape", [rows.positions], "k", start=1, end=2)
        heat, more, used = _walk_k(b, model, canon, request, spec, rows.seed, k, rows)
        recompute.attention_probabilities(b, model.graph.node, set(canon.inits) | {i.name for i in model.graph.input},
                                          canon.shapes, rows.seed)
    elif sequence and request.target in ("top", "all"):
        seed, new_inputs = targets.sequence_seed(b, canon.logits, canon.input, mask, request.target, gradient), []
        heat, more, used = _walk(b, model, canon, canon, request, spec, seed)
    else:
        seed, k, new_inputs = targets.explained_seed(b, canon.logits, shape[1:], request.target, batch, gradient)
        if methods.is_method(spec) and spec not in K_METHODS:  # path methods clone the forward K * m times
            heat, more, used = _walk(b, model, replace(canon, k_targets=k), canon, request, spec, seed)
            heat = targets.unfold(b, heat, canon.input, k, len(canon.shapes[canon.input]))
        else:
            heat, more, used = _walk_k(b, model, canon, request, spec, seed, k)
    heat = targets.masked(b, heat, mask, k=_k_layout(canon, request))  # (no mask: heat itself)
    new_inputs = new_inputs + more
    b.nodes.append(helper.make_node("Identity", [heat], [output], name=f"{b.prefix}/output"))
    if source.view is model:  # (a dequantized view's ReLUs are not the model's nodes)
        simplify.denominators(b, model.graph.node, canon.inits)
    return b, new_inputs, used


def _walk_k(b, model, canon, request, spec, seed, k, rows=None):
    """_walk on canon's K-target view (the forward tiled K times), relevance [N, K, *input]; k None: on canon."""
    if k is None:
        return _walk(b, model, canon, canon, request, spec, seed, rows)
    start = len(b.nodes)
    view, tiled = targets.tiled_view(canon, f"{b.prefix}/k")
    heat, more, used = _walk(b, model, view, canon, request, spec, seed, rows)
    targets.tile(b, tiled, canon.shapes, k, start)
    return targets.unfold(b, heat, canon.input, k, len(canon.shapes[canon.input])), more, used


def _is_sequence(canon, from_tensor):
    """A causal LM's logits [N, L, V] from token ids (targets.is_sequence)."""
    return targets.is_sequence(canon.shapes.get(canon.logits), from_tensor, not canon.float_input)


def _k_layout(canon, request):
    """Whether the explained tensor takes K targets per sample (relevance [N, K, *input]): any but a
    classifier's logits, and a causal LM's under index and seed."""
    if targets.is_classic(canon.shapes[canon.logits], request.from_tensor):
        return False
    return not (_is_sequence(canon, request.from_tensor) and request.target in ("top", "all"))


K_METHODS = ("gradient", "input-x-gradient")  # walk the K-target view; the path methods tile their own points


def _walk(b, model, canon, source_canon, request, spec, seed, rows=None):
    """(heatmap of canon's image, [new graph inputs], {unit name: rule text} or None for a method). canon is
    source_canon or its K-target view (same units, renamed); the rules are planned on source_canon. rows: a
    causal LM's explained rows (seed on them; explained_rows.RowsWalker)."""
    message = "gradient" if spec in composites.MESSAGE_COMPOSITES else "relevance"
    walker = Walker(b, message) if rows is None else explained_rows.RowsWalker(b, message, rows)
    if methods.is_method(spec):
        heat, more = methods.emit(b, model, canon, spec, seed, request.method_options, walker)
        return heat, more, None
    rule_plan = plan(source_canon, spec, request.rules, request.options, request.preprocess)
    heat = walker(canon, {u.name: rule_plan[s.name] for u, s in zip(canon.units, source_canon.units)}, seed)
    heat = b.zeros_like(canon.input) if heat is None else heat
    if spec in composites.MESSAGE_COMPOSITES and canon.float_input:  # the walk carried g = R / x
        b.scope = "output"
        heat = b.mul(canon.input, heat)
    return heat, [], {name: str(rule) for name, rule in rule_plan.items()}


def _image(model, canon):
    return next(i for i in model.graph.input if i.name == canon.input)


def _record(model, canon, request, heatmaps):
    """The metadata.Record of the converted model."""
    explanations = request.explanations
    rules_used = {output: used for output, (_, _, used) in heatmaps.items() if used is not None}
    record = metadata.Record(
        composite=next(iter(explanations.values())), explanations=explanations, target=request.target,
        image_input=canon.input, logits=canon.logits, logits_output=model.graph.output[0].name,
        outputs_probabilities=canon.outputs_probabilities, options=request.options.to_dict(),
        method_options=request.method_options.to_dict(), webgpu=request.webgpu, overrides=list(request.rules),
        rules=rules_used.get(RELEVANCE) or next(iter(rules_used.values()), {}),
        gradient_seed={o: methods.is_method(s) or s in composites.GRADIENT_COMPOSITES for o, s in explanations.items()},
        preprocess=request.preprocess or None, labels=list(request.labels) if request.labels else None,
        image_size=[int(d) for d in request.image_size] if request.image_size is not None else None)
    if _k_layout(canon, request):
        record.explained_shape, record.logits_output = list(canon.shapes[canon.logits][1:]), canon.logits
    if not canon.float_input:  # token ids: relevance per token; the embedding table bounds the ids
        record.token_input, record.vocab_size = True, _vocab_size(canon)
    return record


def build_options(options: RuleOptions | None = None, method_options: MethodOptions | None = None,
                  **values) -> tuple:
    """(RuleOptions, MethodOptions): the given objects (default ones if None) with the fields in values
    replaced; the one place where lrpgraph.convert's option keywords become the typed options."""
    unknown = [k for k in values if k not in RuleOptions.names() + MethodOptions.names()]
    if unknown:
        raise TypeError(f"convert() got an unexpected keyword argument {unknown[0]!r}")
    rule = replace(options or RuleOptions(), **{k: v for k, v in values.items() if k in RuleOptions.names()})
    method = (method_options or MethodOptions()).replace(
        **{k: v for k, v in values.items() if k in MethodOptions.names()})
    return rule, method


def _vocab_size(canon):
    from lrpgraph.methods.tokens import embedding_gather

    gather = embedding_gather(canon)
    return None if gather is None else int(canon.shapes[gather.inputs[0]][0])


def converted_by(model: onnx.ModelProto) -> str | None:
    """'converted by lrpgraph X with composite Y' for a model lrpgraph wrote, None for any other."""
    record = metadata.Record.from_model(model)
    if record is None:
        return None
    return f"converted by lrpgraph {record.version} with composite {record.composite}"


def _explanations(explain, method, composite):
    """{output name: composite or method name}."""
    if not explain:
        return {RELEVANCE: method or composite}
    items = explain.items() if isinstance(explain, dict) else [e.partition("=")[::2] for e in explain]
    out = {}
    for name, spec in items:
        name, spec = name.strip(), spec.strip()
        if not name.replace("_", "").replace("-", "").isalnum() or not spec:
            raise LrpgraphError(f"--explain '{name}={spec}': write NAME=METHOD_OR_COMPOSITE with a plain NAME, "
                                "e.g. lrp=epsilon-plus or gig=guided-ig")
        if spec not in composites.COMPOSITES and not methods.is_method(spec):
            raise LrpgraphError(f"--explain '{name}={spec}': unknown; composites: {', '.join(composites.COMPOSITES)}; "
                                f"methods: {', '.join(methods.METHODS)}")
        key = f"{RELEVANCE}_{name.replace('-', '_')}"
        if key in out:
            raise LrpgraphError(f"--explain '{name}={spec}': the name '{name}' is given twice; give each heatmap "
                                "its own NAME")
        out[key] = spec
    return out


@untrusted.malformed_refused
def _attach(model, heatmaps, canon, explanations, k_targets):
    """Add the heatmaps' nodes, the initializers they read, their new graph inputs and their outputs to model."""
    g = model.graph
    builders = [b for b, _, _ in heatmaps.values()]
    for b in builders:
        g.node.extend(b.nodes)
    used = {t for node in g.node for t in node.input}
    for b in builders:
        g.initializer.extend(i for i in b.initializers if i.name in used)
    g.input.extend({i.name: i for _, new_inputs, _ in heatmaps.values() for i in new_inputs}.values())
    image = _image(model, canon)
    for output, spec in explanations.items():
        info = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        info.type.CopyFrom(image.type)
        info.type.tensor_type.elem_type = TensorProto.FLOAT  # token ids: one float relevance per token
        info.doc_string = f"{spec} relevance of each input value for the explained logit(s), shaped like the input"
        if k_targets:
            info.type.tensor_type.shape.dim.insert(1, onnx.TensorShapeProto.Dimension(dim_param="K"))
            info.doc_string = f"{spec} relevance of each input value for each of the K targets, [N, K, *input]"
        g.output.append(info)
    if k_targets and canon.logits not in {o.name for o in g.output}:  # the session reads the explained tensor
        shape = [d if d is not None else "N" for d in canon.shapes[canon.logits]]
        g.output.append(helper.make_tensor_value_info(canon.logits, TensorProto.FLOAT, shape,
                                                      doc_string="the explained tensor"))


def check(model: onnx.ModelProto, strict: bool = True) -> None:
    """onnx.checker with full shape inference (strict), or only the structural check for a source model
    that onnx's own shape inference already rejects (e.g. pooling with ceil_mode in onnx <= 1.23)."""
    try:
        onnx.checker.check_model(graph.skeleton(model), full_check=strict)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise LrpgraphError(f"internal error: the converted model fails onnx.checker ({str(err).splitlines()[0]}); "
                            "please report it with the model") from None


def passes_full_check(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(graph.skeleton(model), full_check=True)
        return True
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False
