"""The records of onnxruntime's contrib ops that onnxruntime-genai's model builder writes (docs/llm_genai.md):
GroupQueryAttention (rotary inside, causal mask, grouped key/value heads), RotaryEmbedding (a separate one),
SimplifiedLayerNormalization (RMSNorm), SkipSimplifiedLayerNormalization (the residual Add and an RMSNorm in one
node) and MatMulNBits (a linear layer with 4-bit block-quantized weights). Their emitters are in converters/contrib.py.
How onnx's checker and shape inference read graphs with these ops: patterns/contrib.py."""

import numpy as np
from onnx import NodeProto

from lrpgraph.catalog.ops import PRODUCT_RULES
from lrpgraph.catalog.records import OpRecord, record

MICROSOFT = ("com.microsoft",)
NORM_RULES = {"identity", "gradient", "pass"}

CONTRIB: list[OpRecord] = [
    record("GroupQueryAttention", "product", rules=PRODUCT_RULES, domains=MICROSOFT),
    record("RotaryEmbedding", "structure", keeps_nonneg=False, gate_path=False, domains=MICROSOFT),  # rotates q, k
    record("SimplifiedLayerNormalization", "normaliser", keys=("layernorm",), rules=NORM_RULES,
           domains=("", "ai.onnx", "com.microsoft")),
    record("SkipSimplifiedLayerNormalization", "normaliser", keys=("layernorm",), rules=NORM_RULES,
           domains=MICROSOFT),
]


def is_matmul_nbits(node: NodeProto) -> bool:
    return node.op_type == "MatMulNBits" and node.domain == "com.microsoft"


def dequantize_nbits(attrs: dict, packed: np.ndarray, scales: np.ndarray,
                     zero_points: "np.ndarray | None") -> np.ndarray:
    """MatMulNBits' weight as float32 [K, N] (the MatMul operand): B [N, blocks, blob] holds `bits`-bit values,
    low bits first; W[n, k] = (q - zero_point) * scale per block of block_size along K; the zero point is
    2^(bits-1) when absent, else uint8 packed like B (a float zero point is refused by the caller)."""
    k, n, bits, block = (int(attrs[a]) for a in ("K", "N", "bits", "block_size"))
    blocks = -(-k // block)
    raw = np.asarray(packed, np.uint8).reshape(n, -1)
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    q = ((raw[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(n, -1)[:, :blocks * block].astype(np.float32)
    scale = np.asarray(scales, np.float32).reshape(n, blocks)
    if zero_points is None:
        zero = np.full((n, blocks), 2 ** (bits - 1), np.float32)
    else:  # uint8, packed like B (the builder's asymmetric quantization)
        zraw = np.asarray(zero_points, np.uint8).reshape(n, -1)
        zero = ((zraw[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(n, -1)[:, :blocks].astype(np.float32)
    w = (q.reshape(n, blocks, block) - zero[:, :, None]) * scale[:, :, None]
    return np.ascontiguousarray(w.reshape(n, blocks * block)[:, :k].T)
