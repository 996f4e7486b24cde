"""What a converted model does to an image and what its heatmaps are, in words: the lines `lrpgraph explain`
prints and its page shows, so that neither the preprocessing nor the composite is hidden in metadata."""

from typing import TYPE_CHECKING

from lrpgraph.rules.composites import COMPOSITES

if TYPE_CHECKING:
    from lrpgraph.metadata import Record


def preprocessing(preprocess: dict | None, input_shape: tuple | None) -> str:
    """One line: the steps runtime.images applies (resize, crop, scale, channel order, mean, std)."""
    pre = preprocess or {}
    height, width = (tuple(input_shape[1:3]) + (None, None))[:2] if input_shape else (None, None)
    resize, crop = pre.get("resize"), pre.get("crop")
    stored = "stored with the model" if pre else "none stored, the default"
    steps = []
    if resize is None and crop is None and height and width:
        steps.append(f"resized to cover {height}x{width} (aspect ratio kept), centre crop {height}x{width}")
    else:
        if resize is not None:
            one = isinstance(resize, (int, float)) or len(resize) == 1
            size = resize if isinstance(resize, (int, float)) else resize[0]
            steps.append(f"shorter side resized to {size}" if one else f"resized to {resize[0]}x{resize[1]}")
        if crop is not None:
            ch, cw = (crop, crop) if isinstance(crop, int) else (tuple(crop) * 2)[:2]
            steps.append(f"centre crop {ch}x{cw}")
    steps.append(f"divided by {float(pre.get('scale') or 255.0):g}")
    if str(pre.get("channel_order", "RGB")).upper() == "BGR":
        steps.append("channels as BGR")
    for key, verb in (("mean", "minus mean"), ("std", "divided by std")):
        if pre.get(key) is not None:
            steps.append(f"{verb} {pre[key]}")
    return f"preprocessing ({stored}; --resize/--crop/--scale/--mean/--std override it): " + ", ".join(steps)


def explanations(record: "Record") -> str:
    """One line: each heatmap output and the composite or method behind it, and the target mode."""
    parts = []
    for output, spec in record.explanations.items() or {record.relevance_outputs[0]: record.composite}.items():
        parts.append(f"{output} = {'LRP composite' if spec in COMPOSITES else 'method'} {spec}")
    return f"heatmaps: {'; '.join(parts)} (target {record.target})"
