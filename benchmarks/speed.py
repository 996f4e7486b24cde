"""Speed: plain ONNX Runtime inference vs the lrpgraph-converted model (logits + heatmap in one call) vs zennit.

For each torchvision model (random weights, 224x224 input) and batch size, one run measures side by side
the median wall time of
  (a) ORT plain   : onnxruntime on the exported model (CPU provider), logits only;
  (b) lrpgraph    : onnxruntime on the lrpgraph-converted model, logits + `relevance` in one call;
  (c) zennit      : the same torch model with the same composite (and the canonizers of tests/zennit_ref.py),
                    forward + backward with the seed y_c at the top class, as lrpgraph's target 'top'.
The three are run in turn within each repeat (a, b, c, a, b, c, ...) after one warm-up call each, so that
drift in the machine's load hits them alike. ORT and torch are given the same intra-op thread count.

    python benchmarks/speed.py                                   # defaults; see docs/speed.md for time and memory
    python benchmarks/speed.py --models resnet18 --batches 1 --repeats 2
    python benchmarks/speed.py --out out/speed.md --plot         # also writes out/speed.png
"""

import argparse
import gc
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared references (zennit_ref)

import lrpgraph  # noqa: E402
from zennit_ref import export, l1, torchvision_model, zennit_composite  # noqa: E402

METHODS = ("ORT plain", "lrpgraph", "zennit")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg16_bn"],
                   help="torchvision model names (default: resnet18 vgg16_bn)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="batch sizes (default: 1 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per method and case (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per method before timing (default: 1)")
    p.add_argument("--heavy", nargs="*", default=["vgg16_bn:32"], metavar="MODEL:BATCH",
                   help="cases timed with --heavy-repeats instead of --repeats (default: vgg16_bn:32)")
    p.add_argument("--heavy-repeats", type=int, default=2, help="timed calls for the --heavy cases (default: 2)")
    p.add_argument("--composite", default="epsilon-plus", help="lrpgraph / zennit composite (default: epsilon-plus)")
    p.add_argument("--epsilon", type=float, default=1e-6, help="epsilon and stabilizer of the rules (default: 1e-6)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="intra-op threads for ORT and torch alike (default: all cores this process may use)")
    p.add_argument("--pause", type=float, default=0.1,
                   help="seconds of idle between timed calls, so one runtime's spinning threads do not slow the "
                        "next (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--out", help="also write the markdown tables to this file")
    p.add_argument("--plot", action="store_true",
                   help="write a PNG bar chart of the times next to --out (same name, .png), else ./speed.png")
    args = p.parse_args(argv)
    for case in args.heavy:
        if not (case.count(":") == 1 and case.split(":")[1].isdigit()):
            p.error(f"--heavy {case}: write MODEL:BATCH, e.g. vgg16_bn:32")
    return args


def ort_session(model_bytes, threads):
    options = ort.SessionOptions()  # defaults (graph optimisations: all), apart from the thread count
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def zennit_call(modified, x):
    """forward + backward through the composite-modified model; the heatmap of the top class."""
    x = x.clone().requires_grad_(True)
    y = modified(x)
    rows = torch.arange(len(y))
    seed = torch.zeros_like(y)
    c = y.argmax(1)
    seed[rows, c] = y[rows, c]
    (grad,) = torch.autograd.grad(y, x, seed.detach())
    return y.detach().numpy(), grad.numpy()


def time_side_by_side(calls, warmup, repeats, pause):
    """calls: {name: fn}. Warm each up, then time them in turn, repeats rounds. Returns ({name: [s]}, last outputs)."""
    outputs = {}
    for name, fn in calls.items():
        for _ in range(warmup):
            outputs[name] = fn()
            time.sleep(pause)
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
            time.sleep(pause)
    return times, outputs


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def bench_model(name, args, rows, builds):
    model, canonizers = torchvision_model(name, seed=args.seed)
    for p in model.parameters():
        p.requires_grad_(False)  # inference-time explanation: gradients w.r.t. the input only
    example = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed))

    start = time.perf_counter()
    plain_bytes = export(model, example)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    converted = lrpgraph.convert(onnx.load_from_string(plain_bytes), composite=args.composite, target="top",
                                 epsilon=args.epsilon, stabilizer=args.epsilon)
    convert_s = time.perf_counter() - start
    lrp_bytes = converted.SerializeToString()
    builds.append(dict(model=name, export_s=export_s, convert_s=convert_s, plain_mb=len(plain_bytes) / 2**20,
                       lrp_mb=len(lrp_bytes) / 2**20))
    print(f"{name}: export {export_s:.1f} s, conversion {convert_s:.1f} s, "
          f"{len(plain_bytes) / 2**20:.1f} MB -> {len(lrp_bytes) / 2**20:.1f} MB", flush=True)

    plain = ort_session(plain_bytes, args.threads)
    lrp = ort_session(lrp_bytes, args.threads)
    del plain_bytes, lrp_bytes, converted
    composite = zennit_composite(args.composite, args.epsilon, args.epsilon, canonizers=canonizers)
    with composite.context(model) as modified:  # hooks and canonizers registered once, as a conversion is
        for batch in args.batches:
            x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed + batch))
            feed_plain = {plain.get_inputs()[0].name: x.numpy()}
            feed_lrp = {lrp.get_inputs()[0].name: x.numpy()}
            heavy = f"{name}:{batch}" in args.heavy
            repeats = args.heavy_repeats if heavy else args.repeats
            calls = {"ORT plain": lambda: plain.run(None, feed_plain),
                     "lrpgraph": lambda: lrp.run(None, feed_lrp),
                     "zennit": lambda: zennit_call(modified, x)}
            start = time.perf_counter()
            times, outputs = time_side_by_side(calls, args.warmup, repeats, args.pause)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            heat = dict(zip([o.name for o in lrp.get_outputs()], outputs["lrpgraph"]))["relevance"]
            row = dict(model=name, batch=batch, repeats=repeats, heavy=heavy, **ms,
                       l1=l1(heat, outputs["zennit"][1]), wall_s=time.perf_counter() - start)
            rows.append(row)
            print(f"  batch {batch:>3} ({repeats} repeats{', heavy' if heavy else ''}): "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
                  + f"; heatmap L1 lrpgraph vs zennit {row['l1']:.1e}; {row['wall_s']:.0f} s; "
                  f"peak RSS so far {peak_rss_gb():.1f} GB", flush=True)
            del outputs, calls
            gc.collect()
    del plain, lrp, model
    gc.collect()


def markdown(rows, builds, args):
    lines = ["| model | batch | repeats | ORT plain ms | lrpgraph ms | zennit ms | lrpgraph/plain | zennit/lrpgraph |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['repeats']}{'*' if r['heavy'] else ''} "
                     f"| {r['ORT plain']:.1f} | {r['lrpgraph']:.1f} | {r['zennit']:.1f} "
                     f"| {r['lrpgraph'] / r['ORT plain']:.2f} | {r['zennit'] / r['lrpgraph']:.2f} |")
    if any(r["heavy"] for r in rows):
        lines.append("")
        lines.append(f"\\* heavy case: {args.heavy_repeats} timed call(s) per method instead of {args.repeats}, "
                     "to keep the run short; its median is less robust.")
    lines += ["", "| model | export s | conversion s | original MB | converted MB | converted/original |",
              "|---|---:|---:|---:|---:|---:|"]
    for b in builds:
        lines.append(f"| {b['model']} | {b['export_s']:.1f} | {b['convert_s']:.1f} | {b['plain_mb']:.1f} "
                     f"| {b['lrp_mb']:.1f} | {b['lrp_mb'] / b['plain_mb']:.2f} |")
    lines += ["", "Heatmap agreement (L1 relative error, lrpgraph vs zennit, last timed call): "
              + ", ".join(f"{r['model']} b{r['batch']} {r['l1']:.1e}" for r in rows)]
    return "\n".join(lines) + "\n"


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nbatch {r['batch']}" for r in rows]
    xs = np.arange(len(rows))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(rows)), 4.5))
    for i, method in enumerate(METHODS):
        values = [r[method] for r in rows]
        bars = ax.bar(xs + (i - 1) * width, values, width, label=method)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(xs, labels)
    ax.set_yscale("log")
    ax.set_ylim(bottom=min(r[m] for r in rows for m in METHODS) / 3)  # so the shortest bar still shows
    ax.set_ylabel("median wall time per call (ms, log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    heavy = [h for h in args.heavy if h.split(":")[0] in args.models and int(h.split(":")[1]) in args.batches]
    header = (f"composite {args.composite} (epsilon {args.epsilon:g}), target top; threads: ORT intra-op "
              f"{args.threads}, torch {torch.get_num_threads()} (of {os.cpu_count()} CPUs); onnxruntime "
              f"{ort.__version__} CPUExecutionProvider, torch {torch.__version__}; {platform.processor() or platform.machine()}; "
              f"repeats {args.repeats} (heavy cases {', '.join(heavy) or 'none'}: {args.heavy_repeats}), "
              f"warm-up {args.warmup}; load average at start {os.getloadavg()[0]:.1f}")
    print(header, flush=True)
    rows, builds = [], []
    start = time.perf_counter()
    for name in args.models:
        bench_model(name, args, rows, builds)
    table = markdown(rows, builds, args)
    print()
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s; load average at end {os.getloadavg()[0]:.1f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(header + "\n\n" + table)
        print(f"wrote {out}")
    if args.plot:
        path = Path(args.out).with_suffix(".png") if args.out else Path("speed.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, path, f"{args.composite}, {args.threads} threads")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
