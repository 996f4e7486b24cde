"""The tables and the check of benchmarks/methods_table.py, from its rows (in memory or read back from its CSV).

Rows: one per seed, network, explainer and reduction, with the mean deletion / insertion AUC over the images.
Every table gives the mean ± std over the seeds (sample std); claim() states the guided IG paper's claim (Kwon et
al., ICPR 2020: guided IG deletes better than IG) as a check that can fail.
"""

import csv
from pathlib import Path

import numpy as np

REDUCTIONS = ("signed", "abs")


def spread(values, digits=3):
    """'mean ± std' over the seeds (sample std), or the one value."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def pick(rows, **match):
    """The rows whose fields equal `match`, in seed order."""
    return sorted((r for r in rows if all(r[k] == v for k, v in match.items())), key=lambda r: int(r["seed"]))


def pairs(rows, name, how):
    """(guided IG rows, IG rows) of one network and reduction, seed by seed (the seeds both have)."""
    gig = {r["seed"]: r for r in pick(rows, network=name, reduction=how, explainer="guided_ig")}
    ig = {r["seed"]: r for r in pick(rows, network=name, reduction=how, explainer="ig")}
    seeds = [s for s in gig if s in ig]
    return [gig[s] for s in seeds], [ig[s] for s in seeds]


def comparisons(rows):
    """Per network and reduction, over the seeds: guided IG and IG deletion, their difference by both
    implementations, the insertion difference, and Kendall's tau between the two implementations' deletion rankings
    of the explainers, per seed."""
    from scipy.stats import kendalltau

    lines = []
    for name in dict.fromkeys(r["network"] for r in rows):
        for how in REDUCTIONS:
            gig, ig = pairs(rows, name, how)
            if not gig:
                continue
            diff = {col: [g[col] - i[col] for g, i in zip(gig, ig)]
                    for col in ("deletion", "deletion_quantus", "insertion")}
            taus = []
            for seed in (g["seed"] for g in gig):
                mine = pick(rows, network=name, reduction=how, seed=seed)
                taus.append(kendalltau([r["deletion"] for r in mine], [r["deletion_quantus"] for r in mine])[0])
            wins = sum(d < 0 for d in diff["deletion"])
            lines.append(f"| {name} | {how} | {spread([g['deletion'] for g in gig])} | "
                         f"{spread([i['deletion'] for i in ig])} | {spread(diff['deletion'])} | "
                         f"{spread(diff['deletion_quantus'])} | {spread(diff['insertion'])} | {wins} of {len(gig)} | "
                         + ", ".join(f"{t:.2f}" for t in taus) + " |")
    return ["| network | reduction | deletion, guided IG | deletion, IG | guided IG - IG, deletion (lrpgraph; "
            "< 0: guided IG wins) | guided IG - IG, deletion (Quantus) | guided IG - IG, insertion (lrpgraph; > 0: "
            "guided IG wins) | seeds where guided IG deletes better (lrpgraph) | Kendall tau per seed, lrpgraph vs "
            "Quantus deletion ranking |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + lines


def claim(rows, need, how="abs", column="deletion"):
    """The guided IG paper's claim as a check that can fail: guided IG's mean deletion AUC over the seeds is below
    IG's on at least `need` networks. Returns (holds, margin, its std, {network: per-seed differences}, per-seed win
    counts); margin is minus the need-th smallest mean difference (guided IG - IG): > 0 where the claim holds."""
    diffs = {}
    for name in dict.fromkeys(r["network"] for r in rows):
        gig, ig = pairs(rows, name, how)
        if gig:
            diffs[name] = np.array([g[column] - i[column] for g, i in zip(gig, ig)], np.float64)
    need = min(need, len(diffs))
    ranked = sorted(diffs, key=lambda n: diffs[n].mean())
    decider = diffs[ranked[need - 1]]
    margin, std = -decider.mean(), decider.std(ddof=1) if len(decider) > 1 else 0.0
    seeds = min(len(d) for d in diffs.values())
    per_seed = [int(sum(d[s] < 0 for d in diffs.values())) for s in range(seeds)]
    return margin > 0, margin, std, diffs, per_seed


def claim_lines(rows, need):
    """The check stated in words: the paper's reduction (abs) by lrpgraph is the check; Quantus and the signed
    reduction are printed beside it."""
    lines = []
    for how, column, role in (("abs", "deletion", "the check"), ("abs", "deletion_quantus", "cross-check"),
                              ("signed", "deletion", "cross-check")):
        holds, margin, std, diffs, per_seed = claim(rows, need, how, column)
        wins = [n for n, d in diffs.items() if d.mean() < 0]
        need_here = min(need, len(diffs))
        lines.append(f"- {role} ({how} reduction, {'Quantus' if column.endswith('quantus') else 'lrpgraph'}): guided "
                     f"IG deletes better than IG on at least {need_here} of {len(diffs)} networks: **"
                     f"{'holds' if holds else 'does not hold'}**. Guided IG wins on {len(wins)} "
                     f"({', '.join(wins) or 'none'}); margin (IG - guided IG on the deciding network, the "
                     f"{need_here}. best) {margin:+.3f} ± {std:.3f} over the seeds; networks won per seed: "
                     + ", ".join(str(k) for k in per_seed) + ".")
    return lines


def tables(rows, networks):
    """One table per reduction: explainers down, networks across, cells deletion (lrpgraph, mean ± std over the
    seeds) / deletion (Quantus, mean) / insertion (lrpgraph, mean ± std)."""
    lines = []
    for how in REDUCTIONS:
        lines += ["", f"Reduction {how}: deletion (lrpgraph) / deletion (Quantus) / insertion (lrpgraph), AUC: mean over "
                  "the images, then mean ± std over the seeds:", "", "| explainer | " + " | ".join(networks) + " |",
                  "| --- |" + " --- |" * len(networks)]
        for key in dict.fromkeys(r["explainer"] for r in rows):
            cells = []
            for name in networks:
                mine = pick(rows, network=name, explainer=key, reduction=how)
                cells.append("-" if not mine else f"{spread([r['deletion'] for r in mine])} / "
                             f"{np.mean([r['deletion_quantus'] for r in mine]):.3f} / "
                             f"{spread([r['insertion'] for r in mine])}")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def network_notes(rows, networks, seconds):
    """Per network: test accuracy (mean ± std over the seeds), training accuracy per epoch (mean over the seeds),
    seconds."""
    notes = []
    for name in networks:
        mine = {r["seed"]: r for r in pick(rows, network=name)}.values()
        if not mine:
            continue
        epochs = np.mean([[float(a) for a in r["train_history"].split()] for r in mine], axis=0)
        notes.append(f"{name} {spread([r['test_accuracy'] for r in mine], 1)} % test, training by epoch "
                     + "/".join(f"{a:.0f}" for a in epochs) + " %" + (f", {seconds[name]:.0f} s" if name in seconds
                                                                     else ""))
    return notes


def write_csv(path, rows):
    """The rows as CSV (floats as Python writes them: --from-csv reads back the same numbers)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows({k: repr(float(v)) if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def read_csv(path):
    """Rows of a CSV this script wrote, numbers as floats (the seed as int)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("deletion", "insertion", "deletion_quantus", "deletion_sem", "test_accuracy", "train_accuracy"):
            r[key] = float(r[key])
        r["seed"] = int(r["seed"])
    return rows
