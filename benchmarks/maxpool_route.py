"""MaxPool's winner-take-all route without the Indices output: measured against MaxPool(Indices) + ScatterElements.

onnxruntime's MaxPool with an Indices output runs outside its fast pooling kernels (the last column: the same
MaxPool without Indices, for scale). Two exact replacements that use the fast MaxPool or no
MaxPool at all, each routing every window's value to its first maximum in row-major order (as Indices do):

  separable  rows, then columns: a 1 x k MaxPool gives each row's maximum per window column; the window's first
             row holding the window maximum wins (Equal / And / Not / Where), then that row's first column
             holding it; the k shifted pieces are put back by Pad, Sum and an interleaving Reshape. Any k and
             stride, overlapping windows included (resnet's 3x3 stride 2).
  tiled      windows that tile the input (kernel = stride, no padding: VGG's 2x2 stride 2): Reshape and
             Transpose the windows onto a last axis, ArgMax (first maximum), Equal to 0..k*k-1, Where, and back.
  unpool     windows that do not overlap (stride >= kernel): MaxPool's Indices as before, but MaxUnpool instead of
             ScatterElements (each position lies in one window at most, so its write equals the scatter's sum).
             Not a route without Indices: it replaces only the scatter (onnxruntime's CUDA provider has no
             MaxUnpool kernel, so there it would run on the CPU).

Inputs are rounded to quarters so that many windows hold tied maxima; both routes must equal the reference
exactly (the printed max abs diff). Times are medians of the CPU time (one thread) or wall time (more threads).

    python benchmarks/maxpool_route.py                 # the cases below, one thread
    python benchmarks/maxpool_route.py --threads 2 --batch 8
"""

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

LOWEST = float(np.finfo(np.float32).min)


class Graph:
    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, value, dtype=np.int64):
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def model(self, out, shape, g_shape, out_shape=None):
        self.nodes.append(helper.make_node("Identity", [out], ["y"]))
        graph = helper.make_graph(self.nodes, "route", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                                                         helper.make_tensor_value_info("g", TensorProto.FLOAT, g_shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape if out_shape is None else out_shape)],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        onnx.checker.check_model(model)
        return model


def pool_only(shape, k, s, p):
    """The forward MaxPool alone (no Indices), for scale: what the fast pooling kernel costs."""
    g = Graph()
    return g, g.op("MaxPool", ["x"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)


def scatter(shape, k, s, p):
    g = Graph()
    g.nodes.append(helper.make_node("MaxPool", ["x"], ["m", "idx"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4))
    zeros = g.op("ConstantOfShape", [g.op("Shape", ["x"])], value=numpy_helper.from_array(np.zeros(1, np.float32)))
    flat = g.const([-1])
    out = g.op("ScatterElements", [g.op("Reshape", [zeros, flat]), g.op("Reshape", ["idx", flat]),
                                   g.op("Reshape", ["g", flat])], axis=0, reduction="add")
    return g, g.op("Reshape", [out, g.op("Shape", ["x"])])


def _route_axis(g, values, pooled, signal, axis, k, s, p, length, out_length, last):
    """Route signal (one value per window along axis) to the first position of each window equal to pooled."""
    total = (out_length - 1) * s + k
    pads = [0] * 8
    pads[axis], pads[4 + axis] = p, max(total - p - length, 0)
    padded = g.op("Pad", [values, g.const(pads), g.const(LOWEST, np.float32)])
    pieces = [g.op("Slice", [padded, g.const([d]), g.const([d + (out_length - 1) * s + 1]), g.const([axis]),
                             g.const([s])]) for d in range(k)]
    hits = [g.op("Equal", [piece, pooled]) for piece in pieces]
    wins, taken = [hits[0]], hits[0]
    for d in range(1, k):
        if d < k - 1:
            wins.append(g.op("And", [hits[d], g.op("Not", [taken])]))
            taken = g.op("Or", [taken, hits[d]])
        else:
            wins.append(g.op("Not", [taken]))
    zero = g.const(0.0, np.float32)
    routed = [g.op("Where", [w, signal, zero]) for w in wins]
    shifts = -(-k // s)
    phases = []
    for phase in range(s):
        parts = []
        for q in range(shifts):
            d = q * s + phase
            if d < k:
                shift = [0] * 8
                shift[axis], shift[4 + axis] = q, shifts - 1 - q
                parts.append(g.op("Pad", [routed[d], g.const(shift)]) if shifts > 1 else routed[d])
        total_phase = parts[0] if len(parts) == 1 else g.op("Sum", parts)
        phases.append(g.op("Unsqueeze", [total_phase, g.const([axis + 1])]))
    merged = g.op("Reshape", [g.op("Concat", phases, axis=axis + 1), g.const([0, 0, -1, last] if axis == 2 else [0, 0, 0, -1])])
    return g.op("Slice", [merged, g.const([p]), g.const([p + length]), g.const([axis])])


def separable(shape, k, s, p):
    _, _, h, w = shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    g = Graph()
    pooled = g.op("MaxPool", ["x"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
    rows = g.op("MaxPool", ["x"], kernel_shape=[1, k], strides=[1, s], pads=[0, p, 0, p])
    by_row = _route_axis(g, rows, pooled, "g", 2, k, s, p, h, ho, wo)
    return g, _route_axis(g, "x", rows, by_row, 3, k, s, p, w, wo, None)


def tiled(shape, k, s, p):
    assert k == s and p == 0
    _, _, h, w = shape
    ho, wo = h // k, w // k
    g = Graph()
    windows = g.op("Reshape", [g.op("Transpose", [g.op("Reshape", ["x", g.const([0, 0, ho, k, wo, k])])],
                                    perm=[0, 1, 2, 4, 3, 5]), g.const([0, 0, ho, wo, k * k])])
    first = g.op("Equal", [g.op("ArgMax", [windows], axis=-1, keepdims=1), g.const(np.arange(k * k))])
    spread = g.op("Where", [first, g.op("Unsqueeze", ["g", g.const([-1])]), g.const(0.0, np.float32)])
    spread = g.op("Transpose", [g.op("Reshape", [spread, g.const([0, 0, ho, wo, k, k])])], perm=[0, 1, 2, 4, 3, 5])
    return g, g.op("Reshape", [spread, g.const([0, 0, h, w])])


def unpool(shape, k, s, p):
    assert s >= k
    g = Graph()
    g.nodes.append(helper.make_node("MaxPool", ["x"], ["m", "idx"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4))
    return g, g.op("MaxUnpool", ["g", "idx", g.op("Shape", ["x"])], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)


def session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    clock = time.process_time if args.threads == 1 else time.perf_counter
    cases = [("resnet18 first pool", [64, 112, 112], 3, 2, 1, separable),
             ("vgg16 first pool", [64, 224, 224], 2, 2, 0, separable),
             ("vgg16 first pool", [64, 224, 224], 2, 2, 0, tiled),
             ("vgg16 fourth pool", [512, 28, 28], 2, 2, 0, tiled),
             ("vgg16 first pool", [64, 224, 224], 2, 2, 0, unpool),
             ("vgg16 fourth pool", [512, 28, 28], 2, 2, 0, unpool)]
    print(f"threads {args.threads}, batch {args.batch}, {'CPU' if args.threads == 1 else 'wall'} time, medians of "
          f"{args.repeats}; onnxruntime {ort.__version__}\n")
    print("| case | input | kernel / stride / pad | route | nodes | route ms | Indices + scatter ms | ratio | max abs diff "
          "| MaxPool alone ms |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, dims, k, s, p, make in cases:
        shape = [args.batch] + dims
        x = (np.round(np.maximum(rng.standard_normal(shape), 0) * 4) / 4).astype(np.float32)  # many ties
        out = [(d + 2 * p - k) // s + 1 for d in dims[1:]]
        signal = rng.standard_normal([args.batch, dims[0]] + out).astype(np.float32)
        models = [g.model(o, shape, [args.batch, dims[0]] + out) for g, o in (make(shape, k, s, p), scatter(shape, k, s, p))]
        alone = pool_only(shape, k, s, p)
        models.append(alone[0].model(alone[1], shape, [args.batch, dims[0]] + out, out_shape=[args.batch, dims[0]] + out))
        sessions = [session(m, args.threads) for m in models]
        feed = {"x": x, "g": signal}
        results = [sess.run(None, feed)[0] for sess in sessions]
        times = [[], [], []]
        for _ in range(args.repeats):
            for i, sess in enumerate(sessions):
                start = clock()
                sess.run(None, feed)
                times[i].append(clock() - start)
        mine, ref, pool = (1000 * statistics.median(t) for t in times)
        print(f"| {name} | {'x'.join(map(str, shape))} | {k} / {s} / {p} | {make.__name__} | {len(models[0].graph.node)} | "
              f"{mine:.2f} | {ref:.2f} | {mine / ref:.2f} | {np.abs(results[0] - results[1]).max():.1e} | {pool:.2f} |")


if __name__ == "__main__":
    main()
