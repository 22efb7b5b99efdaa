"""Per-seed test scores of several experiment runs side by side: how far seeds spread, and the paired gains.

Each ``--run LABEL=FILE`` names one ``results_long.csv`` written by ``benchmarks/experiment.py``
(for instance the same setting with two segmenter recipes). The figure has two panels: the
per-seed metric of the real-only variant (a) of every run, and the per-seed gain of each other
variant over (a) with its mean and 95 % paired-t interval.

    python benchmarks/plot_seed_spread.py --run "lr 1e-3=<ws1>/results/results_long.csv" \\
        --run "encoder lr x0.1 + EMA=<ws2>/results/results_long.csv" --out docs/figures/spread.png

A run may name its own evaluation set after ``@`` (``--run "shift=<ws3>/results/results_long.csv@target test"``);
the others use ``--eval-set``.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd


def per_seed(path: Path, metric: str, eval_set: str) -> pd.DataFrame:
    """``variant x seed`` table of one metric on one evaluation set."""
    results = pd.read_csv(path)
    need = {"variant", "seed", "eval_set", "metric", "value"}
    if not need <= set(results.columns):
        raise SystemExit(f"{path}: not a results_long.csv of benchmarks/experiment.py (needs columns {sorted(need)})")
    rows = results[(results["metric"] == metric) & (results["eval_set"] == eval_set) & results["class"].isna()]
    if rows.empty:
        raise SystemExit(f"{path}: no {metric!r} rows for eval set {eval_set!r}")
    return rows.pivot_table(index="variant", columns="seed", values="value") * 100


def parse_run(item: str, default_eval_set: str) -> tuple[str, Path, str]:
    """``LABEL=FILE`` or ``LABEL=FILE@EVAL_SET`` -> (label, file, eval set)."""
    label, sep, file = item.partition("=")
    if not sep or not label or not file:
        raise SystemExit(f"--run {item!r}: expected LABEL=FILE or LABEL=FILE@EVAL_SET")
    path, at, eval_set = file.rpartition("@")
    if at and eval_set and not Path(file).is_file():
        return label, Path(path), eval_set
    return label, Path(file), default_eval_set


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True,
                   help="LABEL=path/to/results_long.csv, optionally @EVAL_SET after it (repeatable)")
    p.add_argument("--metric", default="mIoU")
    p.add_argument("--eval-set", default="test", help="the evaluation set of runs that name none")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tisynth.segmentation.report import paired_interval

    runs = []
    eval_sets = set()
    for item in args.run:
        label, file, eval_set = parse_run(item, args.eval_set)
        eval_sets.add(eval_set)
        runs.append((label if eval_set == args.eval_set else f"{label} ({eval_set})",
                     per_seed(file, args.metric, eval_set)))
    axis_set = args.eval_set if eval_sets == {args.eval_set} else "evaluation-set"

    n_gains = sum(len([v for v in table.index if v != "real"]) for _, table in runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12 + max(0, n_gains - 4) * 0.9, 4.8),
                                      gridspec_kw={"width_ratios": [max(2, len(runs)), max(3, n_gains)]})
    for x, (label, table) in enumerate(runs):
        if "real" not in table.index:
            raise SystemExit(f"{label}: the run has no real-only variant (a)")
        vals = table.loc["real"].dropna()
        left.scatter(np.full(len(vals), x), vals, color="tab:blue", zorder=3)
        left.errorbar(x + 0.15, vals.mean(), yerr=vals.std(ddof=1), fmt="o", color="black", capsize=4)
        left.annotate(f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}", (x + 0.22, vals.mean()), fontsize=8, va="center")
    left.set_xticks(range(len(runs)), [textwrap.fill(label, 16) for label, _ in runs], fontsize=8)
    left.set_xlim(-0.5, len(runs) - 0.3)
    left.set_ylabel(f"{axis_set} {args.metric} (%)")
    left.set_title("(a) real only, one dot per seed")

    ticks = []
    tops: list[float] = []
    for label, table in runs:
        for variant in [v for v in table.index if v != "real"]:
            gains = (table.loc[variant] - table.loc["real"]).dropna()
            x = len(ticks)
            ticks.append(f"{variant}\n" + textwrap.fill(label, 16))
            right.scatter(np.full(len(gains), x), gains, color="tab:orange", zorder=3)
            if len(gains) >= 2:
                mean = float(gains.mean())
                lo, hi = paired_interval(gains.to_numpy())
                right.errorbar(x + 0.15, mean, yerr=[[mean - lo], [hi - mean]], fmt="o", color="black", capsize=4)
                # above the interval, centred on its column: long labels never run into the next column
                right.annotate(f"{mean:+.1f}\n[{lo:+.1f}, {hi:+.1f}]", (x + 0.15, hi), xytext=(0, 4),
                               textcoords="offset points", fontsize=7, ha="center", va="bottom")
                tops.append(hi)
    right.axhline(0, color="grey", lw=0.8)
    if tops:  # room for the labels above the highest interval
        low, high = right.get_ylim()
        right.set_ylim(low, max(high, max(tops)) + 0.15 * (high - low))
    right.set_xticks(range(len(ticks)), ticks, fontsize=8)
    right.set_xlim(-0.5, max(1, len(ticks)) - 0.2)
    right.set_ylabel(f"gain in {args.metric} over (a), points")
    right.set_title("paired gain per seed; mean and 95 % paired-t interval")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
