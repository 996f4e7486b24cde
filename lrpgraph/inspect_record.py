"""What `lrpgraph inspect` shows for a converted model: everything its metadata record carries (composite or
method per heatmap, the rule of every node, target mode, options and zbox bounds, preprocessing, labels) and
its inputs and outputs, each named by what it is."""

import onnx

from lrpgraph import targets
from lrpgraph.metadata import Record

_TARGET_INPUTS = {"index": f"an int64 input '{targets.TARGET_INPUT}' [N]: the class to explain per sample",
                  "seed": f"a float input '{targets.SEED_INPUT}' [N, C]: what to explain at the logits",
                  "top": "none: the predicted class is explained", "all": "none: the whole logit vector"}
_K_TARGET_INPUTS = {"index": f"an int64 input '{targets.TARGET_INPUT}' {{shape}}: K index tuples per sample into the "
                             "explained tensor (one heatmap each)",
                    "seed": f"a float input '{targets.SEED_INPUT}' {{shape}}: K seeds per sample shaped like the "
                            "explained tensor (one heatmap each)"}


def _target_input(model: onnx.ModelProto, record: Record) -> str:
    """What the target mode asks for at run time, read from the graph's own target or seed input."""
    name = {"index": targets.TARGET_INPUT, "seed": targets.SEED_INPUT}.get(record.target)
    info = next((i for i in model.graph.input if i.name == name), None)
    if info is not None and len(info.type.tensor_type.shape.dim) > (1 if record.target == "index" else 2):
        return _K_TARGET_INPUTS[record.target].format(shape=_shape(info))
    return _TARGET_INPUTS.get(record.target, "?")


def _shape(info: onnx.ValueInfoProto) -> str:
    dims = info.type.tensor_type.shape.dim
    return "[" + ", ".join(d.dim_param or str(d.dim_value) if (d.dim_param or d.dim_value) else "?" for d in dims) + "]"


def _role(name: str, record: Record) -> str:
    if name == record.image_input:
        return "image"
    if name == targets.TARGET_INPUT:
        return "targets per sample"
    if name == targets.SEED_INPUT:
        return "relevance seed"
    if name == record.logits_output:
        if record.k_targets:  # a detector's or segmenter's map, a language model's [N, L, V] logits
            return "explained output (the targets index into it)"
        return "probabilities (softmax of the explained logits)" if record.outputs_probabilities else "logits"
    if name in record.explanations or name in record.relevance_outputs:
        return f"heatmap ({record.explanations.get(name, record.composite)})"
    return ""


def lines(model: onnx.ModelProto, record: Record) -> list:
    """The lines inspect prints for a converted model."""
    from lrpgraph.runtime.describe import explanations, preprocessing

    g = model.graph
    inits = {i.name for i in g.initializer}
    image = next((i for i in g.input if i.name == record.image_input), None)
    shape = [d.dim_value or None for d in image.type.tensor_type.shape.dim] if image is not None else None
    out = [explanations(record), f"target mode: {record.target}; extra input: {_target_input(model, record)}"]
    out.append("inputs:")
    out += [f"  {i.name:<24} {_shape(i):<20} {_role(i.name, record)}" for i in g.input if i.name not in inits]
    out.append("outputs:")
    out += [f"  {o.name:<24} {_shape(o):<20} {_role(o.name, record)}" for o in g.output]
    from lrpgraph.rules.composites import COMPOSITES

    lrp = any(spec in COMPOSITES for spec in record.explanations.values()) or record.composite in COMPOSITES
    given = {**(record.options if lrp else {}), **(record.method_options if not lrp or len(set(
        record.explanations.values())) > 1 else {})}
    if given:
        out.append("options: " + ", ".join(f"{k}={v}" for k, v in sorted(given.items()) if v is not None))
    out.append(preprocessing(record.preprocess, shape[1:] if shape else None))
    labels = record.labels or []
    out.append(f"labels: {len(labels)} ({', '.join(map(str, labels[:5]))}{', ...' if len(labels) > 5 else ''})"
               if labels else "labels: none stored (--labels FILE at convert)")
    if record.image_size:
        out.append(f"image size fixed at convert: {record.image_size}")
    if record.rules:
        out.append("rule of each node (zbox: the first layer's bounds):" if any(
            r.startswith("zbox") for r in record.rules.values()) else "rule of each node:")
        out += [f"  {node:<40} {rule}" for node, rule in record.rules.items()]
    return out
