"""Images per second of bulk runs (lrpgraph.scale): the local engine and the Ray engine with 1 and 2 workers,
against plain ExplainSession calls, for the bundled demo model (28 x 28) and resnet18 at 224 x 224 (torchvision,
random weights), on generated PNG files. Prints a markdown table (docs/scale.md).

    python benchmarks/scale.py                                  # 10000 demo images, 64 resnet18 images, best of 2
    python benchmarks/scale.py --demo-images 500 --resnet-images 32

Runs, each over the same files, batch size --batch, epsilon-plus:
  arrays           ExplainSession.explain on preloaded arrays (the model alone)
  plain loop       load_image + ExplainSession.explain per batch (what a user's own loop does)
  local            lrpgraph.scale.run, engine local (reading, Parquet rows, summary)
  ray, 1 worker    engine ray, one actor with 2 onnxruntime threads
  ray, 2 workers   engine ray, two actors with 1 thread each
The Ray runs use one local cluster (3 logical CPUs, 200 MB object store) started before them; its start is
printed apart. A run's time includes its fixed costs (opening sessions; for Ray, starting the actors, each of
which opens an ExplainSession), so each run is timed on the first half of the files and on all of them: the
difference gives the time per image, the rest is the fixed cost. "per image over plain loop" is a run's time
per image less the plain loop's, in ms.
"""

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import lrpgraph
from lrpgraph import scale
from lrpgraph.runtime import ExplainSession
from lrpgraph.runtime.images import find_images, load_image
from machine import cpu_name

DEMO = Path(lrpgraph.__file__).parent / "data" / "demo" / "model.onnx"




def resnet18(folder: Path) -> Path:
    """resnet18 (torchvision, random weights) exported with a dynamic batch and converted (epsilon-plus)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    program = torch.onnx.export(model, (torch.rand(2, 3, 224, 224),), None, external_data=False, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    buffer = io.BytesIO()
    program.save(buffer)
    path = folder / "resnet18.lrp.onnx"
    lrpgraph.save(lrpgraph.convert(buffer.getvalue()), str(path))
    return path


def write_images(folder: Path, count: int, size: int, mode: str, seed: int = 0) -> Path:
    """count smooth random PNGs (size x size, L or RGB) in folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    channels = 1 if mode == "L" else 3
    for i in range(count):
        coarse = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8)
        image = Image.fromarray(coarse[:, :, 0] if channels == 1 else coarse).resize((size, size), Image.BILINEAR)
        image.save(folder / f"img_{i:05d}.png")
    return folder


def arrays_run(model: Path, files: list, batch: int) -> float:
    """Seconds of ExplainSession.explain over preloaded arrays."""
    session = ExplainSession(str(model), batch_size=batch)
    x = np.stack([load_image(f, session.preprocess, session.input_shape) for f in files])
    session.explain(x[:batch])  # warm-up
    started = time.perf_counter()
    session.explain(x)
    return time.perf_counter() - started


def plain_run(model: Path, files: list, batch: int) -> float:
    """Seconds of load_image + ExplainSession.explain, batch by batch (session opened inside the time)."""
    started = time.perf_counter()
    session = ExplainSession(str(model), batch_size=batch)
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        session.explain(np.stack([load_image(f, session.preprocess, session.input_shape) for f in chunk]))
    return time.perf_counter() - started


def engine_run(model: Path, files: list, out: Path, batch: int, engine: str, workers: int = 1,
               threads: int | None = None) -> float:
    """Seconds of one bulk run over files into out."""
    options = scale.JobOptions(batch_size=batch, threads=threads)
    started = time.perf_counter()
    summary = scale.run(files, model, out, options, engine=engine, workers=workers, progress=False)
    seconds = time.perf_counter() - started
    assert summary["errors"] == 0 and summary["duplicates"] == 0 and summary["explained"] == len(files), summary
    return seconds


def runs(ray_started: bool) -> list:
    """(run name, function (model, files, out, batch) -> seconds) of every run."""
    found = [("arrays", lambda m, f, o, b: arrays_run(m, f, b)), ("plain loop", lambda m, f, o, b: plain_run(m, f, b)),
             ("local", lambda m, f, o, b: engine_run(m, f, o, b, "local"))]
    if ray_started:
        found += [("ray, 1 worker", lambda m, f, o, b: engine_run(m, f, o, b, "ray", 1, threads=2)),
                  ("ray, 2 workers", lambda m, f, o, b: engine_run(m, f, o, b, "ray", 2, threads=1))]
    return found


def measure(name: str, model: Path, folder: Path, work: Path, batch: int, ray_started: bool, repeats: int) -> list:
    """Table rows (model, run, n, seconds for n/2 images, seconds for n; each the least of repeats) of one model.
    Each run first goes once over one batch, untimed (imports, first session)."""
    files = [str(f) for f, _ in find_images([folder])]
    half = files[:len(files) // 2]
    found = []
    for k, (run, call) in enumerate(runs(ray_started)):
        call(model, files[:batch], work / f"{name}-{k}-warm", batch)
        seconds = [min(call(model, chosen, work / f"{name}-{k}-{len(chosen)}-{r}", batch) for r in range(repeats))
                   for chosen in (half, files)]
        found.append((name, run, len(files), *seconds))
    return found


def table(found: list) -> str:
    """The markdown table. Each run is timed on n/2 and n images: the difference over n/2 is the time per
    image, the rest the fixed cost (opening sessions, starting actors, writing the last part)."""
    lines = ["| model | run | seconds, n/2 images | seconds, n images | images/s, n | fixed cost (s) "
             "| per image (ms) | per image over plain loop (ms) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    slope = {(model, run): (full - half) / (n - n // 2) for model, run, n, half, full in found}
    for model, run, n, half, full in found:
        per_image = slope[(model, run)]
        over = "" if run in ("arrays", "plain loop") else f"{(per_image - slope[(model, 'plain loop')]) * 1000:+.2f}"
        lines.append(f"| {model} | {run} | {half:.2f} | {full:.2f} | {n / full:.1f} | {full - n * per_image:.2f} "
                     f"| {per_image * 1000:.2f} | {over} |")
    return "\n".join(lines)


def main() -> None:
    """Build the models and images, time every run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=10000)
    parser.add_argument("--resnet-images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="each time is the least of this many runs")
    parser.add_argument("--no-ray", action="store_true", help="only the local runs")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start (other processes share the cores)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = work / "demo.lrp.onnx"
        lrpgraph.save(lrpgraph.convert(str(DEMO)), str(demo))
        models = [("demo 28x28", demo, write_images(work / "demo", args.demo_images, 28, "L")),
                  ("resnet18 224x224", resnet18(work), write_images(work / "resnet", args.resnet_images, 224, "RGB"))]
        ray = None
        if not args.no_ray:
            import ray

            started = time.perf_counter()
            ray.init(num_cpus=3, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
            print(f"local Ray cluster started in {time.perf_counter() - started:.1f} s (not in the table)")
        try:
            found = [row for name, model, folder in models
                     for row in measure(name, model, folder, work, args.batch, ray is not None, args.repeats)]
        finally:
            if ray is not None:
                ray.shutdown()
    print(f"n = {args.demo_images} demo and {args.resnet_images} resnet18 images, batch {args.batch}; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(table(found))


if __name__ == "__main__":
    main()
