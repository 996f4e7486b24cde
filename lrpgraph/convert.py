"""The conversion pipeline: load -> canonicalize -> plan -> backward walk -> outputs -> check."""

import os
from collections import defaultdict
from dataclasses import replace

import onnx
from onnx import TensorProto, external_data_helper, helper

from lrpgraph import bounds, checks, composites, graph, metadata, methods, simplify, targets
from lrpgraph.canonicalize import canonicalize, image_input
from lrpgraph.catalog import Canonical, Context, Initializers, check_rule
from lrpgraph.converters import converter_of, quantized
from lrpgraph.errors import LrpgraphError
from lrpgraph.files import atomic_write
from lrpgraph.methods.options import MethodOptions
from lrpgraph.rules import RuleOptions

RELEVANCE = "relevance"
EXTERNAL_BYTES = 1 << 30  # weights above 1 GiB are saved as external data (protobuf's limit is 2 GiB)


def convert(model_or_path: str | os.PathLike | bytes | onnx.ModelProto, composite: str = "epsilon-plus",
            target: str = "top", rules: list | tuple = (), method: str | None = None,
            explain: dict | list | None = None, options: RuleOptions | None = None,
            method_options: MethodOptions | None = None, preprocess: dict | None = None, labels: list | None = None,
            webgpu: bool = False, image_size: tuple | list | None = None, **option_values) -> onnx.ModelProto:
    """Rewrite an ONNX classifier so that it also returns a heatmap shaped like its image input.

    composite: an LRP rule preset (composites.COMPOSITES); method: a gradient-family method instead
    (methods.METHODS); explain: several at once, {"NAME": composite or method} or ["NAME=SPEC"], giving
    outputs relevance_NAME (otherwise the one output is `relevance`). target: top | index | seed | all.
    rules: overrides 'OpType=rule:params' or 'NAME=rule:params'. options: the rule options (rules.RuleOptions),
    method_options the methods' (methods.options.MethodOptions); option_values: any of their fields by name
    (epsilon=..., stabilizer, gamma, alpha, beta, low, high, flex_epsilon; steps, quadrature, baseline, chunk,
    samples, noise_level), on top of them. webgpu: exact alternatives to the ops that onnxruntime-web's WebGPU
    backend lacks (docs/web.md). image_size: (H, W) for a model exported with symbolic spatial sizes (fix_image_size).
    Returns the checked onnx.ModelProto."""
    options, method_options = build_options(options, method_options, **option_values)
    model = graph.load(model_or_path)
    where = os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else "the given model"
    done = metadata.Record.from_model(model, where)
    if done is not None:
        raise LrpgraphError(f"{where}: already {converted_by(model)}; convert the original classifier it was made "
                            f"from (input '{done.image_input or '?'}', output "
                            f"'{done.logits_output or '?'}', without the relevance outputs) instead")
    if image_size is not None:
        model = fix_image_size(model, image_size, where)
    strict = passes_full_check(model)
    if webgpu:
        from lrpgraph.web import without_ceil_mode

        if without_ceil_mode(model):
            model = graph.infer_shapes(model)
    view, folded = quantized.dequantized_view(model) if quantized.is_quantized(model) else (model, set())
    canon = canonicalize(view)
    logits_shape = canon.shapes.get(canon.logits)
    if not logits_shape or len(logits_shape) != 2 or logits_shape[1] is None:
        raise LrpgraphError(f"the logits '{canon.logits}' must have a static shape [N, classes] (got {logits_shape})")
    image = next(i for i in model.graph.input if i.name == canon.image)
    batch = image.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or batch.dim_value or "N"
    explanations = _explanations(explain, method, composite)
    dims = [d.dim_value or None for d in image.type.tensor_type.shape.dim]
    checks.check_preprocess(preprocess, dims[1:], f"the model's input '{canon.image}'")
    checks.check_labels(labels, logits_shape[1])
    first_bounds = bounds.first_layer_maps(canon)
    builders, inputs, rules_used = [], {}, {}
    for output, spec in explanations.items():
        b = graph.Builder(model, prefix="lrp" if output == RELEVANCE else f"lrp/{output[len(RELEVANCE) + 1:]}",
                          webgpu=webgpu)
        gradient = methods.is_method(spec) or spec in composites.GRADIENT_COMPOSITES
        seed, new_inputs = targets.seed(b, canon.logits, logits_shape[1], target, batch_dim, gradient)

        def walk_with(view, plan, start, b=b, spec=spec):
            ctx = Context(b, view.shapes, view.inits, view.signal, view.nonneg)
            if spec in composites.MESSAGE_COMPOSITES:
                ctx.message = "gradient"  # LRP rules receive and return g = R / x (converters/attention.py)
            return walk(ctx, view, plan, start)

        if methods.is_method(spec):
            heat, more = methods.emit(b, model, canon, spec, seed, method_options, walk_with)
            new_inputs = new_inputs + more
        else:
            plan = composites.plan(canon.units, spec, rules, options, first_bounds=first_bounds)
            rules_used[output] = {name: str(rule) for name, rule in plan.items()}
            heat = walk_with(canon, plan, seed)
            heat = b.zeros_like(canon.image) if heat is None else heat
            if spec in composites.MESSAGE_COMPOSITES and canon.image_float:
                b.scope = "output"
                heat = b.mul(canon.image, heat)
        b.nodes.append(helper.make_node("Identity", [heat], [output], name=f"{b.prefix}/output"))
        if view is model:  # (a dequantized view's ReLUs are not the model's nodes)
            simplify.denominators(b, model.graph.node, canon.inits)
        builders.append(b)
        inputs.update({i.name: i for i in new_inputs})
    _attach(model, builders, list(inputs.values()), image, explanations)
    if view is not model:
        quantized.shadow(model, view, folded, sum(len(b.nodes) for b in builders))
    record = metadata.Record(
        composite=next(iter(explanations.values())), explanations=explanations, target=target, image_input=canon.image,
        logits=canon.logits, logits_output=model.graph.output[0].name, outputs_probabilities=canon.outputs_probabilities,
        options=options.to_dict(), method_options=method_options.to_dict(), webgpu=webgpu,
        overrides=list(rules), rules=rules_used.get(RELEVANCE) or next(iter(rules_used.values()), {}),
        gradient_seed={o: methods.is_method(s) or s in composites.GRADIENT_COMPOSITES for o, s in explanations.items()},
        preprocess=preprocess or None, labels=list(labels) if labels else None,
        image_size=[int(d) for d in image_size] if image_size is not None else None)
    if not canon.image_float:  # token ids: relevance per token; the embedding table bounds the ids
        record.token_input, record.vocab_size = True, _vocab_size(canon)
    record.write(model)
    check(model, strict)
    return model


def build_options(options: RuleOptions | None = None, method_options: MethodOptions | None = None,
                  **values) -> tuple:
    """(RuleOptions, MethodOptions): the given objects (default ones if None) with the fields in values
    replaced; the one place where lrpgraph.convert's option keywords become the typed options."""
    unknown = [k for k in values if k not in RuleOptions.names() + MethodOptions.names()]
    if unknown:
        raise TypeError(f"convert() got an unexpected keyword argument {unknown[0]!r}")
    rule = replace(options or RuleOptions(), **{k: v for k, v in values.items() if k in RuleOptions.names()})
    method = replace(method_options or MethodOptions(),
                     **{k: v for k, v in values.items() if k in MethodOptions.names()})
    return rule, method


def fix_image_size(model: onnx.ModelProto, image_size: tuple | list, where: str = "the model") -> onnx.ModelProto:
    """The model with its image input's spatial dims set to image_size (the batch stays as it is) and its shapes
    inferred again, so that shape computations on them (Shape -> Gather -> Concat -> Reshape) become known."""
    name, is_float = image_input(model.graph, Initializers(model.graph.initializer))
    dims = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim
    size = list(image_size)
    spatial = len(dims) - 2
    if not is_float or spatial < 1:
        raise LrpgraphError(f"--image-size {_text(size)}: the input '{name}' of {where} has no spatial sizes "
                            f"(shape {_text(_shape(dims), 'x')}); convert it without --image-size")
    if len(size) != spatial or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
        example = ",".join(["224"] * spatial)
        raise LrpgraphError(f"--image-size {_text(size)}: the input '{name}' of {where} has {spatial} spatial "
                            f"sizes; give {spatial} positive integers, e.g. --image-size {example}")
    fixed = [d.dim_value for d in dims[2:] if d.HasField("dim_value")]
    if len(fixed) == spatial and fixed != size:
        raise LrpgraphError(f"--image-size {_text(size)}: the input '{name}' of {where} is fixed at "
                            f"{_text(fixed, 'x')}; give that size or leave --image-size out")
    for dim, value in zip(dims[2:], size):
        dim.dim_value = value  # replaces a dim_param (oneof)
    del model.graph.value_info[:]  # the exporter's symbolic shapes, inferred again from the fixed input
    try:
        model = graph.infer_shapes(model)
    except LrpgraphError as error:
        raise LrpgraphError(f"--image-size {_text(size)}: {where} does not accept that size ({error}); "
                            "give the size the model was trained for") from None
    for info in model.graph.value_info:  # a kernel or window larger than its input: sizes <= 0
        shape = _shape(info.type.tensor_type.shape.dim)
        if any(isinstance(d, int) and d < 0 for d in shape) or (len(shape) >= 3 and 0 in shape):
            raise LrpgraphError(f"--image-size {_text(size)}: {where} does not accept that size ('{info.name}' would "
                                f"be {_text(shape, 'x')}); give the size the model was trained for")
    return model


def _shape(dims):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _text(values, sep=","):
    return sep.join(str(v) for v in values)


def _vocab_size(canon):
    return next((int(canon.shapes[u.inputs[0]][0]) for u in canon.units
                 if u.op == "Gather" and u.inputs[1] == canon.image and u.inputs[0] in canon.inits), None)


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


def walk(ctx: Context, canon: Canonical, plan: dict, seed: str) -> str | None:
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
        rule = plan[unit.name]
        check_rule(unit, rule)
        r_ins = converter_of(unit)(ctx, unit, rule, r_outs)
        for tensor, r in zip(unit.inputs, r_ins):
            if r is not None and tensor in canon.signal:
                pending[tensor].append(r)
    ctx.b.scope = "input"
    return ctx.b.sum(pending.get(canon.image, []))


def _attach(model, builders, new_inputs, image, explanations):
    g = model.graph
    for b in builders:
        g.node.extend(b.nodes)
    used = {t for node in g.node for t in node.input}
    for b in builders:
        g.initializer.extend(i for i in b.initializers if i.name in used)
    g.input.extend(new_inputs)
    for output, spec in explanations.items():
        info = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        info.type.CopyFrom(image.type)
        info.type.tensor_type.elem_type = TensorProto.FLOAT  # token ids: one float relevance per token
        info.doc_string = f"{spec} relevance of each input value for the explained logit(s), shaped like the input"
        g.output.append(info)


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


def save(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False, external: bool | None = None) -> None:
    """Write atomically (temporary file, then rename); refuse to overwrite without force.

    external: weights in PATH.data next to the model (ONNX external data), as models over protobuf's 2 GB
    limit need; None: when the weights exceed EXTERNAL_BYTES. The relevance path reads the same
    initializers, so the data file is about the source model's. Converts `model` in place in that case."""
    path = os.fspath(path)
    location = os.path.basename(path) + ".data"
    data = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    if external is None:
        external = sum(len(i.raw_data) for i in model.graph.initializer) > EXTERNAL_BYTES
    for target in [path] + ([data] if external else []):
        if os.path.exists(target) and not force:
            raise LrpgraphError(f"{target} exists; pass --force to overwrite it or -o to write elsewhere")
    if external:
        external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location,
                                                            size_threshold=1024)
        partial = data + ".partial"
        if os.path.exists(partial):
            os.remove(partial)
        for tensor in external_data_helper._get_all_tensors(model):  # written under a temporary name first
            if external_data_helper.uses_external_data(tensor):
                external_data_helper.set_external_data(tensor, location=os.path.basename(partial))
        external_data_helper.write_external_data_tensors(model, os.path.dirname(data))
        for tensor in external_data_helper._get_all_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        os.replace(partial, data)
    atomic_write(path, lambda file: file.write(model.SerializeToString()))


def uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at path keeps its weights in external data files."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return False
    light = onnx.load(os.fspath(path), load_external_data=False)
    return any(external_data_helper.uses_external_data(t) for t in light.graph.initializer)


def optimized_path(path: str | os.PathLike) -> str:
    """Where write_optimized puts onnxruntime's optimised copy of a converted model: NAME.ort.onnx."""
    root, ext = os.path.splitext(os.fspath(path))
    return (root if ext == ".onnx" else os.fspath(path)) + ".ort.onnx"


def write_optimized(path: str | os.PathLike, force: bool = False, repeats: int = 3) -> tuple:
    """Also write onnxruntime's offline-optimised model (level 'extended': constant folding, e.g. w+ and the
    flipped kernels, and the CPU provider's fusions; no hardware-specific layouts) next to path, and keep
    it only when it loads faster. The graph's arithmetic is unchanged: the session would apply the same
    optimisations when loading. Returns (seconds to load path, seconds to load the copy, kept)."""
    import time

    from lrpgraph.ort import onnxruntime as ort

    out = optimized_path(path)
    if os.path.exists(out) and not force:
        raise LrpgraphError(f"{out} exists; pass --force to overwrite it")
    temporary = out + ".tmp"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = temporary
    try:
        ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])

        def load_s(model, level):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = level
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
                times.append(time.perf_counter() - start)
            return min(times)

        plain = load_s(os.fspath(path), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        # the optimised file needs no 'basic'/'extended' pass again; the layout pass ('all') still runs
        optimized = load_s(temporary, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if optimized < plain:
            os.replace(temporary, out)
            return plain, optimized, True
        return plain, optimized, False
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
