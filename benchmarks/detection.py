"""Detection: what K heatmaps of ultralytics YOLOv8n cost in one call, against K separate calls and against
the plain forward.

YOLOv8n is built from its yaml (random weights, offline) and exported by ultralytics' own ONNX exporter at
a static size. It is converted with `--target index` and composite epsilon-plus-flat, explaining the detect
output [1, 84, A] when it converts, else its class scores [1, 80, A] (`--from` the head's Sigmoid). For
K = 1, 4, 16 one run times, one after another on the same sessions, the median wall time of
  forward   : onnxruntime on the exported model (CPU provider): the detect output only;
  one call  : the converted model with K index tuples (K heatmaps, the forward computed once);
  separate  : K calls of the converted model with one target each.
and prints the cost per heatmap (one call / K, separate / K) and the ratios. ORT gets --threads threads.

    python benchmarks/detection.py                      # 320 x 320, K = 1, 4, 16
    python benchmarks/detection.py --side 160 --repeats 3
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from machine import cpu_name

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))




def export(side):
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    folder, here = tempfile.mkdtemp(prefix="lrpgraph-yolo-"), os.getcwd()
    try:
        os.chdir(folder)
        path = YOLO("yolov8n.yaml").export(format="onnx", imgsz=side, verbose=False)
    finally:
        os.chdir(here)
    return os.path.join(folder, path)


def convert(path):
    """(converted model, the explained tensor's description)."""
    import lrpgraph
    from yolo_ref import class_scores

    try:
        return lrpgraph.convert(path, composite="epsilon-plus-flat", target="index"), "detect output [1, 84, A]"
    except lrpgraph.LrpgraphError:
        scores = class_scores(path)
        model = lrpgraph.convert(path, composite="epsilon-plus-flat", target="index", from_tensor=scores)
        return model, f"class scores [1, 80, A] (--from {scores})"


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import onnxruntime as ort

    from lrpgraph.metadata import Record

    path = export(args.side)
    model, what = convert(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = args.threads
    cpu = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(path, options, providers=cpu)
    lrp = ort.InferenceSession(model.SerializeToString(), options, providers=cpu)
    record_shape = Record.from_model(model).explained_shape
    x = np.random.default_rng(0).random((1, 3, args.side, args.side), dtype=np.float32)
    rng = np.random.default_rng(1)
    print(f"YOLOv8n {args.side}x{args.side}, random weights; explained: {what}; CPU: {cpu_name()}; "
          f"onnxruntime {ort.__version__}, {args.threads} thread(s); median of {args.repeats}")
    simplified = sum(n.op_type == "Div" and n.name.endswith("/ratio") for n in model.graph.node)
    print(f"divisions simplify.denominators rewrote in the K-target walk: {simplified} (SiLU activations have no "
          "rewrite; a ReLU network's divisions behind its ReLUs are rewritten)")
    print("| K | forward (ms) | one call (ms) | per heatmap, one call (ms) | per heatmap, separate calls (ms) "
          "| separate / one call | per heatmap / forward |")
    print("|---|---|---|---|---|---|---|")
    for k in [int(v) for v in args.ks.split(",")]:
        targets = np.stack([rng.integers(0, d, (1, k)) for d in record_shape], axis=-1).astype(np.int64)
        one = {"images": x, "target": targets}
        alone = [{"images": x, "target": np.ascontiguousarray(targets[:, i:i + 1])} for i in range(k)]
        lrp.run(["relevance"], one), plain.run(None, {"images": x})  # warm-up
        forward = timed(lambda: plain.run(None, {"images": x}), args.repeats)
        together = timed(lambda: lrp.run(["relevance"], one), args.repeats)
        separate = timed(lambda: [lrp.run(["relevance"], f) for f in alone], args.repeats)
        print(f"| {k} | {forward * 1e3:.1f} | {together * 1e3:.1f} | {together / k * 1e3:.1f} | "
              f"{separate / k * 1e3:.1f} | {separate / together:.2f} | {together / k / forward:.2f} |")


if __name__ == "__main__":
    main()
