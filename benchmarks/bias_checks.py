"""The acceptance checks of the background-bias benchmarks (benchmarks/bias.py, benchmarks/bias_vit.py).

check(means, variants) takes the mean accuracies in % over the seeds, means[row][set] for row in plain, oracle
and the ISNet variants and set in biased, unbiased, confounded, and returns one (line, held) pair per check:

- plain: confounded at least 20 points below biased (it learned the shortcut, so the benchmark can see one);
- each variant: confounded within 5 points of its own unbiased accuracy (the artefact does not move it),
  at least 15 points above plain's confounded and above plain's unbiased accuracy (it learned more than the
  shortcut), and within 10 points of the oracle's unbiased accuracy (it behaves like a model trained without
  the artefact).

A model at chance level fails the last three (tests/test_bias_benchmark.py).

compare_ood(ood, variants, alternatives) states the Faster ISNet paper's claim on the out-of-distribution test set
(another hospital: lrpgraph.datasets.ood_set): each ISNet variant's OOD accuracy minus each alternative's, paired
by seed, is above 0 on the mean over the seeds; each line gives that mean, the standard deviation of the per-seed
differences and the differences themselves.
"""

import numpy as np

ISNET = ("original", "dual", "selective", "stochastic")  # the rows compare_ood counts as ISNet variants

PLAIN_GAP = 20.0  # plain: biased - confounded >= this
SAME = 5.0  # variant: |confounded - unbiased| <= this
ABOVE_PLAIN = 15.0  # variant: confounded - plain's confounded >= this
NEAR_ORACLE = 10.0  # variant: oracle's unbiased - confounded <= this


def _line(what: str, value: float, want: str, held: bool) -> tuple[str, bool]:
    return f"{what} = {value:.1f} points (want {want}): {'yes' if held else 'NO'}", held


def check(means: dict[str, dict[str, float]], variants: list[str]) -> list[tuple[str, bool]]:
    """One (printable line with the measured numbers, held?) per acceptance check, on mean accuracies in %."""
    plain, oracle = means["plain"], means["oracle"]
    gap = plain["biased"] - plain["confounded"]
    out = [_line(f"plain: biased {plain['biased']:.1f} - confounded {plain['confounded']:.1f}", gap,
                 f">= {PLAIN_GAP:g}", gap >= PLAIN_GAP)]
    for name in variants:
        r = means[name]
        conf = r["confounded"]
        same = abs(conf - r["unbiased"])
        out.append(_line(f"{name}: |confounded {conf:.1f} - unbiased {r['unbiased']:.1f}|", same, f"<= {SAME:g}",
                         same <= SAME))
        above = conf - plain["confounded"]
        out.append(_line(f"{name}: confounded {conf:.1f} - plain's confounded {plain['confounded']:.1f}", above,
                         f">= {ABOVE_PLAIN:g}", above >= ABOVE_PLAIN))
        over = conf - plain["unbiased"]
        out.append(_line(f"{name}: confounded {conf:.1f} - plain's unbiased {plain['unbiased']:.1f}", over, "> 0",
                         over > 0))
        short = oracle["unbiased"] - conf
        out.append(_line(f"{name}: oracle's unbiased {oracle['unbiased']:.1f} - confounded {conf:.1f}", short,
                         f"<= {NEAR_ORACLE:g}", short <= NEAR_ORACLE))
    return out


def compare_ood(ood: dict[str, dict[int, float]], variants: list[str], alternatives: list[str]) -> list[tuple[str, bool]]:
    """One (line, held?) per ISNet variant and alternative: OOD accuracy (ood[row][seed], %) of the variant minus the
    alternative's, paired by seed, mean over the seeds shared by both > 0."""
    out = []
    for name in variants:
        for other in alternatives:
            seeds = sorted(set(ood[name]) & set(ood[other]))
            diffs = np.array([ood[name][k] - ood[other][k] for k in seeds], np.float64)
            if not len(diffs):
                continue
            spread = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
            mean = float(diffs.mean())
            each = ", ".join(f"{d:+.1f}" for d in diffs)
            out.append(_line(f"{name} vs {other}: OOD accuracy {np.mean([ood[name][k] for k in seeds]):.1f} - "
                             f"{np.mean([ood[other][k] for k in seeds]):.1f}; per-seed differences {each} (std "
                             f"{spread:.1f}); mean", mean, "> 0", mean > 0))
    return out
