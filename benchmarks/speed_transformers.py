"""Speed on vision transformers: plain ONNX Runtime vs the lrpgraph-converted model (cp-lrp: logits + heatmap
in one call) vs LXT 2.1 in torch (its vit_torch.cp_LRP patches, forward + backward), side by side, with the
floors in torch: the plain model's forward (no_grad) and forward + backward (the plain input gradient, what
LXT's efficient mode costs without its patches), LXT's patches undone for those two calls.

Models: the small ViT of the tests (64 px, patch 8, 4 layers, hidden 64) and torchvision's vit_b_16 (224 px),
random weights. The three methods run in turn within each repeat after one warm-up call each; ORT and
torch get the same intra-op thread count. LXT patches torchvision classes globally, which is why this is
a script of its own (benchmarks/speed.py runs zennit on CNNs).

    python benchmarks/speed_transformers.py                                   # small ViT and vit_b_16, batches 1 8
    python benchmarks/speed_transformers.py --models small --repeats 3        # a quick run
    python benchmarks/speed_transformers.py --threads 1 --clock cpu           # CPU seconds: robust to a loaded machine

--clock cpu times each call by the process's CPU time (time.process_time) instead of the wall clock, so
other jobs on the machine do not count; with one thread it is the work of the call. (ORT's worker threads
are told not to spin-wait then, which would count as CPU time.)
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "transformers"))

import lrpgraph  # noqa: E402
import transformer_models as tm  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["small", "vit_b_16"], help="small and/or vit_b_16")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per method and case (default: 5)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (default); cpu: CPU time of this process")
    p.add_argument("--out", help="also write the markdown table to this file")
    return p.parse_args(argv)


def build(name):
    if name == "small":
        return tm.vit(seed=0), tm.VIT["image_size"]
    return tm.vit(seed=0, full=True), 224


def lxt_call(model):
    """LXT's cp-LRP heatmap: x * d y_c / dx through the patched model (one-hot gradient at the top class)."""
    def call(x):
        x = x.clone().requires_grad_(True)
        y = model(x)
        onehot = torch.nn.functional.one_hot(y.argmax(1), y.shape[1]).float()
        (grad,) = torch.autograd.grad(y, x, onehot)
        return y.detach().numpy(), (x * grad).detach().numpy()
    return call


def gradient_call(model):
    """The plain input gradient d y_c / dx (forward + backward, one-hot at the top class)."""
    def call(x):
        x = x.clone().requires_grad_(True)
        y = model(x)
        (grad,) = torch.autograd.grad(y, x, torch.nn.functional.one_hot(y.argmax(1), y.shape[1]).float())
        return grad
    return call


def unpatched(originals, fn):
    """fn run with the classes' own forwards back (LXT patches them globally), the patches restored after."""
    def call():
        patched = {cls: cls.forward for cls in originals}
        for cls, forward in originals.items():
            cls.forward = forward
        try:
            return fn()
        finally:
            for cls, forward in patched.items():
                cls.forward = forward
    return call


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from torchvision.models import vision_transformer

    from lxt.efficient import monkey_patch
    from lxt.efficient.models.vit_torch import cp_LRP

    originals = {cls: cls.forward for cls in cp_LRP}
    monkey_patch(vision_transformer, cp_LRP)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rows = []
    for name in args.models:
        model, side = build(name)
        example = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))  # batch 1 would be fixed
        plain = tm.export_image_model(model, example)
        converted = lrpgraph.convert(plain, composite="cp-lrp").SerializeToString()
        sessions = {k: ort.InferenceSession(v, options, providers=["CPUExecutionProvider"])
                    for k, v in (("ORT plain", plain), ("lrpgraph", converted))}
        for n in args.batches:
            x = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(2))
            feed = {"x": x.numpy()}
            def forward():
                with torch.inference_mode():
                    return model(x)

            calls = {"torch forward": unpatched(originals, forward),
                     "torch gradient": unpatched(originals, lambda: gradient_call(model)(x)),
                     "ORT plain": lambda: sessions["ORT plain"].run(None, feed),
                     "lrpgraph": lambda: sessions["lrpgraph"].run(None, feed),
                     "LXT": lambda: lxt_call(model)(x)}
            times = {k: [] for k in calls}
            outputs = {k: fn() for k, fn in calls.items()}  # warm-up
            np.testing.assert_allclose(outputs["torch forward"].numpy(), outputs["ORT plain"][0], rtol=1e-3, atol=1e-4)
            for _ in range(args.repeats):
                for k, fn in calls.items():
                    start = clock()
                    fn()
                    times[k].append(clock() - start)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            heat, ref = outputs["lrpgraph"][1], outputs["LXT"][1]
            rows.append((name, n, ms, float(np.abs(heat - ref).sum() / np.abs(ref).sum())))
            print(f"{name} batch {n}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()), flush=True)
    lines = [f"threads {args.threads}, {args.repeats} timed calls, median {args.clock}-clock ms per call (whole batch)",
             "",
             "| model | batch | torch forward | torch forward + backward | ORT plain | lrpgraph cp-lrp "
             "| LXT cp-LRP (torch) | lrpgraph / plain | LXT / lrpgraph | L1 lrpgraph vs LXT (float32) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, n, ms, err in rows:
        lines.append(f"| {name} | {n} | {ms['torch forward']:.1f} | {ms['torch gradient']:.1f} | "
                     f"{ms['ORT plain']:.1f} | {ms['lrpgraph']:.1f} | {ms['LXT']:.1f} | "
                     f"{ms['lrpgraph'] / ms['ORT plain']:.2f} | {ms['LXT'] / ms['lrpgraph']:.2f} | {err:.1e} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
