"""Acceptance (runtime 3): `lrpgraph demo` runs in a fresh virtual environment that has no torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_in_fresh_venv_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, lrpgraph = venv / "bin" / "python", venv / "bin" / "lrpgraph"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{ROOT}[cpu]"], capture_output=True,
                             text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    out = tmp_path / "demo"
    demo = subprocess.run([str(lrpgraph), "demo", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    images = sorted(p.stem for p in (ROOT / "lrpgraph" / "data" / "demo" / "images").glob("*.png"))
    assert len(images) >= 12
    for stem in images:
        assert (out / f"{stem}.relevance.png").stat().st_size > 0
        assert (out / f"{stem}.overlay.png").stat().st_size > 0
    page = (out / "index.html").read_text()
    assert all(f"{stem}.overlay.png" in page for stem in images)
    assert (out / "model.lrp.onnx").exists()
