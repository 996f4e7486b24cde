"""Images per second of bulk runs (lrpgraph.scale): the local engine and the Ray engine with 1 and 2 workers,
against plain ExplainSession calls, for the bundled demo model (28 x 28) and resnet18 at 224 x 224 (torchvision,
random weights), on generated PNG files. Prints a markdown table (docs/scale.md).

    python benchmarks/scale.py                                  # 2000 demo images, 64 resnet18 images
    python benchmarks/scale.py --demo-images 500 --resnet-images 32

Runs, each over the same files, batch size --batch, epsilon-plus:
  arrays           ExplainSession.explain on preloaded arrays (the model alone)
  plain loop       load_image + ExplainSession.explain per batch (what a user's own loop does)
  local            lrpgraph.scale.run, engine local (reading, Parquet rows, summary)
  ray, 1 worker    engine ray, one actor with 2 onnxruntime threads
  ray, 2 workers   engine ray, two actors with 1 thread each
The Ray runs use one local cluster (3 logical CPUs, 200 MB object store) started before them; its start is
printed apart. A Ray run's time includes starting its actors (each opens an ExplainSession), so the table also
gives the time until the first output rows reach the driver and the rate after them. "over plain loop" is
the run's seconds per image less the plain loop's, in ms.
"""

import argparse
import io
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import lrpgraph
from lrpgraph import scale
from lrpgraph.scale import output
from lrpgraph.runtime import ExplainSession
from lrpgraph.runtime.images import find_images, load_image

DEMO = Path(lrpgraph.__file__).parent / "data" / "demo" / "model.onnx"


def cpu_name() -> str:
    """lscpu's model name (the CPU the numbers come from)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, {os.cpu_count()} cores"


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


def engine_run(model: Path, folder: Path, out: Path, batch: int, engine: str, workers: int = 1,
               threads: int | None = None) -> tuple:
    """(seconds, seconds to the first output rows, rows in that first output) of one bulk run into out."""
    options = scale.JobOptions(batch_size=batch, threads=threads)
    arrivals, add = [], output.Output.add

    def timed_add(self, table):  # when each output table reaches the driver
        arrivals.append((time.perf_counter(), table.num_rows))
        return add(self, table)

    output.Output.add = timed_add
    try:
        started = time.perf_counter()
        summary = scale.run([folder], model, out, options, engine=engine, workers=workers, progress=False)
        seconds = time.perf_counter() - started
    finally:
        output.Output.add = add
    assert summary["errors"] == 0 and summary["duplicates"] == 0, summary
    return seconds, arrivals[0][0] - started, arrivals[0][1]


def measure(name: str, model: Path, folder: Path, work: Path, batch: int, ray_started: bool) -> list:
    """Table rows (model, run, images, seconds) of one model."""
    files = [f for f, _ in find_images([folder])]
    found = [(name, "arrays", len(files), (arrays_run(model, files, batch), None, None)),
             (name, "plain loop", len(files), (plain_run(model, files, batch), None, None)),
             (name, "local", len(files), engine_run(model, folder, work / f"{name}-local", batch, "local"))]
    if ray_started:
        found.append((name, "ray, 1 worker", len(files),
                      engine_run(model, folder, work / f"{name}-ray1", batch, "ray", 1, threads=2)))
        found.append((name, "ray, 2 workers", len(files),
                      engine_run(model, folder, work / f"{name}-ray2", batch, "ray", 2, threads=1)))
    return found


def table(found: list) -> str:
    """The markdown table. "after first rows": the images after the first output table over the time after it
    (the steady rate, without starting actors); the overheads are against the plain loop of the same model."""
    plain = {model: seconds / images for model, run, images, (seconds, _, _) in found if run == "plain loop"}
    lines = ["| model | run | images | seconds | first rows after (s) | images/s | images/s after first rows "
             "| over plain loop, all (ms/image) | over plain loop, after first rows (ms/image) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model, run, images, (seconds, first, first_rows) in found:
        cells = [model, run, str(images), f"{seconds:.2f}", "", f"{images / seconds:.1f}", "", "", ""]
        if first is not None:
            steady = (images - first_rows) / (seconds - first) if seconds > first else float("nan")
            cells[4], cells[6] = f"{first:.2f}", f"{steady:.1f}"
            cells[7] = f"{(seconds / images - plain[model]) * 1000:+.2f}"
            cells[8] = f"{(1 / steady - plain[model]) * 1000:+.2f}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=2000)
    parser.add_argument("--resnet-images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-ray", action="store_true", help="only the local runs")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; onnxruntime threads: all cores unless given")
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
                     for row in measure(name, model, folder, work, args.batch, ray is not None)]
        finally:
            if ray is not None:
                ray.shutdown()
    print(table(found))


if __name__ == "__main__":
    main()
