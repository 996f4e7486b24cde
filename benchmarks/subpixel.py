"""The adjoint of a stride-s Conv two ways in onnxruntime: ConvTranspose (what lrpgraph emits) against its
sub-pixel form, one stride-1 Conv whose C_in * s^2 output channels are the s^2 phases of the input grid
(kernel split into phase sub-kernels), then DepthToSpace (CRD) and a Slice that crops the padding.

First the identity is checked in float64 against torch autograd on random shapes (strides 2 and 3,
kernels 1-7, asymmetric pads, odd and even sizes); then, for the strided Convs of torchvision's resnet18
(and a 3x3 stride-2 stem), both ONNX graphs are timed side by side, interleaved, CPU time of the calls,
medians, one intra-op thread.

    python benchmarks/subpixel.py
    python benchmarks/subpixel.py --batches 1 8 --repeats 7
"""

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

# (output channels M, input channels C, kernel, stride, pad, input size): resnet18's strided Convs + a 3x3 stem
LAYERS = [(64, 3, 7, 2, 3, 224), (128, 64, 3, 2, 1, 56), (128, 64, 1, 2, 0, 56), (256, 128, 3, 2, 1, 28),
          (512, 256, 3, 2, 1, 14), (32, 3, 3, 2, 1, 224)]


def phase_kernel(w: torch.Tensor, s: int) -> torch.Tensor:
    """[M, C, kh, kw] -> [C * s * s, M, ceil(kh/s), ceil(kw/s)]: output channel (c, rh, rw) holds the taps
    k = s * j + r of phase r, reversed in j (a correlation), zero past the kernel's end."""
    m, c, kh, kw = w.shape
    ph, pw = -(-kh // s), -(-kw // s)
    w = F.pad(w, (0, pw * s - kw, 0, ph * s - kh)).reshape(m, c, ph, s, pw, s).flip(2, 4)
    return w.permute(1, 3, 5, 0, 2, 4).reshape(c * s * s, m, ph, pw)


def geometry(k: tuple, s: int, pads: list, size: tuple, out: tuple) -> tuple:
    """The sub-pixel Conv's pads [top, left, bottom, right] for a Conv with pads [hb, wb, he, we]."""
    ph, pw = -(-k[0] // s), -(-k[1] // s)
    rh = max(0, -(-(size[0] + pads[0]) // s) - out[0])
    rw = max(0, -(-(size[1] + pads[1]) // s) - out[1])
    return [ph - 1, pw - 1, rh, rw]


def subpixel_adjoint(g: torch.Tensor, w: torch.Tensor, s: int, pads: list, size: tuple) -> torch.Tensor:
    k = phase_kernel(w, s)
    p = geometry(w.shape[2:], s, pads, size, g.shape[2:])
    z = F.pixel_shuffle(F.conv2d(F.pad(g, (p[1], p[3], p[0], p[2])), k), s)  # pixel_shuffle = DepthToSpace CRD
    return z[:, :, pads[0]:pads[0] + size[0], pads[1]:pads[1] + size[1]]


def check_identity(seed: int = 0) -> float:
    rng, worst = np.random.default_rng(seed), 0.0
    for k in (1, 2, 3, 4, 5, 7):
        for s in (2, 3):
            for _ in range(6):
                h, w_ = (int(v) for v in rng.integers(k, 20, size=2))
                pads = [int(v) for v in rng.integers(0, k, size=4)]  # ONNX order: hb, wb, he, we
                m, c = (int(v) for v in rng.integers(1, 5, size=2))
                x = torch.randn(2, c, h, w_, dtype=torch.float64, requires_grad=True)
                w = torch.randn(m, c, k, k, dtype=torch.float64)
                y = F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), w, stride=s)
                g = torch.randn_like(y)
                (ref,) = torch.autograd.grad((y * g).sum(), x)
                worst = max(worst, (subpixel_adjoint(g, w, s, pads, (h, w_)) - ref).abs().max().item())
    return worst


def graphs(m: int, c: int, k: int, s: int, p: int, size: int) -> tuple:
    out = (size + 2 * p - k) // s + 1
    w = np.random.default_rng(1).standard_normal((m, c, k, k)).astype(np.float32)
    extra = size + 2 * p - k - (out - 1) * s
    g_in = [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["n", m, out, out])]
    y_out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    opset = [helper.make_opsetid("", 17)]
    convt = helper.make_graph([helper.make_node("ConvTranspose", ["g", "W"], ["y"], strides=[s, s], pads=[p] * 4,
                                                output_padding=[extra, extra])],
                              "convtranspose", g_in, y_out, [numpy_helper.from_array(w, "W")])
    kernel = phase_kernel(torch.from_numpy(w).double(), s).float().numpy()
    pads = geometry((k, k), s, [p] * 4, (size, size), (out, out))
    nodes = [helper.make_node("Conv", ["g", "K"], ["z"], pads=pads),
             helper.make_node("DepthToSpace", ["z"], ["d"], blocksize=s, mode="CRD"),
             helper.make_node("Slice", ["d", "starts", "ends", "axes"], ["y"])]
    consts = [numpy_helper.from_array(kernel, "K"), numpy_helper.from_array(np.array([p, p], np.int64), "starts"),
              numpy_helper.from_array(np.array([p + size] * 2, np.int64), "ends"),
              numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    sub = helper.make_graph(nodes, "subpixel", g_in, y_out, consts)
    return out, [helper.make_model(gr, opset_imports=opset) for gr in (convt, sub)]


def session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes (default: 1 8)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds, 3 calls each (default: 7)")
    args = p.parse_args(argv)
    print(f"sub-pixel identity, float64, worst abs error vs torch autograd: {check_identity():.1e}")
    print("\n| M -> C | kernel | stride | input px | batch | ConvTranspose ms | sub-pixel ms | ratio | max rel diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m, c, k, s, pad, size in LAYERS:
        out, models = graphs(m, c, k, s, pad, size)
        sessions = [session(model) for model in models]
        for n in args.batches:
            feed = {"g": np.random.default_rng(2).standard_normal((n, m, out, out)).astype(np.float32)}
            ys = [sess.run(None, feed)[0] for sess in sessions]
            diff = float(np.abs(ys[1] - ys[0]).max() / np.abs(ys[0]).max())
            times = [[], []]
            for _ in range(args.repeats):
                for t, sess in zip(times, sessions):
                    start = time.process_time()
                    for _ in range(3):
                        sess.run(None, feed)
                    t.append((time.process_time() - start) / 3 * 1e3)
            a, b = (float(np.median(t)) for t in times)
            print(f"| {m} -> {c} | {k}x{k} | {s} | {size} | {n} | {a:.2f} | {b:.2f} | {b / a:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
