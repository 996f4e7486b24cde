import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import their shared references (zennit_ref) by name


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
