"""Are converted models byte-identical between two commits? For refactors that must not change output.

Builds the models of the parity, transformer, QDQ and legacy-export tests once (torchvision CNNs at 64 px,
the pretrained digit CNN, a small ViT, ConvNeXt and BERT, a written-out LayerNorm ViT, the legacy exporter's
resnet18, a QDQ int8 resnet18), converts each with every composite and method (plus targets, overrides,
several heatmaps, --webgpu) by the lrpgraph of a base commit (a temporary git worktree) and by the working
tree's, and compares the serialised bytes (sha256).

    python benchmarks/identical.py --base 7140844            # prints one row per case; exit 1 on a difference
    python benchmarks/identical.py --hashes out.json         # only the working tree's hashes (used by --base)
    python benchmarks/identical.py --against out.json        # the working tree against hashes saved earlier
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

COMPOSITES = ["epsilon", "epsilon-plus", "epsilon-plus-flat", "zplus", "epsilon-gamma-box", "epsilon-alpha2-beta1",
              "epsilon-alpha2-beta1-flat", "flex"]
TRANSFORMER_COMPOSITES = ["attn-lrp", "cp-lrp"]
METHODS = ["gradient", "input-x-gradient", "ig", "guided-ig", "smoothgrad", "smoothtaylor"]


def cases(model):
    """(label, convert keywords) for one model file name."""
    text = model.startswith("bert")
    transformer = model.startswith(("vit", "convnext", "bert"))
    out = []
    for c in (TRANSFORMER_COMPOSITES if transformer else []) + ([] if text else COMPOSITES):
        out.append((c, {"composite": c}))
    for m in METHODS:
        if text and m == "smoothtaylor":
            continue
        out.append((m, {"method": m, "steps": 4, "samples": 3}))
    if not text and not transformer:
        out += [("epsilon-plus/index", {"composite": "epsilon-plus", "target": "index"}),
                ("epsilon/seed", {"composite": "epsilon", "target": "seed"}),
                ("epsilon/all", {"composite": "epsilon", "target": "all"}),
                ("gamma-box/options", {"composite": "epsilon-gamma-box", "gamma": 0.5, "low": -1.0, "high": 2.0,
                                       "epsilon": 0.01}),
                ("override", {"composite": "epsilon-plus", "rules": ["Gemm=epsilon:0.25", "Conv=alpha-beta:2:1"]}),
                ("explain-two", {"explain": {"lrp": "epsilon-plus", "gig": "guided-ig"}, "steps": 4}),
                ("webgpu", {"composite": "epsilon-plus", "webgpu": True}),
                ("ig-gauss-blur", {"method": "ig", "steps": 4, "quadrature": "gauss-legendre", "baseline": "blur"})]
    return out


def build(folder):
    """Write the models (once) into folder; returns their file names."""
    sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "transformers")]
    os.makedirs(folder, exist_ok=True)
    import onnx
    import torch

    import transformer_models as tm
    from zennit_ref import digit_model, export, torchvision_model, vgg16_bn_small_head

    def write(name, make):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            data = make()
            with open(path, "wb") as f:
                f.write(data if isinstance(data, bytes) else data.SerializeToString())
            print(f"built {name}", file=sys.stderr, flush=True)
        return name

    x64 = torch.rand(2, 3, 64, 64)
    names = [write(f"{n}.onnx", lambda n=n: export(torchvision_model(n)[0], x64))
             for n in ("resnet18", "densenet121", "mobilenet_v2")]
    names.append(write("vgg16_bn.onnx", lambda: export(vgg16_bn_small_head()[0], x64)))
    names.append(write("digits.onnx", lambda: export(digit_model(), torch.rand(2, 1, 28, 28))))
    names.append(write("legacy_resnet18.onnx",
                       lambda: tm.export_either(torchvision_model("resnet18")[0], x64, dynamo=False)))
    vit_bytes = tm.export_image_model(tm.vit(), torch.rand(2, 3, 64, 64))
    names.append(write("vit.onnx", lambda: vit_bytes))
    names.append(write("vit_written_out.onnx", lambda: tm.decompose(vit_bytes)))
    names.append(write("convnext.onnx", lambda: tm.export_image_model(tm.convnext(), torch.rand(2, 3, 32, 32))))
    ids, mask, types = tm.text_batch()
    names.append(write("bert.onnx", lambda: tm.export_text_model(tm.bert(), ids, mask, types)))

    def qdq():
        from qdq_ref import quantize

        source = os.path.join(folder, "resnet18.onnx")
        target = os.path.join(folder, "qdq_resnet18.tmp.onnx")
        quantize(source, target, torch.rand(4, 3, 64, 64).numpy(), per_channel=True)
        return onnx.load(target)

    names.append(write("qdq_resnet18.onnx", qdq))
    return names


def hashes(folder):
    """{model/case: sha256 of the converted model's bytes, or 'error: ...'} with the importable lrpgraph."""
    import lrpgraph

    print(f"converting with {os.path.dirname(lrpgraph.__file__)}", file=sys.stderr, flush=True)
    out = {}
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".onnx") and ".tmp." not in f):
        for label, kw in cases(name):
            try:
                model = lrpgraph.convert(os.path.join(folder, name), **kw)
                out[f"{name}/{label}"] = hashlib.sha256(model.SerializeToString()).hexdigest()
            except Exception as error:  # recorded: the same refusal on both sides counts as the same result
                out[f"{name}/{label}"] = f"error: {type(error).__name__}: {error}"
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the commit to compare with (a git revision)")
    parser.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "lrpgraph-identical-models"))
    parser.add_argument("--hashes", help="write the importable lrpgraph's hashes to this JSON file and stop")
    parser.add_argument("--against", help="compare the importable lrpgraph with hashes saved by --hashes")
    args = parser.parse_args()
    build(args.models)
    if args.hashes:
        with open(args.hashes, "w") as f:
            json.dump(hashes(args.models), f, indent=1, sort_keys=True)
        return 0
    if args.against:
        with open(args.against) as f:
            return compare(json.load(f), hashes(args.models), args.against)
    if not args.base:
        parser.error("give --base REV, --against FILE or --hashes FILE")
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, args.base], check=True,
                       capture_output=True)
        try:
            results = {}
            for side, path in (("base", tree), ("head", ROOT)):
                out = os.path.join(tmp, f"{side}.json")
                env = {**os.environ, "PYTHONPATH": path}
                subprocess.run([sys.executable, os.path.abspath(__file__), "--models", args.models, "--hashes", out],
                               check=True, env=env, cwd=tmp)
                with open(out) as f:
                    results[side] = json.load(f)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
    return compare(results["base"], results["head"], args.base)


def compare(base, head, what):
    """Print one row per case; 1 when any differs."""
    differ = 0
    for key in sorted(set(base) | set(head)):
        same = base.get(key) == head.get(key)
        differ += not same
        shown = head.get(key, "missing")
        print(f"{'same' if same else 'DIFF'}  {key:<55} {shown[:16] if not shown.startswith('error') else shown[:90]}")
    print(f"{len(base)} cases: {len(base) - differ} byte-identical, {differ} different "
          f"(base {what}, head: the working tree)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
