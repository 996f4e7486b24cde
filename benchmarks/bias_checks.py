"""The acceptance checks of the background-bias benchmarks (benchmarks/bias.py, benchmarks/bias_vit.py).

check(means, variants) takes the mean accuracies in % over the seeds, means[row][set] for row in plain, oracle
and the ISNet variants and set in biased, unbiased, confounded, and returns one (line, held) pair per check:

- plain: confounded at least 20 points below biased (it learned the shortcut, so the benchmark can see one);
- each variant: confounded within 5 points of its own unbiased accuracy (the artefact does not move it),
  at least 15 points above plain's confounded and above plain's unbiased accuracy (it learned more than the
  shortcut), and within 10 points of the oracle's unbiased accuracy (it behaves like a model trained without
  the artefact).

A model at chance level fails the last three (tests/test_bias_benchmark.py).
"""

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
