"""Window arithmetic of Conv and pooling nodes, shared by the converters and the importer: explicit pads
from auto_pad (SAME_UPPER / SAME_LOWER / VALID), output sizes (with ceil mode), and the output padding
a transposed convolution needs to give back the input size."""

import math


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def explicit_pads(auto_pad: str | bytes, pads: list | None, spatial: list, kernel: list, strides: list, dilations: list) -> list:
    """Pads [begin..., end...] of a window op: `pads` as given when auto_pad is NOTSET (or empty), zeros for
    VALID, and for SAME_UPPER / SAME_LOWER the padding that gives ceil(size / stride) outputs (the odd
    unit at the end for SAME_UPPER, at the beginning for SAME_LOWER)."""
    auto_pad = _text(auto_pad)
    n = len(kernel)
    if auto_pad in ("NOTSET", ""):
        return list(pads) if pads is not None else [0] * 2 * n
    if auto_pad == "VALID":
        return [0] * 2 * n
    begin, end = [], []
    for i in range(n):
        out = math.ceil(spatial[i] / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
        small = total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    """Output length of a convolution along one axis."""
    return (size + begin + end - ((kernel - 1) * dilation + 1)) // stride + 1


def conv_output_padding(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    """The input positions past the last window (strides that do not divide): ConvTranspose's
    output_padding that restores the input length."""
    out = conv_output_size(size, kernel, stride, dilation, begin, end)
    return size - ((out - 1) * stride + (kernel - 1) * dilation + 1 - begin - end)


def pool_output_size(size: int, kernel: int, stride: int, begin: int, end: int, ceil: bool) -> int:
    """Output length of a pooling window along one axis (torch's rule: the last window must start
    inside the input or its left padding)."""
    span = size + begin + end - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + begin:
        out -= 1
    return out
