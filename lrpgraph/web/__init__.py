"""`lrpgraph web`: a static site that explains images in the browser with onnxruntime-web.

The site is index.html + app.js (this folder), the converted model, model.json (what app.js needs: the
input, the preprocessing as a plain pipeline, labels, colour maps, sample images) and onnxruntime-web's
JS and WASM files, copied from the folder in $LRPGRAPH_ORT_WEB, lrpgraph/web/node_modules (`make web` runs
`npm ci` there; the version is pinned in package.json / package-lock.json) or the user cache that web.fetch
fills from the npm registry on first use (checked against package-lock.json's hash). It needs no
network once written: serve it with any static server (`python -m http.server -d site`).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lrpgraph import graph, metadata
from lrpgraph.catalog import is_kind
from lrpgraph.errors import LrpgraphError, NotConvertedError
from lrpgraph.runtime import images, render

HERE = Path(__file__).resolve().parent
PAGE_FILES = ("index.html", "app.js")
# ort.min.mjs is onnxruntime-web's WASM + WebGPU build; it loads the .jsep files from its own folder
ORT_FILES = ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
MODEL_NAME = "model.lrp.onnx"
MANIFEST = ".lrpgraph-site"  # the files build_site wrote: --force replaces a folder holding only these


def ort_dist(progress: bool = True) -> Path:
    """The folder holding onnxruntime-web's dist files: $LRPGRAPH_ORT_WEB, else `make web`'s node_modules, else
    the user cache, filled from the npm registry on first use (web.fetch); or a one-line error."""
    given = os.environ.get("LRPGRAPH_ORT_WEB")
    folder = Path(given or HERE / "node_modules" / "onnxruntime-web" / "dist")
    missing = [name for name in ORT_FILES if not (folder / name).is_file()]
    if missing and given:
        raise LrpgraphError(f"LRPGRAPH_ORT_WEB: {folder / missing[0]} is missing; set it to onnxruntime-web's dist "
                            "folder (`make web` installs one), or unset it to use the cached download")
    if missing:
        from lrpgraph.web.fetch import cached_dist

        return cached_dist(ORT_FILES, progress)
    return folder


def pipeline(preprocess: dict | None, shape: list) -> dict:
    """lrpgraph.runtime.images' preprocessing as explicit steps for app.js: mode, resize (shorter side or
    exact size), crop, scale, channel order, mean and std."""
    pre = preprocess or {}
    steps = {"mode": images.image_mode(pre, shape), "scale": float(pre.get("scale") or 255.0),
             "bgr": str(pre.get("channel_order", "RGB")).upper() == "BGR"}
    resize, crop = pre.get("resize"), pre.get("crop")
    if resize is None and crop is None:  # the default: aspect kept (images.resize_and_crop)
        steps["cover"], crop = list(shape[1:]), list(shape[1:])
    elif resize is not None:
        shorter = isinstance(resize, (int, float)) or (isinstance(resize, (list, tuple)) and len(resize) == 1)
        steps["shorter" if shorter else "size"] = images._pair(resize, "resize")[0] if shorter else \
            list(images._pair(resize, "resize"))
    if crop is not None:
        steps["crop"] = list(images._pair(crop, "crop"))
    for key in ("mean", "std"):
        if pre.get(key) is not None:
            values = [float(v) for v in (pre[key] if isinstance(pre[key], (list, tuple)) else [pre[key]])]
            if len(values) not in (1, shape[0]):
                raise LrpgraphError(f"preprocess {key} has {len(values)} values for {shape[0]} channels; "
                                    "fix the model's metadata")
            steps[key] = values
    return steps


def webgpu_blocked(model: onnx.ModelProto) -> str | None:
    """Why onnxruntime-web's WebGPU backend cannot run this graph (the page then uses WASM), or None.
    Ops it merely lacks (ScatterElements, OneHot, Min, Sum, ...) run on WASM beside it; these fail or, for
    dilated pooling, give wrong values (checked with onnxruntime-web 1.30.0)."""
    for node in model.graph.node:
        attrs = graph.attrs_of(node)
        if not (is_kind(node, "maxpool") or is_kind(node, "avgpool")):
            continue
        if any(d != 1 for d in attrs.get("dilations", [])):
            return f"{node.op_type} with dilations ('{node.name}') computes wrong values on WebGPU"
        if attrs.get("ceil_mode", 0):
            hint = "; convert with --webgpu to avoid it" if is_kind(node, "maxpool") else ""
            return f"{node.op_type} with ceil_mode ('{node.name}') has no WebGPU kernel{hint}"
        if is_kind(node, "maxpool") and len([o for o in node.output if o]) > 1:
            return "MaxPool with indices has no WebGPU kernel; convert with --webgpu to avoid it"
    return None


def without_ceil_mode(model: onnx.ModelProto) -> int:
    """Rewrite each MaxPool with ceil_mode (onnxruntime-web's WebGPU kernel refuses it) as a Pad at the end with
    the lowest float32 and a MaxPool without ceil_mode: the same windows, the same maxima. Returns the count."""
    from lrpgraph.windows import pool_output_size

    shapes, nodes, count = graph.tensor_shapes(model), [], 0
    for node in model.graph.node:
        attrs, shape = graph.attrs_of(node), shapes.get(node.input[0]) if node.input else None
        if (not is_kind(node, "maxpool") or not attrs.get("ceil_mode") or len([o for o in node.output if o]) > 1
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or not shape or None in shape[2:]):
            nodes.append(node)
            continue
        kernel, spatial = attrs["kernel_shape"], shape[2:]
        n = len(kernel)
        strides, pads = attrs.get("strides", [1] * n), list(attrs.get("pads", [0] * 2 * n))
        reach = [(kernel[i] - 1) * attrs.get("dilations", [1] * n)[i] + 1 for i in range(n)]
        out = [pool_output_size(spatial[i], reach[i], strides[i], pads[i], pads[i + n], True) for i in range(n)]
        extra = [max((out[i] - 1) * strides[i] + reach[i] - spatial[i] - pads[i] - pads[i + n], 0) for i in range(n)]
        if [(spatial[i] + pads[i] + pads[i + n] + extra[i] - reach[i]) // strides[i] + 1 for i in range(n)] != out:
            nodes.append(node)
            continue
        name, count = f"{node.name or node.output[0]}/webgpu", count + 1
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array([0] * (n + 2) + [0, 0] + extra, np.int64), f"{name}/pads"),
            numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), f"{name}/lowest")])
        nodes.append(helper.make_node("Pad", [node.input[0], f"{name}/pads", f"{name}/lowest"], [f"{name}/padded"],
                                      name=f"{name}/pad"))
        nodes.append(helper.make_node("MaxPool", [f"{name}/padded"], list(node.output), name=node.name,
                                      **{**attrs, "ceil_mode": 0}))
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count


def site_config(model: onnx.ModelProto, title: str) -> dict:
    """What app.js reads from model.json."""
    record = metadata.Record.from_model(model)
    if record is None:
        raise NotConvertedError("the model has no lrpgraph metadata; convert it first (lrpgraph convert MODEL)")
    image = record.image_input
    constants = {t.name for t in model.graph.initializer}
    extra = [i.name for i in model.graph.input if i.name != image and i.name not in constants]
    if extra:
        raise LrpgraphError(f"the model takes more inputs than the image ({', '.join(extra)}); the page explains the "
                            "predicted class only: convert it with --target top and an LRP composite")
    info = next(i for i in model.graph.input if i.name == image)
    shape = [d.dim_value or None for d in info.type.tensor_type.shape.dim][1:]
    if len(shape) != 3 or None in shape:
        raise LrpgraphError(f"the image input '{image}' must be [N, C, H, W] with static C, H, W; got {shape}")
    return {"title": title, "model": MODEL_NAME, "input": image, "shape": shape,
            "logits": record.logits_output or model.graph.output[0].name,
            "relevance": record.relevance_outputs[0], "outputs_probabilities": record.outputs_probabilities,
            "pipeline": pipeline(record.preprocess, shape), "labels": record.labels,
            "colormaps": {name: [list(map(float, c)) for c in colours] for name, colours in render.COLORMAPS.items()},
            "webgpu_blocked": webgpu_blocked(model), "samples": []}


def _check_replaceable(out: Path) -> None:
    """--force replaces only a site build_site wrote: a real folder whose files are all in its MANIFEST."""
    try:
        listed = set(json.loads((out / MANIFEST).read_text(encoding="utf-8"))) if not out.is_symlink() else None
    except (OSError, ValueError, TypeError):
        listed = None
    if not isinstance(listed, set) or not out.is_dir():
        raise LrpgraphError(f"{out} exists and is no lrpgraph site (it has no {MANIFEST}); --force replaces only "
                            "sites lrpgraph wrote: choose another --out")
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir() or p.is_symlink()}
    extra = sorted(found - listed - {MANIFEST})
    if extra:
        raise LrpgraphError(f"{out} holds {extra[0]!r}, which lrpgraph did not write; --force would delete it: "
                            "move it away or choose another --out")


def build_site(model_path: str | os.PathLike, out_dir: str | os.PathLike, samples: list | tuple = (),
               force: bool = False, title: str | None = None) -> Path:
    """Write the static site for a converted model to out_dir (built aside, then renamed into place)."""
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        if not force:
            raise LrpgraphError(f"{out} exists; pass --force to replace a site written before, or choose another --out")
        _check_replaceable(out)
    model = graph.load(model_path)
    config = site_config(model, title or f"lrpgraph: {Path(model_path).name}")
    dist = ort_dist()
    found = images.find_images(list(samples)) if samples else []
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in PAGE_FILES:
            shutil.copyfile(HERE / name, work / name)
        (work / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(dist / name, work / "ort" / name)
        shutil.copyfile(model_path, work / MODEL_NAME)
        if found:
            (work / "samples").mkdir()
        for file, relative in found:
            name = "samples/" + "_".join(Path(relative).parts)
            shutil.copyfile(file, work / name)
            config["samples"].append(name)
        (work / "model.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        written = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
        (work / MANIFEST).write_text(json.dumps(written, indent=0), encoding="utf-8")
        os.chmod(work, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(work, out)
            shutil.rmtree(old)
        else:
            os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out
