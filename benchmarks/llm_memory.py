"""Peak resident memory and time of next-token relevance for long prompts (docs/llm.md, "Memory and speed").

Qwen2-0.5B's configuration (24 layers, hidden 896, 14 query and 2 key/value heads, MLP 4864, vocabulary 151936,
tied embeddings) with random weights in float32, one prompt of 128, 512 and 2048 random tokens, three ways:

  lrpgraph   the model exported with torch.onnx.export (dynamo) and converted with --composite attn-lrp (target
             top: the argmax token at the last position), one onnxruntime call returning logits and relevance,
             in a session opened as ExplainSession opens it (lrpgraph.ort.Runner)
  plain      the exported (unconverted) model, one onnxruntime forward with onnxruntime's default options

--extra measures the converted graph in a session with onnxruntime's default options instead (what
lrpgraph.ort.one_copy_of_weights turns off: a folded transposed copy of every weight, and prepacking).
  LXT        LXT 2.1's efficient mode (monkey_patch of transformers' Qwen2 classes), torch float32: one forward,
             one backward from the top logit at the last position, relevance = embeddings x gradient summed

Each measurement runs in its own subprocess (this script with --child): the peak resident set size is that
child's resource.getrusage(RUSAGE_SELF).ru_maxrss (it includes the weights: about 2 GB; the parent that starts
the children imports numpy only, as a child's maximum starts from its parent's at fork), the time is the one
call (forward, or forward and relevance) after the model is loaded, with --threads threads for torch and
onnxruntime alike. The goals: lrpgraph's peak memory at most LXT's, its time at most LXT's, and its time at
most 2.5 x the plain forward's. Prints the CPU (lscpu), the load average and the table.

    python benchmarks/llm_memory.py --threads 1                  # writes out/llm_memory/ (about 6 GB) first
    python benchmarks/llm_memory.py --config tiny --lengths 16,32  # the machinery on a tiny model, seconds
    python benchmarks/llm_memory.py --profile 256                 # where the converted graph's time goes
    python benchmarks/llm_memory.py --profile 256 --plain         # ... and the unconverted model's
    python benchmarks/llm_memory.py --touch 4                     # what writing 4 GB of new memory costs here
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CONFIGS = {  # Qwen2-0.5B's config.json, and a tiny one with the same structure for checking the script
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True),
}
KINDS = ("lrpgraph", "LXT", "plain")
EXTRA_KINDS = ("lrpgraph-ort-defaults",)  # the converted graph in a session with onnxruntime's default options
GOAL_FORWARD = 2.5  # lrpgraph's time at most this many times the plain forward's


def build(config: str) -> object:
    """Qwen2ForCausalLM of CONFIGS[config], random weights (seed 0), float32, eager attention, no cache."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**CONFIGS[config], attn_implementation="eager", use_cache=False)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def prepare(work: str, config: str) -> tuple:
    """(model.onnx, model.lrp.onnx) in work, exported and converted unless already there."""
    plain, converted = os.path.join(work, "model.onnx"), os.path.join(work, "model.lrp.onnx")
    if os.path.exists(converted):
        return plain, converted
    import torch

    import lrpgraph

    os.makedirs(work, exist_ok=True)
    model = build(config)

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "llm"))
    from llm_models import Logits  # the logits [N, L, V] of a causal LM, as the tests export it

    ids = torch.ones(1, 16, dtype=torch.int64)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("length", min=2, max=4096)}
    start = time.perf_counter()
    torch.onnx.export(Logits(model).eval(), (ids, torch.ones_like(ids)), plain, external_data=True, verbose=False,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamic_shapes=(dims, dims))
    del model
    print(f"exported {plain} in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    lrpgraph.save(lrpgraph.convert(plain, composite="attn-lrp"), converted, force=True)
    print(f"converted -> {converted} in {time.perf_counter() - start:.0f} s", flush=True)
    return plain, converted


def prompt(length: int, vocab: int) -> np.ndarray:
    """Random token ids [1, length] (seed 0)."""
    return np.random.default_rng(0).integers(0, vocab, (1, length)).astype(np.int64)


def child(kind: str, length: int, threads: int, work: str, config: str, calls: int = 1) -> dict:
    """One measurement in this process: {seconds, peak_mb, loaded_mb, load_seconds}; seconds: the last of `calls`
    calls (2: a warm call, after one that faulted in the memory-mapped weights and set up the kernels);
    load_seconds: opening the model (onnxruntime's session, LXT's patched torch model), before the calls."""
    ids = prompt(length, CONFIGS[config]["vocab_size"])
    start = time.perf_counter()
    if kind == "LXT":
        run = _lxt(config, ids, threads)
    elif kind == "lrpgraph":
        run = _converted(os.path.join(work, "model.lrp.onnx"), ids, threads)
    else:
        run = _ort(os.path.join(work, "model.onnx" if kind == "plain" else "model.lrp.onnx"), ids, threads)
    loaded, load_seconds = _rss_mb(), time.perf_counter() - start
    for _ in range(calls):
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "peak_mb": peak, "loaded_mb": loaded, "load_seconds": load_seconds}


def _ort(path, ids, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feeds)


def _converted(path, ids, threads):
    """The converted model as lrpgraph opens it (lrpgraph.ort.Runner: ExplainSession's session options)."""
    from lrpgraph.ort import Runner

    runner = Runner(path, ["CPUExecutionProvider"], threads)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return lambda: runner.run(list(runner.outputs), feeds)


def profile(path: str, length: int, threads: int, config: str, top: int = 8, plain: bool = False) -> None:
    """Where the converted graph's time goes: onnxruntime's profiler on one call, the share of each op type and the
    slowest nodes (a session opened as lrpgraph.ort.Runner opens it)."""
    import collections
    import tempfile

    import onnxruntime as ort

    from lrpgraph.ort import one_copy_of_weights, session_options

    options = session_options(threads)
    disabled = one_copy_of_weights(path, options)
    if plain:  # the unconverted model as the table's plain forward runs it: onnxruntime's default options
        options, disabled = ort.SessionOptions(), None
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    ids = prompt(length, CONFIGS[config]["vocab_size"])
    session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    with open(session.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        by_op[e["args"]["op_name"]] += e["dur"]
        by_node[e["name"][:-len("_kernel_time")]] += e["dur"]
    total = sum(by_op.values())
    relevance = sum(v for node, v in by_node.items() if node.startswith("lrp/"))
    print(f"{path}, {length} tokens: {total / 1e6:.1f} s in the kernels: the forward's nodes "
          f"{(total - relevance) / 1e6:.1f} s, the relevance pass's (lrp/...) {relevance / 1e6:.1f} s")
    print("  " + ", ".join(f"{op} {v / total:.1%}" for op, v in by_op.most_common(top)))
    for node, v in by_node.most_common(top):
        print(f"  {v / 1e6:7.2f} s  {node}")


def touch(gb: float) -> None:
    """Seconds to write gb GB of memory the process has not used before, twice (the second allocation may get
    pages the first one gave back): what a run pays for every byte its peak adds, besides its arithmetic."""
    for attempt in (1, 2):
        start = time.perf_counter()
        block = np.empty(int(gb * 2 ** 28), np.float32)
        block.fill(1.0)
        seconds = time.perf_counter() - start
        del block
        print(f"new memory, {gb:g} GB written, allocation {attempt}: {seconds:.2f} s ({seconds / gb:.2f} s per GB)")


def _lxt(config, ids, threads):
    import torch
    from lxt.efficient import monkey_patch
    from transformers.models.qwen2 import modeling_qwen2

    torch.set_num_threads(threads)
    monkey_patch(modeling_qwen2, verbose=False)
    model = build(config)
    for p in model.parameters():
        p.requires_grad_(False)

    def run():
        embeddings = model.get_input_embeddings()(torch.from_numpy(ids)).requires_grad_(True)
        logits = model(inputs_embeds=embeddings, use_cache=False).logits
        logits[0, -1].max().backward()
        return (embeddings * embeddings.grad).sum(-1)

    return run


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def measure(kind: str, length: int, args: argparse.Namespace) -> dict:
    """Run child() in a fresh interpreter; its JSON line. A child whose resident memory passes --max-mb is stopped
    (a shared machine must not run out of memory): {"error": "over N MB ..."}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--lengths", str(length), "--threads",
           str(args.threads), "--work", args.work, "--config", args.config, "--calls", str(args.calls)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if _child_rss_mb(proc.pid) > args.max_mb:
            proc.kill()
            proc.communicate()
            return {"error": f"over {args.max_mb} MB after {time.perf_counter() - start:.0f} s, stopped"}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def _child_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0


def cpu_line() -> str:
    """The CPU model (lscpu), the cores and the load average now."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    except OSError:
        model = "?"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"CPU: {model}, {os.cpu_count()} cores; load average {load}"


def table(results: dict, lengths: list) -> list:
    """Markdown rows: per length, each kind's peak MB and seconds, and the three goals (pass/fail)."""
    rows = ["| tokens | lrpgraph peak MB | LXT peak MB | plain peak MB | lrpgraph s | LXT s | plain s | "
            "memory <= LXT | time <= LXT | time <= 2.5 x plain |", "|" + " --- |" * 10]
    for n in lengths:
        r = {k: results[(k, n)] for k in KINDS}
        if any("error" in v for v in r.values()):
            cells = [r[k].get("error", f"{r[k].get('peak_mb', 0):.0f}") for k in KINDS]
            cells += [r[k].get("error", f"{r[k].get('seconds', 0):.2f}") for k in KINDS]
            rows.append(f"| {n} | " + " | ".join(cells) + " | - | - | - |")
            continue
        ratio = r["lrpgraph"]["seconds"] / r["plain"]["seconds"]
        goals = [r["lrpgraph"]["peak_mb"] <= r["LXT"]["peak_mb"], r["lrpgraph"]["seconds"] <= r["LXT"]["seconds"],
                 ratio <= GOAL_FORWARD]
        verdicts = ["pass" if g else "FAIL" for g in goals]
        verdicts[2] += f" ({ratio:.2f}x)"
        rows.append(f"| {n} | " + " | ".join(f"{r[k]['peak_mb']:.0f}" for k in KINDS) + " | "
                    + " | ".join(f"{r[k]['seconds']:.2f}" for k in KINDS) + " | " + " | ".join(verdicts) + " |")
    return rows


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="qwen2-0.5b")
    p.add_argument("--lengths", default="128,512,2048", help="prompt lengths, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    p.add_argument("--max-mb", type=float, default=float("inf"), help="stop a measurement whose resident memory "
                   "passes this (MB) and report it so")
    p.add_argument("--profile", type=int, default=None, metavar="LENGTH",
                   help="instead: profile the converted graph at this prompt length (op types, slowest nodes)")
    p.add_argument("--plain", action="store_true", help="with --profile: the unconverted model instead")
    p.add_argument("--touch", type=float, default=None, metavar="GB",
                   help="instead: the time to write this many GB of new memory (twice), and the CPU")
    p.add_argument("--work", default=None, help="folder for the ONNX files (default out/llm_memory/CONFIG)")
    p.add_argument("--calls", type=int, default=1, help="time the last of this many calls in each child (default 1: "
                   "the first call after loading; 2: a warm call)")
    p.add_argument("--child", choices=KINDS + EXTRA_KINDS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--extra", action="store_true", help="instead of the table: the converted graph with "
                   "onnxruntime's default session options (folded weight transposes, prepacking), per length")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.work = args.work or os.path.join("out", "llm_memory", args.config)
    lengths = [int(v) for v in args.lengths.split(",")]
    if args.child:
        print(json.dumps(child(args.child, lengths[0], args.threads, args.work, args.config, args.calls)))
        return 0
    if args.touch:
        print(cpu_line())
        touch(args.touch)
        return 0
    if args.profile:
        name = "model.onnx" if args.plain else "model.lrp.onnx"
        profile(os.path.join(args.work, name), args.profile, args.threads, args.config, plain=args.plain)
        return 0
    if args.prepare:
        prepare(args.work, args.config)
        return 0
    # export and conversion in a child too: a child's ru_maxrss starts from its parent's at fork, so this process
    # stays small (numpy only)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare", "--work", args.work, "--config",
                    args.config], check=True)
    print(cpu_line(), flush=True)
    if args.extra:
        for n in lengths:
            print(f"lrpgraph-ort-defaults {n} tokens: {measure('lrpgraph-ort-defaults', n, args)}", flush=True)
        return 0
    results = {}
    for n in lengths:
        for kind in KINDS:
            results[(kind, n)] = measure(kind, n, args)
            print(f"{kind} {n} tokens: {results[(kind, n)]}", flush=True)
    print(f"{args.config}, float32, {args.threads} thread(s); peak RSS of each child (weights included), time of "
          + ("the one call" if args.calls == 1 else f"the last of {args.calls} calls"))
    print("\n".join(table(results, lengths)))
    print("opening the model, then the call (seconds):")
    for n in lengths:
        cells = [f"{k} {r.get('load_seconds', 0):.2f} + {r.get('seconds', 0):.2f}" for k, r in
                 ((k, results[(k, n)]) for k in KINDS) if "error" not in r]
        print(f"  {n} tokens: " + ", ".join(cells))
    print(cpu_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
