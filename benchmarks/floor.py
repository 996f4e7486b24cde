"""The floor under a heatmap's cost: the multiply-adds that a converted graph executes, in units of the plain
forward's, next to onnxruntime's kernel time split into the dense ops (Conv, ConvTranspose, Gemm, MatMul:
where the multiply-adds are) and everything else.

The multiply-add ratio is what the heatmap would cost if every adjoint ran as fast per multiply-add as the
forward's convolutions and every other op were free: no implementation of the same rule can go below it.
Multiply-adds are counted from the shapes onnxruntime itself reports for each dense node (its profiler, basic
graph optimisations, so that no layout change pads the channels). The kernel times come from sessions with
every optimisation (what `benchmarks/speed.py` times), called in turn (forward, epsilon, epsilon-plus, forward,
...), medians over the calls of onnxruntime's profiler.

    python benchmarks/floor.py                                  # 4 models, batch 1, 1 and 2 threads
    python benchmarks/floor.py --models resnet18 --threads 1 --repeats 3
    python benchmarks/floor.py --csv out/floor.csv --plot out/floor.png   # also the rows and a bar chart
"""

import argparse
import collections
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import COMPOSITES, MODELS, models_for  # noqa: E402

# (the blocked-layout Conv keeps its op type "Conv", in the com.microsoft.nchwc domain)
DENSE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}
KEYS = ("forward",) + COMPOSITES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help=f"torchvision models (default: {' '.join(MODELS)})")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="intra-op thread counts (default: 1 2)")
    p.add_argument("--repeats", type=int, default=7, help="profiled calls per session after one warm-up (default: 7)")
    p.add_argument("--pause", type=float, default=0.1, help="idle seconds before each profiled call (default: 0.1)")
    p.add_argument("--epsilon", type=float, default=1e-6, help="epsilon and stabilizer of the rules (default: 1e-6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--csv", help="also write the rows to this CSV file")
    p.add_argument("--plot", help="also draw them (PNG): kernel time per composite against its floor and goal")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lrpgraph-speed"),
                   help="folder for the exported and converted models (shared with benchmarks/speed.py)")
    return p.parse_args(argv)


def profiled_nodes(paths, x, threads, level, calls, pause=0.0):
    """{key: {(node name, op type): (median kernel ms, args of the node's last event)}} from onnxruntime's
    profiler, for paths {key: a file or the serialised model}: one warm-up call each, then `calls` rounds
    in which every session runs once in turn, so that a change in the machine's load hits them alike, each
    call after `pause` idle seconds."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    if level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC:  # counting: a prepacked weight leaves the node's inputs
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_profiling = True
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for key, path in paths.items():
            options.profile_file_prefix = os.path.join(tmp, f"profile-{len(sessions)}")
            sessions[key] = ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                                 providers=["CPUExecutionProvider"])
        feeds = {key: {s.get_inputs()[0].name: x} for key, s in sessions.items()}
        for _ in range(calls + 1):
            for key, session in sessions.items():
                time.sleep(pause)  # the last session's spinning worker threads go idle first
                session.run(None, feeds[key])
        for key, session in sessions.items():
            times, args = collections.defaultdict(list), {}
            for e in json.loads(Path(session.end_profiling()).read_text()):
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    node = (e["name"][:-len("_kernel_time")], e["args"]["op_name"])
                    times[node].append(e["dur"] / 1e3)
                    args[node] = e["args"]
            out[key] = {k: (statistics.median(v[1:] or v), args[k]) for k, v in times.items()}
    return out


def shapes(node_args, which):
    return [next(iter(d.values())) for d in node_args.get(which, [])]


def macs(op, node_args):
    """Multiply-adds of one dense node from the shapes of its inputs and output."""
    ins, out = shapes(node_args, "input_type_shape"), shapes(node_args, "output_type_shape")[0]
    if op == "Conv":  # weight [C_out, C_in / group, k...]: each output element costs prod(weight[1:])
        return int(np.prod(out)) * int(np.prod(ins[1][1:]))
    if op == "ConvTranspose":  # weight [C_in, C_out / group, k...]: each input element costs prod(weight[1:])
        return int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
    if op == "Gemm":  # A [M, K] or [K, M]: K = size(A) / M
        return int(np.prod(out)) * int(np.prod(ins[0])) // out[0]
    if op == "MatMul":
        return int(np.prod(out)) * ins[0][-1]
    return 0


def model_rows(name, args):
    _, _, paths = models_for(name, args)
    x = np.random.default_rng(args.seed).random((args.batch, 3, 224, 224), dtype=np.float32)
    basic = profiled_nodes({k: paths[k] for k in KEYS}, x, 1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, 0)
    counted = {k: sum(macs(op, a) for (_, op), (_, a) in nodes.items()) for k, nodes in basic.items()}
    rows = []
    for threads in args.threads:
        kernels = profiled_nodes({k: paths[k] for k in KEYS}, x, threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                 args.repeats, args.pause)
        forward = sum(ms for ms, _ in kernels["forward"].values())
        for c in COMPOSITES:
            by_op = collections.Counter()
            for (_, op), (ms, _) in kernels[c].items():
                by_op[op] += ms
            dense = sum(ms for op, ms in by_op.items() if op in DENSE)
            rest = sorted(((ms, op) for op, ms in by_op.items() if op not in DENSE), reverse=True)
            rows.append(dict(model=name, composite=c, threads=threads, gmacs=counted[c] / 1e9,
                             floor=counted[c] / counted["forward"], dense=dense / forward,
                             rest=sum(ms for ms, _ in rest) / forward, forward_ms=forward,
                             top=", ".join(f"{op} {ms / forward:.2f}" for ms, op in rest[:4])))
            print(f"{name} {c}, {threads} thread(s): multiply-adds {rows[-1]['floor']:.2f}x the forward's, "
                  f"kernel time {rows[-1]['dense'] + rows[-1]['rest']:.2f}x", flush=True)
    return rows


def markdown(rows, batch):
    lines = [f"| model | composite | threads | GMAC (batch {batch}) | multiply-adds / forward (the floor) "
             "| dense kernels / forward | other kernels / forward | all kernels / forward | largest others / forward |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['composite']} | {r['threads']} | {r['gmacs']:.2f} | {r['floor']:.2f} "
                     f"| {r['dense']:.2f} | {r['rest']:.2f} | {r['dense'] + r['rest']:.2f} | {r['top']} |")
    return "\n".join(lines)


GOALS = {"epsilon": 2.2, "epsilon-plus": 3.2}  # what the speed goals ask (in units of the forward)


def plot(rows, batch, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, len(threads), figsize=(6.5 * len(threads), 4.2), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], threads):
        mine = [r for r in rows if r["threads"] == t]
        x = np.arange(len(mine))
        dense = np.array([r["dense"] for r in mine])
        ax.bar(x, dense, color="#4477aa", label="dense kernels (Conv, ConvTranspose, Gemm, MatMul)")
        ax.bar(x, [r["rest"] for r in mine], bottom=dense, color="#ee8866", label="other kernels")
        for i, r in enumerate(mine):
            ax.hlines(r["floor"], i - 0.4, i + 0.4, colors="black", linewidth=2,
                      label="multiply-adds / forward (the floor)" if i == 0 else None)
            ax.hlines(GOALS[r["composite"]], i - 0.4, i + 0.4, colors="#cc3311", linestyles="dashed",
                      label="goal" if i == 0 else None)
            ax.text(i, r["dense"] + r["rest"] + 0.05, f"{r['dense'] + r['rest']:.2f}", ha="center", fontsize=8)
        ax.set_xticks(x, [f"{r['model']}\n{r['composite']}" for r in mine], fontsize=7, rotation=30, ha="right")
        ax.set_title(f"batch {batch}, {t} thread{'s' if t > 1 else ''}", fontsize=10)
        ax.axhline(1.0, color="grey", linewidth=0.8)
    axes[0][0].set_ylabel("kernel time / plain forward's")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    args = parse_args(argv)
    print(f"onnxruntime {ort.__version__} CPU; batch {args.batch}; load average at start {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.models:
        rows += model_rows(name, args)
    print("\n" + markdown(rows, args.batch))
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    if args.plot:
        plot(rows, args.batch, args.plot)


if __name__ == "__main__":
    main()
