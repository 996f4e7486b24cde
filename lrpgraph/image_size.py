"""--image-size: a model exported with symbolic spatial sizes gets them fixed (the pipeline's read step), so that
the shape computations on them become known."""

import onnx

from lrpgraph import graph
from lrpgraph.canonicalize import explained_input
from lrpgraph.catalog import Initializers
from lrpgraph.errors import LrpgraphError


def fix_image_size(model: onnx.ModelProto, image_size: tuple | list, where: str = "the model") -> onnx.ModelProto:
    """The model with its image input's spatial dims set to image_size (the batch stays as it is) and its shapes
    inferred again, so that shape computations on them (Shape -> Gather -> Concat -> Reshape) become known."""
    name, is_float = explained_input(model.graph, Initializers(model.graph.initializer))
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
