"""Run a reference script in a child process (LXT patches transformers' classes globally, so each reference
runs apart from the tests): the job goes to the script as JSON, its arrays come back as an .npz."""

import json
import os
import subprocess
import sys


def run_child(script: str, job: dict) -> dict:
    """Run `python script JOB.json` with one thread; returns the arrays it saved at job['out']."""
    import numpy as np

    spec = job["out"] + ".json"
    with open(spec, "w") as f:
        json.dump(job, f)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, os.path.abspath(script), spec], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"LXT reference failed:\n{done.stderr[-3000:]}")
    return dict(np.load(job["out"]))
