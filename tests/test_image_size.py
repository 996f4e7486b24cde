"""Models exported with symbolic spatial sizes (dynamic H and W): refused without an image size, converted with
convert(image_size=(H, W)) / `lrpgraph convert --image-size H,W`, which fixes the image input's spatial dims
(the batch stays dynamic) so that the exporters' shape computations fold. The heatmap equals the one of the
same weights exported at that fixed size (relative L1 <= 1e-6) and matches zennit in float64 (check_parity's
bound); a size that does not fit the model is one line, exit 2."""

import functools
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from test_cli import assert_one_line_error, small_cnn
from test_cli_errors import run
from test_parity_zennit import SIDE, check_parity
from zennit_ref import l1, run_onnx, torchvision_model

import lrpgraph
from lrpgraph import metadata
from lrpgraph.pipeline import fix_image_size
from lrpgraph.errors import LrpgraphError


def export(model, x, exporter, dynamic_spatial):
    target = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        if exporter == "dynamo":
            dim = torch.export.Dim
            shapes = {"x": {0: dim("N"), 2: dim("H", min=32, max=512), 3: dim("W", min=32, max=512)}}
            torch.onnx.export(model, (x,), target, dynamo=True, input_names=["x"], dynamic_shapes=shapes,
                              verbose=False)
        else:
            axes = {0: "N", 2: "H", 3: "W"} if dynamic_spatial else {0: "N"}
            torch.onnx.export(model, (x,), target, dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": axes})
    return target.getvalue()


@functools.cache
def squeezenet():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(weights=None).eval()
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    return model, x, export(model, x, "legacy", dynamic_spatial=False)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_dynamic_spatial_sizes_convert_with_an_image_size(exporter):
    model, x, fixed = squeezenet()
    dynamic = onnx.load_from_string(export(model, x, exporter, dynamic_spatial=True))
    dims = [d.dim_param or d.dim_value for d in dynamic.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == ["H", "W"] or all(isinstance(d, str) for d in dims[2:]), dims
    with pytest.raises(LrpgraphError, match="spatial sizes must be static.*--image-size H,W"):
        lrpgraph.convert(dynamic)
    converted = lrpgraph.convert(dynamic, image_size=(SIDE, SIDE))
    y, heat = run_onnx(converted, x.numpy())
    y_ref, ref = run_onnx(lrpgraph.convert(onnx.load_from_string(fixed)), x.numpy())
    assert np.allclose(y, model(x).detach().numpy(), rtol=1e-4, atol=1e-4 * np.abs(y).max())
    assert np.abs(ref).sum() > 0 and l1(heat, ref) <= 1e-6, l1(heat, ref)
    image = converted.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in image[2:]] == [SIDE, SIDE] and image[0].dim_param  # the batch stays dynamic
    assert metadata.Record.from_model(converted).image_size == [SIDE, SIDE]
    assert metadata.Record.from_model(lrpgraph.convert(onnx.load_from_string(fixed))).image_size is None


def test_dynamic_resnet18_matches_zennit():
    """The legacy exporter's flatten idiom (Shape -> Gather -> Concat -> Reshape) behind symbolic sizes."""
    model, canonizers = torchvision_model("resnet18")
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    dynamic = onnx.load_from_string(export(model, x, "legacy", dynamic_spatial=True))
    fixed = fix_image_size(lrpgraph.graph.load(dynamic), (SIDE, SIDE)).SerializeToString()
    check_parity(model, canonizers, x, fixed, "epsilon-plus", 1e-6, "resnet18 with --image-size", index=False)


@pytest.mark.parametrize("value, needles", [
    ("64,64,3", ["--image-size 64,64,3", "2 spatial sizes", "e.g. --image-size 224,224"]),
    ("0,64", ["--image-size 0,64", "positive integers"]),
    ("-8,64", ["--image-size -8,64", "positive integers"]),
    ("64", ["--image-size 64", "2 spatial sizes"]),
    ("a,b", ["--image-size a,b", "integers"]),
    ("6.5,6", ["--image-size 6.5,6", "integers"]),
    ("1,1", ["--image-size 1,1", "does not accept that size"]),  # the 3x3 kernel of the model needs more
])
def test_a_bad_image_size_is_one_line(tmp_path, value, needles):
    model = small_cnn(input_shape=("N", 2, "H", "W"))
    model.graph.node[0].attribute.pop()  # no padding: the 3x3 Conv needs at least 3x3 pixels
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    code, output = run("convert", path, "--image-size", value)
    assert_one_line_error(code, output, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_image_size_of_a_fixed_model(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(small_cnn(), path)  # input [N, 2, 6, 6]
    assert_one_line_error(*run("convert", path, "--image-size", "8,8"), "fixed at 6x6", "leave --image-size out")
    code, output = run("convert", path, "--image-size", "6,6")
    assert code == 0, output


def test_inspect_takes_the_image_size(tmp_path):
    """`lrpgraph inspect` reads a model as convert does: with symbolic spatial sizes it advises --image-size,
    and with it lists the rules of the model at that size."""
    path = tmp_path / "model.onnx"
    onnx.save(small_cnn(input_shape=("N", 2, "H", "W")), path)
    code, output = run("inspect", path)
    assert code == 2 and "spatial sizes must be static" in output and "--image-size H,W" in output, output
    code, output = run("inspect", path, "--image-size", "8,8")
    assert code == 0, output
    assert "image input 'x' [None, 2, 8, 8]" in output
    rules = output.split("rule of each node:")[1].split()
    assert ["conv", "Conv", "zplus", "[first", "layer]", "relu_0", "Relu", "pass"] == rules[:8], output
    assert_one_line_error(*run("inspect", path, "--image-size", "8"), "--image-size 8", "2 spatial sizes")
