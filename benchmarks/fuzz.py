"""Fuzz convert and explain with mutated real ONNX models (issue 25) and print the count of each outcome.

    PYTHONPATH=. python benchmarks/fuzz.py --cases 10000 --workers 2

The seeds are real exports: the bundled Fashion-MNIST CNN, a torchvision ResNet (BasicBlock, one block per
stage, 32 x 32) and a torchvision VisionTransformer (2 layers, 32 x 32), random weights, exported once into
--cache. Each case applies one to three mutations drawn from its number (drop a node, rewire an input, change
a dtype, a shape, an attribute, the op type, the opset, truncate the serialised file) and converts the result:

  refused             convert raised LrpgraphError with one line (the CLI's exit 2)
  converted           the converted model passes onnx.checker.check_model(full_check=True) and runs in
                      onnxruntime (zeros of its input shapes)
  converted-structural  the mutated source itself fails the full check (onnx's strict shape inference), so
                      convert holds its output to the structural check only (pipeline.check, as for pooling with
                      ceil_mode in onnx <= 1.23); it passes that and runs in onnxruntime
  source-fails-ort    converted, but neither the mutated source nor the converted model runs in onnxruntime
                      on zeros (e.g. a Reshape to a shape that does not fit): nothing lrpgraph could have known
                      without running it
Every converted model is then corrupted once more and opened with ExplainSession and explained:
  explain-refused / explain-ran       one LrpgraphError line / ran and returned heatmaps
Failures (must be zero): traceback:<type> (any other exception), bad-output:<why> (a converted model that fails
the checker, or fails in onnxruntime while its source runs), crash (the worker process died), hang (no
answer within --hang seconds). Cases run in worker processes so that crashes and hangs are counted.
tests/test_fuzz.py runs 100 cases through hypothesis with the same mutations.
"""

import argparse
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT16,
          TensorProto.UINT8, TensorProto.BOOL, TensorProto.STRING, 0, 999]
OPS = ["Relu", "Conv", "Gemm", "MatMul", "Add", "Reshape", "Softmax", "MaxPool", "Concat", "NoSuchOp", "If", "Loop"]
FAILURES = ("traceback", "bad-output", "crash", "hang")
LOCK = threading.Lock()  # the supervising threads share one Counter
FAILED = []  # the numbers of the cases that failed (rerun one: python benchmarks/fuzz.py --cases 1 --start N)


def seed_models(cache: str | os.PathLike) -> dict:
    """{name: serialised ONNX} of the seed models, exported into cache on first use (needs torch there)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    seeds = {"fashion_cnn": ROOT / "lrpgraph" / "data" / "demo" / "model.onnx",
             "resnet": cache / "resnet.onnx", "vit": cache / "vit.onnx"}
    if not seeds["resnet"].is_file() or not seeds["vit"].is_file():
        _export(seeds["resnet"], seeds["vit"])
    return {name: path.read_bytes() for name, path in seeds.items()}


def _export(resnet_path, vit_path):
    import torch
    from torchvision.models.resnet import BasicBlock, ResNet
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    nets = {resnet_path: (ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), 3),
            vit_path: (VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                         mlp_dim=64, num_classes=10), 3)}
    for path, (net, channels) in nets.items():
        net.eval()
        torch.onnx.export(net, (torch.rand(1, channels, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], dynamic_axes={"image": {0: "n"}})


class Draw:
    """The choices of one case: from a random.Random (the benchmark) or hypothesis' data.draw (the test)."""

    def __init__(self, integer):
        self.integer = integer  # integer(lo, hi) -> int in [lo, hi]

    def choice(self, items):
        return items[self.integer(0, len(items) - 1)]


def mutate(source: bytes, draw: Draw) -> tuple:
    """(mutated serialised model, [what was done]) after one to three mutations."""
    model = onnx.load_from_string(source)
    done = []
    for _ in range(draw.integer(1, 3)):
        kind = draw.choice(list(MUTATIONS))
        if kind == "truncate":
            data = model.SerializeToString()
            return data[: draw.integer(0, len(data) - 1)], done + ["truncate"]
        done.append(MUTATIONS[kind](model, draw) or kind)
    return model.SerializeToString(), done


def _drop_node(model, draw):
    del model.graph.node[draw.integer(0, len(model.graph.node) - 1)]


def _rewire(model, draw):
    node = draw.choice(list(model.graph.node))
    if node.input:
        names = [o for n in model.graph.node for o in n.output] + [i.name for i in model.graph.initializer]
        node.input[draw.integer(0, len(node.input) - 1)] = draw.choice(names + ["", "nobody"])


def _dtype(model, draw):
    targets = list(model.graph.initializer) + [v.type.tensor_type for v in model.graph.input]
    target = draw.choice(targets)
    if isinstance(target, TensorProto):
        target.data_type = draw.choice(DTYPES)
    else:
        target.elem_type = draw.choice(DTYPES)


def _shape(model, draw):
    if draw.integer(0, 1) and model.graph.initializer:
        tensor = draw.choice(list(model.graph.initializer))
        dims = list(tensor.dims)
        if dims and draw.integer(0, 1):
            dims[draw.integer(0, len(dims) - 1)] = draw.choice([0, 1, 2, 3, -1, 10**6, 2**40])
        else:
            dims = dims[:-1] if dims and draw.integer(0, 1) else dims + [draw.choice([1, 2, 7])]
        del tensor.dims[:]
        tensor.dims.extend(dims)
        return
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims):
        dim = dims[draw.integer(0, len(dims) - 1)]
        dim.dim_value = draw.choice([0, 1, 2, 5, 31, 10**9])


def _attribute(model, draw):
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return
    node = draw.choice(nodes)
    attr = draw.choice(list(node.attribute))
    choice = draw.integer(0, 3)
    if choice == 0:
        node.attribute.remove(attr)
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = draw.choice([-3, -1, 0, 1, 2, 7, 2**31])
    elif attr.type == onnx.AttributeProto.INTS and len(attr.ints):
        attr.ints[draw.integer(0, len(attr.ints) - 1)] = draw.choice([-2, 0, 1, 3, 100])
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = draw.choice([0.0, -1.0, float("nan"), float("inf"), 1e30])
    else:
        node.attribute.add(name=draw.choice(["axis", "bogus"]), type=onnx.AttributeProto.INT, i=draw.integer(-2, 5))


def _op_type(model, draw):
    draw.choice(list(model.graph.node)).op_type = draw.choice(OPS)


def _opset(model, draw):
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = draw.choice([1, 6, 9, 11, 13, 16, 17, 21, 23, 99])


MUTATIONS = {"drop node": _drop_node, "rewire": _rewire, "dtype": _dtype, "shape": _shape,
             "attribute": _attribute, "op type": _op_type, "opset": _opset, "truncate": None}


def _zeros_feeds(session):
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}.get(i.type, np.float32)
        feeds[i.name] = np.zeros(shape, dtype)
    return feeds


def _runs(data: bytes) -> bool:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        session.run(None, _zeros_feeds(session))
        return True
    except Exception:  # noqa: BLE001 (any onnxruntime failure means: does not run)
        return False


def convert_case(data: bytes) -> tuple:
    """(outcome, converted bytes or None) of converting one mutated model."""
    import lrpgraph
    from lrpgraph.errors import LrpgraphError

    try:
        converted = lrpgraph.convert(data)
    except LrpgraphError as error:
        return ("refused" if "\n" not in str(error) else "traceback:multi-line-error"), None
    except Exception as error:  # noqa: BLE001 (this is what the fuzzer looks for)
        return f"traceback:{type(error).__name__}", None
    strict = _passes(onnx.load_from_string(data), True)
    if not _passes(converted, strict):
        return f"bad-output:checker{'' if strict else '-structural'}", None
    out = converted.SerializeToString()
    if _runs(out):
        return ("converted" if strict else "converted-structural"), out
    return ("source-fails-ort", None) if not _runs(data) else ("bad-output:onnxruntime", None)


def _passes(model, full_check):
    try:
        onnx.checker.check_model(model, full_check=full_check)
        return True
    except Exception:  # noqa: BLE001 (ValidationError, InferenceError, ...)
        return False


def explain_case(converted: bytes, draw: Draw) -> str:
    """Corrupt a converted model once more and open it with ExplainSession: one line, or heatmaps."""
    from lrpgraph.errors import LrpgraphError
    from lrpgraph.runtime.session import ExplainSession

    data, _ = mutate(converted, draw)
    try:
        session = ExplainSession(data, provider="cpu")
        shape = [1] + [d or 1 for d in session.input_shape] if not session.tokens else [1, 4]
        session.explain(np.zeros(shape, np.float32))
        return "explain-ran"
    except LrpgraphError as error:
        return "explain-refused" if "\n" not in str(error) else "traceback:multi-line-error"
    except Exception as error:  # noqa: BLE001
        return f"traceback:{type(error).__name__}"


def run_case(seeds: dict, number: int) -> list:
    """The outcomes of case `number` (its choices come from random.Random(number))."""
    rng = random.Random(number)
    draw = Draw(rng.randint)
    name = draw.choice(sorted(seeds))
    data, _ = mutate(seeds[name], draw)
    outcome, converted = convert_case(data)
    return [outcome] + ([explain_case(converted, draw)] if converted is not None else [])


def _worker(cache, numbers):
    """Run the cases numbers (comma-separated), printing 'number START' and then 'number outcome ...' each."""
    import warnings

    warnings.simplefilter("ignore")
    seeds = seed_models(cache)
    crash, hang = (int(os.environ.get(f"LRPGRAPH_FUZZ_{k}", -1)) for k in ("CRASH", "HANG"))  # the supervisor's test
    for number in map(int, numbers.split(",")):
        print(number, "START", flush=True)
        if number == crash:
            os.abort()
        if number == hang:
            time.sleep(3600)
        print(number, *run_case(seeds, number), flush=True)


def _supervise(cache, numbers, hang_s, counts):
    """Run the cases in worker processes: a worker's death during a case is a crash, silence over hang_s a
    hang; either way a new worker goes on with the cases after it."""
    queue = list(numbers)
    while queue:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        # unbuffered: readline takes one line off the pipe, so select sees whatever is still unread
        proc = subprocess.Popen([sys.executable, __file__, "--worker", ",".join(map(str, queue)), "--cache", cache],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0, env=env)
        current, finished = None, set()
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], hang_s)
            line = proc.stdout.readline().decode() if ready else None
            if not line:
                if line is None:
                    proc.kill()
                proc.wait()
                if current is not None or line is None:  # a hang between cases is the next case's
                    with LOCK:
                        counts.update(["hang" if line is None else "crash"])
                        FAILED.append(queue[0] if current is None else current)
                    finished.add(queue[0] if current is None else current)
                break
            number, *outcomes = line.split()
            if outcomes == ["START"]:
                current = int(number)
                continue
            current = None
            finished.add(int(number))
            with LOCK:
                counts.update(outcomes)
                if any(o.split(":")[0] in FAILURES for o in outcomes):
                    FAILED.append(int(number))
        position = max((queue.index(n) for n in finished), default=-1)
        queue = queue[position + 1:]


def run(cases: int, start: int = 0, workers: int = 2, hang_s: float = 60.0, cache: str = "") -> Counter:
    """{outcome: count} of cases start..start+cases-1, run by `workers` supervised worker processes."""
    seed_models(cache)
    numbers = list(range(start, start + cases))
    counts = Counter()
    threads = [threading.Thread(target=_supervise, args=(cache, numbers[k::workers], hang_s, counts))
               for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--start", type=int, default=0, help="first case number")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hang", type=float, default=60.0, help="seconds without an answer that count as a hang")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "lrpgraph-fuzz"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.cache, args.worker)
    start = time.time()
    counts = run(args.cases, args.start, args.workers, args.hang, args.cache)
    print(f"{args.cases} cases (numbers {args.start}..{args.start + args.cases - 1}), {args.workers} workers, "
          f"{time.time() - start:.0f} s")
    for outcome, count in sorted(counts.items()):
        print(f"  {outcome:<28} {count}")
    failures = sum(c for o, c in counts.items() if o.split(":")[0] in FAILURES)
    print(f"failures (tracebacks, bad outputs, crashes, hangs): {failures}"
          + (f"; cases {sorted(FAILED)[:20]}" if FAILED else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
