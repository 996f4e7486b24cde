"""What a converted model carries, as one typed record (Record), and its layout in the model's metadata_props.

A converted model carries:
  lrpgraph.version     the lrpgraph version that wrote it
  lrpgraph.config      JSON: {"format", "composite", "explanations", "target", "image_input", "logits",
                        "logits_output", "outputs_probabilities", "relevance_outputs": [names], "options": {...},
                        "method_options": {...}, "rules": {node: rule}, "overrides", "gradient_seed", "webgpu",
                        and for token models "token_input", "vocab_size"; "image_size": [h, w] when convert fixed
                        the spatial sizes of a model exported with symbolic ones; "explained_shape": S when the
                        explained tensor "logits" [N, *S] takes K targets per sample (targets.explained_seed)
                        rather than a classifier's one class: `target` [N, K, len(S)], relevance [N, K, ...]}
  lrpgraph.preprocess  JSON (optional): {"resize": [h, w] | int, "crop": [h, w] | int, "mean": [...],
                        "std": [...], "mode": "L" | "RGB", "channel_order": "RGB" | "BGR", "scale": 255.0}
  lrpgraph.labels      JSON (optional): list of class names

"format" is the layout's version (FORMAT). lrpgraph 0.1.0 wrote no "format" (format 0): the same keys, some
possibly missing (explanations, logits_output, gradient_seed, ...); Record.from_props fills them as that
version's readers did. convert writes a Record (to_props); the runtime session, evaluate, the importer and
the trainer read one (Record.from_model / from_props) instead of the keys.
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from lrpgraph.errors import LrpgraphError
from lrpgraph.version import __version__

if TYPE_CHECKING:
    import onnx

VERSION = "lrpgraph.version"
CONFIG = "lrpgraph.config"
PREPROCESS = "lrpgraph.preprocess"
LABELS = "lrpgraph.labels"
FORMAT = 1  # the layout written now; 0: lrpgraph 0.1.0's (no "format" key)
RELEVANCE = "relevance"
# gradient-seeded composites of lrpgraph 0.1.0 models that lack "gradient_seed" (composites.GRADIENT_COMPOSITES then)
_OLD_GRADIENT = ("flex", "attn-lrp", "cp-lrp")


@dataclass
class Record:
    """Everything lrpgraph records about a converted model. Tensor names may be None on old models that
    did not record them; readers then take the graph's first input / output."""

    composite: str = "unknown"  # the first heatmap's composite or method
    target: str = "top"  # top | index | seed | all
    image_input: str | None = None
    logits: str | None = None  # the pre-softmax logits tensor
    logits_output: str | None = None  # the graph output holding the logits (or probabilities)
    outputs_probabilities: bool = False
    explanations: dict = field(default_factory=dict)  # {relevance output: composite or method}
    options: dict = field(default_factory=dict)  # the rule options given (rules.RuleOptions.to_dict)
    method_options: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)  # {node: rule text} of the first LRP heatmap
    overrides: list = field(default_factory=list)
    gradient_seed: dict = field(default_factory=dict)  # {relevance output: True if its seed is a gradient}
    webgpu: bool = False
    token_input: bool = False
    vocab_size: int | None = None
    image_size: list | None = None  # the spatial sizes convert fixed (image_size=...), None if the model had them
    explained_shape: list | None = None  # S of an explained tensor [N, *S] with K targets; None: a classifier's
    preprocess: dict | None = None
    labels: list | None = None
    version: str = __version__  # the lrpgraph version that wrote the model
    format: int = FORMAT

    @property
    def k_targets(self) -> bool:
        """True when the model takes K targets per sample (relevance [N, K, *input])."""
        return self.explained_shape is not None

    @property
    def relevance_outputs(self) -> list:
        """The heatmap outputs, in the model's order."""
        return list(self.explanations) or [RELEVANCE]

    def is_gradient(self, output: str) -> bool:
        """True when output's seed is a gradient (one-hot), False when it is relevance (logit * one-hot)."""
        return bool(self.gradient_seed.get(output, False))

    def check(self, where: str = "the model") -> None:
        """Refuse (one line) a record whose fields have the wrong types, whose layout is newer than this
        lrpgraph reads, or whose target mode is unknown: a tampered or damaged lrpgraph.config."""
        from lrpgraph.targets import TARGETS

        for item in fields(self):
            value, kinds = getattr(self, item.name), _TYPES.get(item.name)
            if kinds is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
                raise LrpgraphError(f"{where}: lrpgraph metadata field {item.name!r} is {type(value).__name__} "
                                    f"{str(value)[:60]!r}, not {' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}; "
                                    "the metadata was altered: convert the model again")
        bad = [k for k, v in self.explanations.items() if not isinstance(v, str)]
        bad += [v for v in self.labels or () if not isinstance(v, (str, int, float))]
        if bad:
            raise LrpgraphError(f"{where}: lrpgraph metadata holds {str(bad[0])[:60]!r} where a name belongs; "
                                "the metadata was altered: convert the model again")
        if self.format > FORMAT:
            raise LrpgraphError(f"{where}: lrpgraph metadata of format {self.format} (this lrpgraph reads up to "
                                f"{FORMAT}); upgrade lrpgraph or convert the model with this one")
        if self.target not in TARGETS:
            raise LrpgraphError(f"{where}: lrpgraph metadata names target mode {self.target[:40]!r}, not one of "
                                f"{', '.join(TARGETS)}; the metadata was altered: convert the model again")

    def check_inputs(self, inputs: list, where: str = "the model") -> None:
        """Refuse a target mode that does not match the graph's inputs (index: `target`, seed:
        `relevance_seed`, top and all: neither)."""
        from lrpgraph.targets import SEED_INPUT, TARGET_INPUT

        want = {"index": TARGET_INPUT, "seed": SEED_INPUT}.get(self.target)
        have = [n for n in (TARGET_INPUT, SEED_INPUT) if n in inputs]
        if want is None and have:
            raise LrpgraphError(f"{where}: converted with target {self.target!r} but takes a {have[0]!r} input; the "
                                "metadata does not match the graph: convert the model again")

    def config(self) -> dict:
        """The lrpgraph.config JSON object."""
        out = {k: v for k, v in asdict(self).items() if k not in ("preprocess", "labels", "version")}
        out["relevance_outputs"] = self.relevance_outputs
        if not self.token_input:
            del out["token_input"], out["vocab_size"]
        if self.image_size is None:
            del out["image_size"]
        if self.explained_shape is None:
            del out["explained_shape"]
        return out

    def to_props(self) -> dict:
        """{metadata_props key: text}, as they are written into the model."""
        props = {VERSION: self.version, CONFIG: json.dumps(self.config(), sort_keys=True)}
        if self.preprocess:
            props[PREPROCESS] = json.dumps(self.preprocess, sort_keys=True)
        if self.labels:
            props[LABELS] = json.dumps(list(self.labels), sort_keys=True)
        return props

    def write(self, model: "onnx.ModelProto") -> None:
        """Store the record in an onnx.ModelProto's metadata_props (replacing an older one)."""
        for key, text in self.to_props().items():
            _set(model, key, text)

    @classmethod
    def from_props(cls, props: Mapping, where: str = "the model") -> "Record | None":
        """The record of metadata props {key: text} (a ModelProto's, or onnxruntime's custom metadata map);
        None if they hold no lrpgraph.config (not a converted model)."""
        if CONFIG not in props:
            return None
        try:
            config = json.loads(props[CONFIG])
            preprocess = json.loads(props[PREPROCESS]) if props.get(PREPROCESS) else None
            labels = json.loads(props[LABELS]) if props.get(LABELS) else None
        except ValueError as error:
            raise LrpgraphError(f"{where}: lrpgraph metadata is not valid JSON ({error}); convert the model again") \
                from None
        if not isinstance(config, dict):
            raise LrpgraphError(f"{where}: lrpgraph.config is not a JSON object; convert the model again")
        _check_json(config, where)
        record = cls.from_config(config, preprocess, labels, props.get(VERSION, "unknown"))
        record.check(where)
        return record

    @classmethod
    def from_config(cls, config: dict, preprocess: dict | None = None, labels: list | None = None,
                    version: str = "unknown") -> "Record":
        """The record of an lrpgraph.config object, of this layout or of lrpgraph 0.1.0's."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known}
        composite = config.get("composite", "unknown")
        outputs = list(config.get("relevance_outputs") or [RELEVANCE])
        explanations = config.get("explanations") or {}  # JSON sorts its keys: the outputs' order is in the list
        values["explanations"] = {o: explanations.get(o, composite) for o in outputs}
        values["explanations"].update(explanations)
        if "gradient_seed" not in config:
            values["gradient_seed"] = {o: s in _OLD_GRADIENT for o, s in values["explanations"].items()}
        values.setdefault("format", 0)
        return cls(**values, preprocess=preprocess, labels=labels, version=version)

    @classmethod
    def from_model(cls, model: "onnx.ModelProto", where: str = "the model") -> "Record | None":
        """The record of an onnx.ModelProto; None if lrpgraph did not convert it."""
        return cls.from_props({p.key: p.value for p in model.metadata_props}, where)


_TYPES = {"composite": (str,), "target": (str,), "image_input": (str, type(None)), "logits": (str, type(None)),
          "logits_output": (str, type(None)), "outputs_probabilities": (bool,), "explanations": (dict,),
          "options": (dict,), "method_options": (dict,), "rules": (dict,), "overrides": (list,), "gradient_seed": (dict,),
          "webgpu": (bool,), "token_input": (bool,), "vocab_size": (int, type(None)), "image_size": (list, type(None)),
          "preprocess": (dict, type(None)), "labels": (list, type(None)), "version": (str,), "format": (int,)}


def _check_json(config, where):
    """The parts from_config reads before Record.check can: relevance_outputs a list of names."""
    outputs = config.get("relevance_outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)):
        raise LrpgraphError(f"{where}: lrpgraph metadata field 'relevance_outputs' is {str(outputs)[:60]!r}, not a list "
                            "of names; the metadata was altered: convert the model again")
    if not isinstance(config.get("explanations") or {}, dict):
        raise LrpgraphError(f"{where}: lrpgraph metadata field 'explanations' is not an object; the metadata was "
                            "altered: convert the model again")


def read(model: "onnx.ModelProto") -> dict:
    """The lrpgraph metadata of an onnx.ModelProto as a dict {key: parsed value}; {} if not converted."""
    out = {}
    for prop in model.metadata_props:
        if prop.key == VERSION:
            out[VERSION] = prop.value
        elif prop.key.startswith("lrpgraph."):
            out[prop.key] = json.loads(prop.value)
    return out


def write(model: "onnx.ModelProto", key: str, value: object) -> None:
    """Set one metadata property (JSON-encoded unless it is the version string), replacing an old one."""
    _set(model, key, value if key == VERSION else json.dumps(value, sort_keys=True))


def _set(model, key, text):
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = text
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, text


def strip(model: "onnx.ModelProto") -> None:
    """Remove every lrpgraph metadata property from an onnx.ModelProto (the others stay, in order)."""
    props = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("lrpgraph.")]
    del model.metadata_props[:]
    for key, value in props:
        model.metadata_props.add(key=key, value=value)
