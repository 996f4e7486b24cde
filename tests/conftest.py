import os
import sys

import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))  # tests import their shared references (zennit_ref) by name
# ultralytics (the detector tests' exporter) must never pip-install anything or reach its hub while tests run
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_OFFLINE", "1")


PILLOW_OPEN = Image.open  # taken before any test module (and so ultralytics) is imported


@pytest.fixture(autouse=True)
def pil_open_as_pillow_has_it():
    """Importing ultralytics replaces PIL.Image.open process-wide (it retries unidentified images with a HEIF
    plugin it tries to install); every test sees Pillow's own open."""
    Image.open = PILLOW_OPEN
    yield
    Image.open = PILLOW_OPEN


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """pytest -n 2 runs one worker per core: a torch thread pool per worker only oversubscribes the cores
    (measured 10x slower on small models)."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
