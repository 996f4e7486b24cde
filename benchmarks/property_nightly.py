"""The property check of tests/test_property.py on many more random architectures (a nightly run).

Each example is the architecture that random.Random(seed) draws (tests/property_models.py), converted
with every LRP composite and compared with zennit in float64 under the test's fixed bound. Prints one
line per failure with the seed that reproduces it, then a table of the largest L1 per composite and
target mode; exits 1 on any failure (an error in export, conversion or comparison counts as one).

    python benchmarks/property_nightly.py --examples 2000           # about 1 s of CPU per example
    python benchmarks/property_nightly.py --reproduce 123456789     # one seed again, its architecture printed
    python benchmarks/property_nightly.py --examples 200 --epsilon 1e-6 --stabilizer 1e-6  # ill-conditioned
"""

import argparse
import functools
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared references

import torch  # noqa: E402

from property_models import random_architecture  # noqa: E402
from property_reference import Vacuous, errors  # noqa: E402
from test_property import BOUND, COMPOSITES, EPSILON, STABILIZER  # noqa: E402


def cached_exporter_registry():
    """As the test does: the ONNX exporter builds its torchlib registry once, not on every export."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return
    original = _registration.ONNXRegistry.__dict__.get("from_torchlib")
    if isinstance(original, classmethod):
        _registration.ONNXRegistry.from_torchlib = classmethod(functools.lru_cache(maxsize=None)(original.__func__))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="random architectures to check (default 2000)")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random); example i uses seed + i")
    parser.add_argument("--reproduce", type=int, default=None, metavar="SEED", help="check only this seed, verbosely")
    parser.add_argument("--epsilon", type=float, default=EPSILON, help=f"the epsilon rule's eps (tested: {EPSILON})")
    parser.add_argument("--stabilizer", type=float, default=STABILIZER,
                        help=f"the other rules' stabilizer (tested: {STABILIZER})")
    parser.add_argument("--bound", type=float, default=BOUND, help=f"relative L1 bound (tested: {BOUND:.0e})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cached_exporter_registry()
    if args.reproduce is not None:
        seeds = [args.reproduce]
    else:
        start = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
        seeds = [start + i for i in range(args.examples)]
        print(f"seeds {seeds[0]} .. {seeds[-1]}", flush=True)
    settings = [(name, args.epsilon) for name in COMPOSITES]
    worst = defaultdict(float)  # (composite, target) -> largest L1
    counts = defaultdict(int)  # target -> examples
    failures, vacuous = [], 0
    began = time.process_time()
    for seed in seeds:
        arch = random_architecture(seed)
        target = arch["target"]
        if args.reproduce is not None:
            print(arch)
        try:
            found = errors(arch, settings, args.stabilizer)
        except Vacuous:
            vacuous += 1
            continue
        except Exception as error:  # noqa: BLE001  reported with its seed, counted as a failure
            failures.append((seed, target, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"))
            print(f"FAIL seed {seed}: {failures[-1][2]}", flush=True)
            continue
        counts[target] += 1
        for (name, _), value in found.items():
            worst[name, target] = max(worst[name, target], value)
        bad = {name: value for (name, _), value in found.items() if not value <= args.bound}
        if bad or args.reproduce is not None:
            print({name: f"{value:.2e}" for (name, _), value in found.items()}, flush=True)
        if bad:
            failures.append((seed, target, ", ".join(f"{n} L1 {v:.2e}" for n, v in bad.items())))
            print(f"FAIL seed {seed} (target {target}): {failures[-1][2]}", flush=True)
    print(f"\n{len(seeds)} examples ({dict(counts)} by target, {vacuous} not counted: every heatmap zero) in {time.process_time() - began:.0f} s of CPU; "
          f"epsilon {args.epsilon:g}, stabilizer {args.stabilizer:g}, bound {args.bound:.0e}")
    targets = [t for t in ("top", "index", "seed", "all") if counts[t]]
    print(f"{'max L1':<28}" + "".join(f"{t:>10}" for t in targets))
    for name in COMPOSITES:
        print(f"{name:<28}" + "".join(f"{worst[name, t]:>10.1e}" for t in targets))
    print(f"\n{len(failures)} failure(s)")
    options = f" --epsilon {args.epsilon:g} --stabilizer {args.stabilizer:g}" \
        if (args.epsilon, args.stabilizer) != (EPSILON, STABILIZER) else ""
    for seed, target, what in failures:
        print(f"  seed {seed} (target {target}): {what}; "
              f"rerun: python benchmarks/property_nightly.py --reproduce {seed}{options}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
