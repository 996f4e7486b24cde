"""Keys and (de)serialisation of what lrpgraph records in a converted model's metadata_props.

A converted model carries:
  lrpgraph.version     the lrpgraph version that wrote it
  lrpgraph.config      JSON: {"composite", "target", "image_input", "logits", "outputs_probabilities",
                        "relevance_outputs": [names], "options": {...}, "rules": {node: rule}}
  lrpgraph.preprocess  JSON (optional): {"resize": [h, w] | int, "crop": [h, w] | int, "mean": [...],
                        "std": [...], "mode": "L" | "RGB", "channel_order": "RGB" | "BGR", "scale": 255.0}
  lrpgraph.labels      JSON (optional): list of class names
"""

import json

VERSION = "lrpgraph.version"
CONFIG = "lrpgraph.config"
PREPROCESS = "lrpgraph.preprocess"
LABELS = "lrpgraph.labels"


def read(model):
    """The lrpgraph metadata of an onnx.ModelProto as a dict {key: parsed value}; {} if not converted."""
    out = {}
    for prop in model.metadata_props:
        if prop.key == VERSION:
            out[VERSION] = prop.value
        elif prop.key.startswith("lrpgraph."):
            out[prop.key] = json.loads(prop.value)
    return out


def write(model, key, value):
    """Set one metadata property (JSON-encoded unless it is the version string), replacing an old one."""
    text = value if key == VERSION else json.dumps(value, sort_keys=True)
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = text
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, text
