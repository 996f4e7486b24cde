"""The `lrpgraph` command: thin click wrappers over the library. Errors a user can meet print one line."""

import os
import sys
import textwrap
from collections import Counter
from collections.abc import Callable

import click

from lrpgraph.cli_checks import (IMAGE_SIZE, check_ignored, check_output_file, default_output, given,
                                 write_error)
from lrpgraph.cli_demo import read_labels
from lrpgraph.cli_detect import detect_options, run_boxes, run_decode, run_regions
from lrpgraph.cli_llm import llm_options, run_prompts
from lrpgraph.cli_methods import MethodCommand, method_options
from lrpgraph.cli_rules import COMPOSITE_NAMES, options_given, rule_options
from lrpgraph.errors import LrpgraphError
from lrpgraph.notice import PATENT_NOTICE
from lrpgraph.rules import listing
from lrpgraph.scale.cli import check_out, evaluate_bulk, explain_bulk, is_bulk, scale_options
from lrpgraph.version import __version__


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LrpgraphError as err:
            click.echo(f"lrpgraph: error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=Group, epilog="\b\n" + "\n".join(textwrap.wrap(PATENT_NOTICE, 78, break_on_hyphens=False)))
@click.version_option(__version__, prog_name="lrpgraph")
def main() -> None:
    """LRP heatmaps compiled into ONNX graphs: logits and relevance in one ONNX Runtime call."""


def preprocess_options(fn: Callable) -> Callable:
    """Image preprocessing: stored in the model by convert, applied (and overridden) by explain."""
    options = [
        click.option("--resize", type=int, multiple=True, help="resize: shorter side, or H W (repeat the flag)"),
        click.option("--crop", type=int, multiple=True, help="centre crop: side, or H W"),
        click.option("--mean", type=float, multiple=True, help="per-channel mean (repeat per channel)"),
        click.option("--std", type=float, multiple=True, help="per-channel std (repeat per channel)"),
        click.option("--mode", type=click.Choice(["L", "RGB"]), help="grayscale or RGB"),
        click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), help="channel order of the input"),
        click.option("--scale", type=float, help="divide pixel values by this (default 255)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _preprocess(resize, crop, mean, std, mode, channel_order, scale):
    given = dict(resize=resize, crop=crop, mean=mean, std=std, mode=mode, channel_order=channel_order, scale=scale)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in given.items() if v is not None and v != ()}


@main.command(cls=MethodCommand)  # --method and the method options: from the method units (cli_methods.py)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="default: MODEL with .lrp.onnx")
@click.option("--target", "-t", type=click.Choice(["top", "index", "seed", "all"]), default="top", show_default=True,
              help="what is explained: the predicted class, a class given at run time, a seed tensor, all logits")
@click.option("--from", "from_tensor", metavar="NAME", default=None, help="explain this tensor (a graph output or an "
              "inner tensor) with K targets per image; default: the logits, or the first output")
@rule_options
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="class names, one per line")
@preprocess_options
@click.option("--explain", "explain", multiple=True, metavar="NAME=SPEC",
              help="several heatmaps in one model: output relevance_NAME per composite or method (repeatable)")
@click.option("--force", is_flag=True, help="overwrite an existing output file")
@click.option("--webgpu", is_flag=True, help="exact alternatives to ops onnxruntime-web's WebGPU backend lacks")
@click.option("--format", "formats", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="ort: also write OUTPUT.ort and its required-operators config (onnxruntime mobile)")
@click.option("--optimize", is_flag=True, help="also write onnxruntime's optimised copy (OUTPUT with .ort.onnx, "
              "for the CPU provider) when it loads faster")
@IMAGE_SIZE
def convert(model: str, output: str | None, target: str, labels: str | None, resize: tuple, crop: tuple, mean: tuple,
            std: tuple, mode: str | None, channel_order: str | None, scale: float | None, force: bool,
            method: str | None, explain: tuple, webgpu: bool, formats: str, optimize: bool, image_size: tuple | None,
            from_tensor: str | None, **kw) -> None:
    """Rewrite MODEL so that it also outputs `relevance`, an LRP heatmap of its prediction."""
    from lrpgraph.pipeline import convert as convert_model
    from lrpgraph.files import optimized_path, save, uses_external_data, write_optimized

    specs = [e.partition("=")[2].strip() for e in explain] if explain else [method or kw["composite"]]
    check_ignored(given(), specs)
    output = output or default_output(model)
    check_output_file(output, "-o", source=model)
    from lrpgraph.mobile import ort_paths, save_ort

    for path in [output] + (list(map(str, ort_paths(output))) if formats == "ort" else []) + \
            ([optimized_path(output)] if optimize else []):
        if os.path.exists(path) and not force:
            raise LrpgraphError(f"{path} exists; pass --force to overwrite it or -o to write elsewhere")
    preprocess = _preprocess(resize, crop, mean, std, mode, channel_order, scale)
    names = read_labels(labels) if labels else None
    converted = convert_model(model, kw["composite"], target, kw["rules"], method=method, explain=explain,
                              options=options_given(kw), method_options=method_options(kw),
                              preprocess=preprocess or None, labels=names, webgpu=webgpu, image_size=image_size,
                              from_tensor=from_tensor)
    folder = os.path.dirname(os.path.abspath(output))
    created = not os.path.isdir(folder)
    try:
        save(converted, output, force=force, external=uses_external_data(model) or None)
    except OSError as error:
        raise write_error(error, "-o", output) from None
    if created:  # said, not done silently
        click.echo(f"created the folder {folder}")
    what = ", ".join(explain) if explain else method or kw["composite"]
    click.echo(f"wrote {output} ({what}, target {target}; {len(converted.graph.node)} nodes)")
    if formats == "ort":
        click.echo("wrote {} and {}".format(*save_ort(output, force=True)))
    if optimize:
        plain, fast, kept = write_optimized(output, force=force)
        click.echo(f"wrote {optimized_path(output)} (loads in {fast:.2f} s instead of {plain:.2f} s)" if kept else
                   f"kept no optimised copy: it loads in {fast:.2f} s, {output} in {plain:.2f} s")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@rule_options
@IMAGE_SIZE
def inspect(model: str, image_size: tuple | None, **kw) -> None:
    """Op coverage of MODEL and the rule the composite gives each node."""
    import onnx

    from lrpgraph import graph
    from lrpgraph.canonicalize import canonicalize
    from lrpgraph.catalog import RECORDS
    from lrpgraph.pipeline import converted_by, plan, read

    source = read(model, image_size)  # the first steps of convert: load, --image-size, a QDQ model's view
    proto = source.model
    if source.record is not None:
        from lrpgraph.inspect_record import lines

        click.echo(f"{model}: {converted_by(proto)}")
        click.echo("\n".join(lines(proto, source.record)))
        return
    counts = Counter(n.op_type for n in proto.graph.node)
    opset, stored = graph.opset_of(proto), graph.opset_of(onnx.load(model, load_external_data=False))
    click.echo(f"{model}: {len(proto.graph.node)} nodes, opset {opset}"
               + (f" (upgraded from {stored})" if stored != opset else ""))
    try:
        canon, error = canonicalize(source.view), None
    except LrpgraphError as err:
        canon, error = None, err
    click.echo("op coverage:" + ("" if error else "  (ok*: within a written-out LayerNorm, RMSNorm or GELU "
                                                    "explained as one unit, or off the explained path)"))
    for op, count in sorted(counts.items()):
        mark = "ok" if op in RECORDS else "--" if error else "ok*"
        click.echo(f"  {mark:<3} {op:<22} {count}")
    for miss in canon.near_misses if canon else getattr(error, "near_misses", []):
        click.echo(f"not fused: {miss}")  # a written-out block (a norm) whose pattern check failed, and why
    if error:
        raise error
    rule_plan = plan(canon, kw["composite"], kw["rules"], options_given(kw))
    click.echo(f"{'image' if canon.float_input else 'token'} input '{canon.input}' {canon.input_shape}; explained tensor '{canon.logits}'"
               + (" (before the output softmax)" if canon.outputs_probabilities else ""))
    click.echo("rules (--rule RULE:PARAMETERS, defaults, kinds it applies to):")
    for line in listing():
        click.echo(f"  {line}")
    click.echo("rule of each node:")
    for unit in canon.units:
        fused = f" (+{', '.join(unit.fused)})" if unit.fused else ""
        first = " [first layer]" if unit.first else ""
        click.echo(f"  {unit.name:<40} {unit.op:<18} {str(rule_plan[unit.name])}{first}{fused}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="heatmaps", show_default=True)
@click.option("--target", type=int, default=None, help="class to explain for every image (models converted with "
              "--target index or seed); default: the predicted class")
@click.option("--overlay", is_flag=True, help="also write <name>.overlay.png (heatmap over the image)")
@click.option("--cmap", default="bwr", show_default=True, help="bwr, seismic, coldnhot or gray")
@click.option("--format", "formats", default="png", show_default=True, help="png, npy or png,npy")
@click.option("--json", "json_out", is_flag=True, help="print one JSON line per image on stdout")
@click.option("--html", is_flag=True, help="write an index.html showing every image and its heatmap (with a copy "
              "of each preprocessed input, <name>.input.png, so the folder can be moved)")
@click.option("--png-scale", type=click.IntRange(1, 64), default=1, show_default=True,
              help="enlarge PNGs by this factor (nearest neighbour); .npy files keep the model's resolution")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False), default=None,
              help="text models: a tokenizer.json to show token strings in index.html")
@preprocess_options
@click.option("--masks", "masks_dir", type=click.Path(), default=None,
              help="bulk runs: masks with the images' relative names (background fraction, pointing game)")
@scale_options
@detect_options
@llm_options
def explain(model: str, inputs: tuple, out_dir: str, target: int | None, overlay: bool, cmap: str, formats: str,
            json_out: bool, html: bool, png_scale: int, batch_size: int, provider: str | None, threads: int | None,
            quiet: bool, vocab: str | None, resize: tuple, crop: tuple, mean: tuple, std: tuple, mode: str | None,
            channel_order: str | None, scale: float | None, masks_dir: str | None, decode: str | None, top: int,
            score: float, iou: float, regions: tuple, prompt: tuple, prompts_file: str | None, tokenizer: str | None,
            steps: int, **bulk: object) -> None:
    """Heatmaps for images (files or folders, walked recursively) with a converted MODEL; with --parquet or
    --engine ray, a bulk run over image folders, globs or Parquet files; --decode yolo and --region for
    detectors and segmenters; --prompt/--prompts for causal language models."""
    from lrpgraph.checks import check_preprocess
    from lrpgraph.runtime import describe
    from lrpgraph.runtime.explain import explain_paths, write_index_html
    from lrpgraph.runtime.render import COLORMAPS
    from lrpgraph.runtime.session import ExplainSession

    if cmap not in COLORMAPS:
        raise LrpgraphError(f"--cmap '{cmap}' is unknown; choose one of {', '.join(sorted(COLORMAPS))}")
    if prompt or prompts_file is not None:  # a causal LM: generate, explain the generated tokens (cli_llm.py)
        check_out(out_dir, False)
        return run_prompts(model, click.get_current_context().params)
    if not inputs:
        raise click.UsageError("give input files (images, token ids) or --prompt/--prompts")
    if check_out(out_dir, is_bulk(bulk, inputs) or masks_dir is not None):  # lrpgraph/scale/cli.py; exits
        explain_bulk(click.get_current_context().params, _preprocess(resize, crop, mean, std, mode, channel_order,
                                                                     scale))
    session = ExplainSession(model, provider=None if provider == "auto" else provider, threads=threads)
    if session.tokens:  # a text model: token ids from .npy / .jsonl files, one coloured-token page
        from lrpgraph.runtime.tokens import explain_token_files

        records = explain_token_files(session, inputs, out_dir, vocab=vocab, target=target)
        click.echo(f"{len(records)} sequences explained -> {os.path.join(out_dir, 'index.html')}", err=True)
        return
    overrides = _preprocess(resize, crop, mean, std, mode, channel_order, scale)
    if overrides:  # command-line flags override what convert stored
        session.preprocess = {**(session.preprocess or {}), **overrides}
        check_preprocess(session.preprocess, session.input_shape, model)
    click.echo(f"onnxruntime providers: {', '.join(session.providers)}", err=True)
    if decode:
        return run_decode(session, inputs, out_dir, top, score, iou, cmap)
    if regions:
        return run_regions(session, inputs, out_dir, regions, cmap)
    notes = [describe.explanations(session.record), describe.preprocessing(session.preprocess, session.input_shape)]
    try:
        summary = explain_paths(session, inputs, out_dir, target=target, batch_size=batch_size, formats=formats,
                                overlay=overlay, cmap=cmap, json_lines="-" if json_out else None,
                                progress=not quiet, png_scale=png_scale, inputs_png=html)
        if html:
            write_index_html(out_dir, summary["records"], cmap=cmap, truth=_folder_truth(summary, session.labels),
                             notes=notes)
    except OSError as error:
        raise write_error(error, "--out", out_dir) from None
    click.echo("\n".join(notes), err=True)  # what was shown and applied (also on the page)
    click.echo(f"{summary['explained']} of {summary['found']} images explained -> {out_dir}", err=True)
    if summary["failed"] or not summary["found"]:
        sys.exit(1)


def _folder_truth(summary, labels):
    """{file: its folder's name} where folders are named by class (ImageFolder layout), for the page."""
    names = set(labels) if isinstance(labels, list) else set()
    truth = {r["file"]: os.path.basename(os.path.dirname(r["file"])) for r in summary["records"]}
    return {k: v for k, v in truth.items() if v in names} or None


@main.command()
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="out/demo", show_default=True)
@click.option("--composite", "-c", type=click.Choice(COMPOSITE_NAMES), default="epsilon-plus", show_default=True)
@click.option("--web", is_flag=True, help="also write OUT/site: the demo in the browser (lrpgraph web)")
def demo(out_dir: str, composite: str, web: bool) -> None:
    """Convert the bundled Fashion-MNIST classifier and explain the bundled sample images (offline)."""
    from lrpgraph.cli_demo import run_demo

    run_demo(out_dir, composite, web)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="site", show_default=True)
@click.option("--samples", multiple=True, type=click.Path(exists=True), help="images (or folders) offered as samples")
@click.option("--force", is_flag=True, help="replace a site written before")
def web(model: str, out_dir: str, samples: tuple, force: bool) -> None:
    """A static page that explains images in the browser with onnxruntime-web (WebGPU or WASM)."""
    from lrpgraph.cli_demo import web_site

    web_site(model, out_dir, samples, force)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--masks", "masks_dir", type=click.Path(), default=None,
              help="folder of masks with the images' relative names (PNG, nonzero = foreground); "
                   "needed for background and pointing")
@click.option("--metrics", default="deletion,insertion", show_default=True,
              help="comma-separated: deletion, insertion, background, pointing, conservation")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="evaluation", show_default=True,
              help="metrics.csv and curves/<image>.curves.png go here")
@click.option("--step", type=int, default=None, help="pixels per deletion/insertion step [round(H*W/100)]")
@click.option("--fill", default="black", show_default=True,
              help="deletion fill: 'black' (a black pixel in the model's input space) or a number")
@click.option("--seed", type=int, default=0, show_default=True, help="noise_seed of SmoothGrad/SmoothTaylor outputs")
@click.option("--batch-size", type=int, default=16, show_default=True, help="images per heatmap run")
@click.option("--no-plots", is_flag=True, help="write no curve plots")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads")
@scale_options
@click.option("--boxes", "boxes_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a detector's boxes (JSON {image: [{box, class}]}): pointing game and positive relevance inside")
def evaluate(model: str, data: tuple, masks_dir: str | None, metrics: str, out_dir: str | None, step: int | None,
             fill: str, seed: int, batch_size: int, no_plots: bool, provider: str | None, threads: int | None,
             boxes_file: str | None, **bulk: object) -> None:
    """Deletion / insertion AUC, background fraction, pointing game and conservation of every heatmap output
    of a converted MODEL on images (files or folders); prints the mean per output. With --parquet or --engine
    ray: a bulk run, the metrics per image in OUT/rows (Parquet)."""
    from lrpgraph.runtime.evaluate import evaluate as evaluate_model, format_table, parse_metrics, progress_lines

    if boxes_file:
        return run_boxes(model, data, boxes_file, out_dir, seed, None if provider == "auto" else provider, threads)

    if check_out(out_dir, is_bulk(bulk, data)):  # lrpgraph/scale/cli.py; prints the table and exits
        evaluate_bulk(click.get_current_context().params)
    result = evaluate_model(model, list(data), metrics=parse_metrics(metrics), masks_dir=masks_dir, out_dir=out_dir,
                            step=step, fill=fill, batch_size=batch_size, seed=seed, plots=not no_plots,
                            provider=None if provider == "auto" else provider, threads=threads,
                            progress=progress_lines())
    click.echo(format_table(result["summary"], result["images"]))
    for note in result["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {os.path.join(out_dir, 'metrics.csv')} and {result['curves']} curve plot(s)", err=True)
    if result["failed"]:
        click.echo(f"{len(result['failed'])} of {result['images']} images skipped (unreadable)", err=True)
        sys.exit(1)


@main.command("make-dataset")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--classes", default="0,1,5,8", show_default=True, help="Fashion-MNIST labels, comma-separated")
@click.option("--size", type=int, default=36, show_default=True, help="canvas size in pixels (>= 36)")
@click.option("--train-per-class", type=click.IntRange(min=1), default=400, show_default=True)
@click.option("--val-per-class", type=click.IntRange(min=0), default=0, show_default=True,
              help="a biased validation set from the train split (disjoint from training)")
@click.option("--test-per-class", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--bias", type=float, default=1.0, show_default=True,
              help="probability that a training image carries its class's artefact")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ood", is_flag=True, help="also test-ood/: test garments from another hospital (other background "
              "textures, artefacts of another class at places never used in training)")
def make_dataset(root: str, classes: str, size: int, train_per_class: int, val_per_class: int, test_per_class: int,
                 bias: float, seed: int, ood: bool) -> None:
    """Write background-biased Fashion-MNIST to ROOT: train/, [val/,] test-biased/, test-unbiased/,
    test-confounded/, [test-ood/,] each with images/<class>/ and masks/<class>/ (the layout `lrpgraph train`
    reads)."""
    from lrpgraph.datasets import write_benchmark

    try:
        labels = tuple(int(c) for c in classes.split(","))
    except ValueError:
        raise click.BadParameter(f"{classes!r}: comma-separated integers", param_hint="--classes") from None
    try:
        folders = write_benchmark(root, train_per_class, test_per_class, val_per_class, labels, size, seed, bias,
                                  ood)
    except LrpgraphError as err:
        click.echo(f"lrpgraph: error: {err}", err=True)
        sys.exit(err.exit_code)
    for name, (images, masks) in folders.items():
        click.echo(f"{name}: {images} {masks}")


from lrpgraph.train.cli import train as _train  # noqa: E402  (imports torch only when it runs)

main.add_command(_train)

if __name__ == "__main__":
    main()
