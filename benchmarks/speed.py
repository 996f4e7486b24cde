"""Speed: what an lrpgraph heatmap costs next to plain ONNX Runtime inference and next to zennit.

For each torchvision model (random weights, 224x224 input) and batch size, one run times side by side,
interleaved (forward, epsilon, epsilon-plus, zennit epsilon, zennit epsilon-plus, forward, ...), the
median wall time per call of
  forward        : onnxruntime on the exported model (CPU provider): logits only;
  epsilon        : onnxruntime on the model converted with composite `epsilon` (logits + heatmap, one call);
  epsilon-plus   : the same with composite `epsilon-plus`;
  zennit eps/plus: the torch model with zennit's Epsilon / EpsilonPlus composites (canonizers of
                   tests/zennit_ref.py), forward + backward with the seed y_c at the top class.
ORT and torch get the same intra-op thread count. Peak resident memory of each ONNX Runtime session is
measured in a child process per session (its VmHWM after loading and two calls). With --isolate (on by
itself at batch 16 and above) each session instead runs, warm-up and timed calls, alone in a child process
of its own (ORT sessions: without torch), one after another: only one session's memory is resident at a
time, and the child's peak (VmHWM) is the session's peak memory.

    python benchmarks/speed.py                                   # every model, batches 1 and 32
    python benchmarks/speed.py --models resnet18 --batches 1 --repeats 3
    python benchmarks/speed.py --models resnet18 --batches 1 --profile    # + kernel time by op type
    python benchmarks/speed.py --ig                              # + IG (32 steps) vs 32 gradient calls
    python benchmarks/speed.py --models vgg16_bn --batches 32 --isolate   # one child process per session
"""

import argparse
import collections
import copy
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared references (zennit_ref)

import lrpgraph  # noqa: E402
from zennit_ref import export, l1, torchvision_model, zennit_composite  # noqa: E402

MODELS = ("resnet18", "vgg16_bn", "mobilenet_v2", "densenet121")
COMPOSITES = ("epsilon", "epsilon-plus")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
COLUMNS = ("forward",) + COMPOSITES + tuple(f"zennit {c}" for c in COMPOSITES)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help=f"torchvision models (default: {' '.join(MODELS)})")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="batch sizes (default: 1 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per case (default: 5)")
    p.add_argument("--heavy-repeats", type=int, default=2,
                   help="timed rounds where one zennit call takes over 10 s (default: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each before timing (default: 1)")
    p.add_argument("--epsilon", type=float, default=1e-6, help="epsilon and stabilizer of the rules (default: 1e-6)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="intra-op threads for ORT and torch alike (default: the CPUs this process may use)")
    p.add_argument("--pause", type=float, default=0.1, help="idle seconds between timed calls (default: 0.1)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or this process's CPU time (user + system, all threads; ORT's spinning off): "
                        "steadier when other jobs share the cores, best with --threads 1 (default: wall)")
    p.add_argument("--no-zennit", action="store_true", help="leave zennit out (faster runs)")
    p.add_argument("--no-memory", action="store_true", help="leave out the per-session peak memory")
    p.add_argument("--memory-settings", action="store_true",
                   help="also print epsilon-plus's peak memory and CPU time with ORT's arena / memory pattern off")
    p.add_argument("--isolate", choices=["auto", "yes", "no"], default="auto",
                   help="run each session alone in a child process, one after another (not interleaved), its peak "
                        "memory measured there: bounds the memory to one session's (default auto: at batch >= 16)")
    p.add_argument("--profile", action="store_true",
                   help="also print onnxruntime's kernel time by op type for forward, epsilon, epsilon-plus")
    p.add_argument("--ig", action="store_true",
                   help="also time IG (32 steps, one call) against 32 separate gradient calls, batch 1")
    p.add_argument("--ig-chunks", nargs="+", type=int, default=[4],
                   help="with --ig: IG steps per cloned forward path, one IG model each (default: 4, lrpgraph's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lrpgraph-speed"),
                   help="folder for the exported and converted models (default: a temporary folder)")
    p.add_argument("--out", help="also write the markdown tables to this file")
    return p.parse_args(argv)


def ort_session(model, threads, profile_prefix=None, spinning=True):
    options = ort.SessionOptions()  # defaults (graph optimisations: all), apart from the thread count
    options.intra_op_num_threads = threads
    if not spinning:  # idle worker threads would burn CPU time that --clock cpu counts
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def zennit_call(modified, x):
    """forward + backward through the composite-modified model; the heatmap of the top class."""
    x = x.clone().requires_grad_(True)
    y = modified(x)
    rows = torch.arange(len(y))
    seed = torch.zeros_like(y)
    c = y.argmax(1)
    seed[rows, c] = y[rows, c]
    (grad,) = torch.autograd.grad(y, x, seed.detach())
    return grad.numpy()


def interleaved(calls, warmup, repeats, pause, clock=time.perf_counter):
    """calls: {name: fn}. Warm each up, then time them in turn, repeats rounds: ({name: median s}, outputs)."""
    outputs = {}
    for name, fn in calls.items():
        for _ in range(warmup):
            outputs[name] = fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            time.sleep(pause)
            start = clock()
            outputs[name] = fn()
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}, outputs


SESSION_CHILD = """import statistics, sys, time
import numpy as np, onnxruntime as ort
path, x_path, threads, setting, warmup, repeats, clock, pause, out = sys.argv[1:10]
options = ort.SessionOptions()
options.intra_op_num_threads = int(threads)
if clock == "cpu":
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
options.enable_cpu_mem_arena = setting not in ("no-arena", "neither")
options.enable_mem_pattern = setting not in ("no-pattern", "neither")
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: np.load(x_path)}
tick = time.process_time if clock == "cpu" else time.perf_counter
for _ in range(int(warmup)):
    outputs = session.run(None, feed)
times = []
for _ in range(int(repeats)):
    time.sleep(float(pause))
    start = tick()
    outputs = session.run(None, feed)
    times.append(tick() - start)
relevance = dict(zip([o.name for o in session.get_outputs()], outputs)).get("relevance")
if out != "-" and relevance is not None:
    np.save(out, relevance)
# VmHWM: the peak of this process's own memory (ru_maxrss would include the parent's, copied at fork)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak / 1024, statistics.median(times))
"""
MEMORY_SETTINGS = ("default", "no-arena", "no-pattern", "neither")  # onnxruntime's CPU arena and memory pattern


def session_child(path, x, threads, setting="default", warmup=0, repeats=2, clock="cpu", pause=0.0, keep=False):
    """One ORT session alone in a fresh child process without torch: (peak resident MiB, median s per call of
    `repeats` calls after `warmup`, the relevance of the last call or None)."""
    with tempfile.TemporaryDirectory() as tmp:
        x_path, out = os.path.join(tmp, "x.npy"), os.path.join(tmp, "relevance.npy")
        np.save(x_path, x)
        run = subprocess.run([sys.executable, "-c", SESSION_CHILD, str(path), x_path, str(threads), setting,
                              str(warmup), str(repeats), clock, str(pause), out if keep else "-"],
                             capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"session child for {path} failed ({run.returncode}): {run.stderr.strip()[-500:]}")
        peak, seconds = run.stdout.split()[-2:]
        return float(peak), float(seconds), np.load(out) if keep and os.path.exists(out) else None


def peak_memory_mib(path, batch, threads, setting="default"):
    """(peak resident MiB, CPU s per call) of a child process that only loads one session and calls it twice."""
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    peak, seconds, _ = session_child(path, x, threads, setting)
    return peak, seconds


def models_for(name, args):
    """Paths of the exported model and its conversions (cached in args.cache)."""
    folder = Path(args.cache)
    folder.mkdir(parents=True, exist_ok=True)
    torch_model, canonizers = torchvision_model(name, seed=args.seed)
    for p in torch_model.parameters():
        p.requires_grad_(False)  # inference-time explanation: gradients w.r.t. the input only
    paths = {"forward": folder / f"{name}.onnx"}
    if not paths["forward"].exists():
        export(torch_model, torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed)),
               str(paths["forward"]))
    plain = onnx.load(str(paths["forward"]))
    for composite in COMPOSITES:
        start = time.perf_counter()
        converted = lrpgraph.convert(plain, composite=composite, target="top", epsilon=args.epsilon,
                                     stabilizer=args.epsilon)
        paths[composite] = folder / f"{name}.{composite}.lrp.onnx"
        onnx.save(converted, str(paths[composite]))
        print(f"{name}: {composite} converted in {time.perf_counter() - start:.1f} s", flush=True)
    return torch_model, canonizers, paths


def vm_peak_mib():
    """This process's own resident peak (VmHWM; ru_maxrss would include the parent's, copied at fork)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def heavy(name, batch):
    """Cases where one zennit call takes over about 10 s."""
    return batch * (15 if "vgg" in name or "densenet" in name else 3) > 100


def batch_input(batch, args):
    return torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed + batch))


def zennit_child(name, composite, batch, repeats, args):
    """In a fresh child process: one zennit composite alone, warmed up and timed.
    Returns (median s per call, the heatmap, peak resident MiB of the child, torch included)."""
    torch.set_num_threads(args.threads)
    x = batch_input(batch, args)
    model, canonizers = torchvision_model(name, seed=args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    zennit_composite(composite, args.epsilon, args.epsilon, canonizers=canonizers).register(model)
    ms, outputs = interleaved({composite: lambda: zennit_call(model, x)}, args.warmup, repeats, args.pause,
                              CLOCKS[args.clock])
    return ms[composite], outputs[composite], vm_peak_mib()


def isolated_row(name, batch, paths, args):
    """Every session of one case, each alone in its own child process, one after another."""
    repeats = args.heavy_repeats if not args.no_zennit and heavy(name, batch) else args.repeats
    row, heatmaps = dict(model=name, batch=batch, repeats=repeats), {}
    x = batch_input(batch, args).numpy()
    for key in [k for k in COLUMNS if not (args.no_zennit and k.startswith("zennit"))]:
        if key in paths:
            peak, seconds, heatmaps[key] = session_child(paths[key], x, args.threads, warmup=args.warmup,
                                                         repeats=repeats, clock=args.clock, pause=args.pause,
                                                         keep=True)
            row[f"mem {key}"] = peak
        else:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                seconds, heatmaps[key], peak = pool.submit(zennit_child, name, key[7:], batch, repeats,
                                                           args).result()
        row[key] = 1e3 * seconds
        print(f"    {key}: {row[key]:.1f} ms, peak {peak:.0f} MiB", flush=True)
    for c in COMPOSITES:
        if f"zennit {c}" in heatmaps:
            row[f"l1 {c}"] = l1(heatmaps[c], heatmaps[f"zennit {c}"])
    return row


def bench_model(name, args, rows):
    torch_model, canonizers, paths = models_for(name, args)
    sessions, modified = {}, {}
    for batch in args.batches:
        if args.isolate == "yes" or (args.isolate == "auto" and batch >= 16):
            start = time.perf_counter()
            rows.append(isolated_row(name, batch, paths, args))
            print(f"  batch {batch}: isolated sessions ({time.perf_counter() - start:.0f} s)", flush=True)
            continue
        if not sessions:
            sessions = {k: ort_session(str(p), args.threads, spinning=args.clock == "wall") for k, p in paths.items()}
            for c in () if args.no_zennit else COMPOSITES:  # one torch model copy per composite, hooks outside the timing
                modified[c] = copy.deepcopy(torch_model)
                zennit_composite(c, args.epsilon, args.epsilon, canonizers=canonizers).register(modified[c])
        x = batch_input(batch, args)
        calls = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x.numpy()})) for k, s in sessions.items()}
        calls.update({f"zennit {c}": (lambda m=m: zennit_call(m, x)) for c, m in modified.items()})
        repeats = args.repeats
        if modified and heavy(name, batch):
            repeats = args.heavy_repeats
        start = time.perf_counter()
        ms, outputs = interleaved(calls, args.warmup, repeats, args.pause, CLOCKS[args.clock])
        row = dict(model=name, batch=batch, repeats=repeats, **{k: 1e3 * v for k, v in ms.items()})
        for c in COMPOSITES:
            if f"zennit {c}" in outputs:
                names = [o.name for o in sessions[c].get_outputs()]
                row[f"l1 {c}"] = l1(dict(zip(names, outputs[c]))["relevance"], outputs[f"zennit {c}"])
        if not args.no_memory:
            for k in paths:
                row[f"mem {k}"] = peak_memory_mib(paths[k], batch, args.threads)[0]
        if args.memory_settings:
            print(f"  batch {batch}, epsilon-plus, peak MiB / CPU s per call by ORT setting: " + ", ".join(
                "{} {:.0f} / {:.2f}".format(m, *peak_memory_mib(paths["epsilon-plus"], batch, args.threads, m))
                for m in MEMORY_SETTINGS), flush=True)
        rows.append(row)
        print(f"  batch {batch}: " + ", ".join(f"{k} {row[k]:.1f} ms" for k in COLUMNS if k in row)
              + f" ({repeats} rounds, {time.perf_counter() - start:.0f} s)", flush=True)
    if args.profile:
        for batch in args.batches:
            print(profile_table(name, batch, paths, args))


def profile_table(name, batch, paths, args):
    """onnxruntime's profiler: kernel time by op type (share of the run, ms per call) for each session."""
    x = np.random.default_rng(args.seed).random((batch, 3, 224, 224), dtype=np.float32)
    per = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in ("forward",) + COMPOSITES:
            session = ort_session(str(paths[key]), args.threads, os.path.join(tmp, key))
            feed = {session.get_inputs()[0].name: x}
            session.run(None, feed)
            calls = max(args.repeats, 1)
            for _ in range(calls):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
            kernel = collections.Counter()
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    kernel[e["args"]["op_name"]] += e["dur"] / 1e3 / (calls + 1)
            per[key] = kernel
    ops = sorted(set().union(*per.values()), key=lambda op: -max(per[k][op] for k in per))
    lines = [f"\nkernel time by op type, {name} batch {batch} (share of all kernel time, ms per call)",
             "| op | " + " | ".join(per) + " |", "|---|" + "---:|" * len(per)]
    totals = {k: sum(v.values()) for k, v in per.items()}
    for op in ops[:14]:
        lines.append(f"| {op} | " + " | ".join(
            f"{100 * per[k][op] / totals[k]:.1f} % ({per[k][op]:.1f})" if per[k][op] else "" for k in per) + " |")
    lines.append("| all kernels | " + " | ".join(f"{totals[k]:.1f} ms" for k in per) + " |")
    return "\n".join(lines)


def ig_row(args):
    """IG with 32 steps in one call (for each --ig-chunks value: steps per cloned forward path) vs 32 separate
    calls of the gradient model and one call on a batch of 32, resnet18, batch 1: {name: ms}."""
    torch_model, _ = torchvision_model("resnet18", seed=args.seed)
    path = Path(args.cache) / "resnet18.onnx"
    if not path.exists():
        export(torch_model, torch.rand(2, 3, 224, 224), str(path))
    plain = onnx.load(str(path))
    spinning = args.clock == "wall"
    grad = ort_session(lrpgraph.convert(plain, method="gradient").SerializeToString(), args.threads, None, spinning)
    x = np.random.default_rng(args.seed).random((1, 3, 224, 224), dtype=np.float32)
    name = grad.get_inputs()[0].name
    calls = {"32 gradient calls": lambda: [grad.run(None, {name: x}) for _ in range(32)],
             "gradient, one batch of 32": lambda: grad.run(None, {name: np.repeat(x, 32, 0)})}
    for chunk in args.ig_chunks:
        ig = ort_session(lrpgraph.convert(plain, method="ig", steps=32, chunk=chunk).SerializeToString(),
                         args.threads, None, spinning)
        calls[f"IG, 32 steps, chunk {chunk}"] = lambda ig=ig: ig.run(None, {name: x})
    ms, _ = interleaved(calls, args.warmup, args.repeats, args.pause, CLOCKS[args.clock])
    return {k: 1e3 * v for k, v in ms.items()}


def markdown(rows, args):
    zennit = not args.no_zennit
    head = ["model", "batch", "rounds"] + [f"{c} ms" for c in COLUMNS if zennit or "zennit" not in c]
    head += ["eps / fwd", "plus / fwd"] + (["zennit eps / eps", "zennit plus / plus"] if zennit else [])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [r["model"], str(r["batch"]), str(r["repeats"])]
        cells += [f"{r[c]:.1f}" for c in COLUMNS if c in r]
        cells += [f"{r['epsilon'] / r['forward']:.2f}", f"{r['epsilon-plus'] / r['forward']:.2f}"]
        if zennit:
            cells += [f"{r['zennit epsilon'] / r['epsilon']:.2f}", f"{r['zennit epsilon-plus'] / r['epsilon-plus']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if not args.no_memory:
        lines += ["", "| model | batch | peak RSS forward MiB | epsilon MiB | epsilon-plus MiB | plus / forward |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['model']} | {r['batch']} | {r['mem forward']:.0f} | {r['mem epsilon']:.0f} "
                         f"| {r['mem epsilon-plus']:.0f} | {r['mem epsilon-plus'] / r['mem forward']:.2f} |")
    if zennit:
        lines += ["", "Heatmap L1 relative error vs zennit (last timed call): " + ", ".join(
            f"{r['model']} b{r['batch']} eps {r['l1 epsilon']:.1e} plus {r['l1 epsilon-plus']:.1e}" for r in rows)]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    header = (f"epsilon {args.epsilon:g}, target top; {args.clock} clock; threads: ORT intra-op {args.threads}, torch "
              f"{torch.get_num_threads()} (of {os.cpu_count()} CPUs); onnxruntime {ort.__version__} CPU, torch "
              f"{torch.__version__}; {platform.machine()}; load average at start {os.getloadavg()[0]:.1f}")
    print(header, flush=True)
    rows, start = [], time.perf_counter()
    for name in args.models:
        bench_model(name, args, rows)
    table = markdown(rows, args)
    if args.ig:
        ig = ig_row(args)
        table += "\n| resnet18, batch 1 | ms | / 32 gradient calls |\n|---|---:|---:|\n" + "".join(
            f"| {k} | {v:.1f} | {v / ig['32 gradient calls']:.3f} |\n" for k, v in ig.items())
    print("\n" + table)
    print(f"total {time.perf_counter() - start:.0f} s; load average at end {os.getloadavg()[0]:.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(header + "\n\n" + table)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
