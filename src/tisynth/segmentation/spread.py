"""Where the seed-to-seed spread of a segmenter's reading comes from.

A reading of one test set by segmenters trained with several seeds spreads for two reasons:
the models differ (initialisation, crop stream, which checkpoint the selection picked), and
the test set is a finite sample of tiles (a rare class on few tiles makes its IoU, and so the
mIoU, jump with a handful of pixels). The functions here separate the two:

* :func:`tile_confusions`: one confusion matrix per test tile, so any subset of tiles can be
  scored again without running the model;
* :func:`bootstrap_miou`: the mIoU over tiles drawn with replacement, whose standard deviation
  is the tile-sampling error of *one* model's reading;
* :func:`spread_table`: per protocol, checkpoint rule and evaluation set, the mean reading, its
  standard deviation over seeds, and the mean tile-sampling error beside it.

If the seed spread is several times the tile-sampling error, and holds on a larger test set,
the models themselves differ and only a training change (augmentation, longer training,
weight averaging) cuts it; if the two are of one size, a larger test set does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tisynth.segmentation.metrics import confusion_matrix, metrics_from_confusion
from tisynth.segmentation.pairs import Pair
from tisynth.segmentation.report import paired_interval

SPREAD_COLUMNS = ("protocol", "checkpoint", "eval_set", "tiles", "seeds", "mIoU_mean", "mIoU_std_over_seeds",
                  "tile_sampling_se", "ratio")


def tile_confusions(segmenter, pairs: Sequence[Pair], batch_size: int | None = None) -> np.ndarray:
    """``N×K×K`` confusion matrices of ``segmenter`` on each of ``pairs`` (rows = truth)."""
    k = segmenter.num_classes
    out = [confusion_matrix(mask, logits.argmax(axis=0), k) for _, _, mask, logits in
           segmenter.iter_pairs(pairs, batch_size)]
    if not out:
        return np.zeros((0, k, k), dtype=np.int64)
    return np.stack(out).astype(np.int64)


def miou(confusion: np.ndarray) -> float:
    """mIoU of one ``K×K`` confusion matrix (classes absent from truth and prediction skipped)."""
    return metrics_from_confusion(np.asarray(confusion)).miou


def bootstrap_miou(confusions: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """mIoU of ``n`` resamples of the tiles (with replacement, as many as there are).

    Args:
        confusions: ``N×K×K`` per-tile confusion matrices (:func:`tile_confusions`).
        n: number of resamples.
        seed: seed of the resampling.
    """
    c = np.asarray(confusions, dtype=np.int64)
    if c.ndim != 3 or c.shape[1] != c.shape[2] or len(c) == 0:
        raise ValueError(f"bootstrap_miou: expected N×K×K confusions with N >= 1, got shape {c.shape}")
    if n < 2:
        raise ValueError(f"bootstrap_miou: n must be >= 2, got {n}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(c), np.full(len(c), 1.0 / len(c)), size=n)  # n × N tile multiplicities
    totals = np.einsum("bn,nij->bij", counts, c)
    return np.array([miou(t) for t in totals])


def spread_table(readings: pd.DataFrame) -> pd.DataFrame:
    """Seed spread beside tile-sampling error, per (protocol, checkpoint, eval_set).

    Args:
        readings: one row per model reading, columns ``protocol``, ``checkpoint``, ``eval_set``,
            ``seed``, ``tiles``, ``mIoU`` and ``boot_se`` (the reading's bootstrap standard error).

    Returns:
        :data:`SPREAD_COLUMNS`; ``ratio`` is the seed spread over the tile-sampling error.
    """
    need = {"protocol", "checkpoint", "eval_set", "seed", "tiles", "mIoU", "boot_se"}
    missing = need - set(readings.columns)
    if missing:
        raise ValueError(f"spread_table: readings lack column(s) {sorted(missing)}")
    rows = []
    for (protocol, checkpoint, eval_set), part in readings.groupby(["protocol", "checkpoint", "eval_set"], sort=False):
        std = float(part["mIoU"].std(ddof=1)) if len(part) > 1 else float("nan")
        se = float(part["boot_se"].mean())
        rows.append({"protocol": protocol, "checkpoint": checkpoint, "eval_set": eval_set,
                     "tiles": int(part["tiles"].max()), "seeds": int(part["seed"].nunique()),
                     "mIoU_mean": float(part["mIoU"].mean()), "mIoU_std_over_seeds": std,
                     "tile_sampling_se": se, "ratio": std / se if se > 0 else float("nan")})
    return pd.DataFrame(rows, columns=list(SPREAD_COLUMNS))


def _markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def spread_markdown(table: pd.DataFrame) -> str:
    """The spread table in percent points, as Markdown."""
    return _markdown(
        ["protocol", "checkpoint", "eval set (tiles)", "seeds", "mIoU mean", "std over seeds", "tile-sampling SE", "ratio"],
        [[r.protocol, r.checkpoint, f"{r.eval_set} ({r.tiles})", r.seeds, f"{100 * r.mIoU_mean:.2f}",
          f"{100 * r.mIoU_std_over_seeds:.2f}", f"{100 * r.tile_sampling_se:.2f}", f"{r.ratio:.1f}"]
         for r in table.itertuples(index=False)])


def protocol_differences(readings: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each protocol's reading minus ``baseline``'s, seed by seed, per checkpoint rule and eval set.

    Returns one row per (protocol, checkpoint, eval_set) with the seeds both have, the mean
    difference and its 95 % paired-t interval (:func:`tisynth.segmentation.report.paired_interval`).
    """
    rows = []
    for (checkpoint, eval_set), part in readings.groupby(["checkpoint", "eval_set"], sort=False):
        wide = part.pivot_table(index="seed", columns="protocol", values="mIoU")
        if baseline not in wide:
            continue
        for protocol in [p for p in dict.fromkeys(part["protocol"]) if p != baseline]:
            diff = (wide[protocol] - wide[baseline]).dropna()
            lo, hi = paired_interval(diff.to_numpy())
            rows.append({"protocol": protocol, "baseline": baseline, "checkpoint": checkpoint, "eval_set": eval_set,
                         "seeds": len(diff), "diff_mean": float(diff.mean()) if len(diff) else float("nan"),
                         "ci_low": lo, "ci_high": hi, "per_seed": [round(100 * v, 2) for v in diff]})
    return pd.DataFrame(rows, columns=["protocol", "baseline", "checkpoint", "eval_set", "seeds", "diff_mean",
                                       "ci_low", "ci_high", "per_seed"])


def differences_markdown(table: pd.DataFrame) -> str:
    """:func:`protocol_differences` in percent points, as Markdown."""
    return _markdown(
        ["protocol − baseline", "checkpoint", "eval set", "seeds", "mIoU change [95 % paired interval]", "per seed"],
        [[f"{r.protocol} − {r.baseline}", r.checkpoint, r.eval_set, r.seeds,
          f"{100 * r.diff_mean:+.2f} [{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]",
          ", ".join(f"{v:+.2f}" for v in r.per_seed)] for r in table.itertuples(index=False)])


def last_checkpoint(work_dir: str | Path) -> Path | None:
    """The ``iter_<n>.pth`` with the largest ``n`` in a segmenter's work folder, or None."""
    found = []
    for path in Path(work_dir).glob("iter_*.pth"):
        try:
            found.append((int(path.stem.split("_", 1)[1]), path))
        except ValueError:
            continue
    return max(found)[1] if found else None


def spread_figure(readings: pd.DataFrame, checkpoint: str = "selected") -> Figure:
    """mIoU per seed, one panel per evaluation set, one line per protocol (``checkpoint`` rule)."""
    part = readings[readings["checkpoint"] == checkpoint]
    sets = list(dict.fromkeys(part["eval_set"]))
    fig = Figure(figsize=(3.6 * max(1, len(sets)), 3.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(sets)), squeeze=False)[0]
    for ax, name in zip(axes, sets):
        sub = part[part["eval_set"] == name]
        for protocol, rows in sub.groupby("protocol", sort=False):
            rows = rows.sort_values("seed")
            ax.errorbar(rows["seed"], 100 * rows["mIoU"], yerr=100 * rows["boot_se"], marker="o", capsize=3,
                        label=f"{protocol} (std {100 * rows['mIoU'].std(ddof=1):.1f})")
        ax.set_title(f"{name} ({int(sub['tiles'].max())} tiles)")
        ax.set_xlabel("seed")
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Reading per seed, {checkpoint} checkpoint (bars: tile-bootstrap standard error)", fontsize=10)
    return fig
