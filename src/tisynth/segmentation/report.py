"""Tables and figures of the filter and segment pipelines.

Every function builds a :class:`matplotlib.figure.Figure` (no pyplot state, no display) or a
DataFrame / Markdown string from plain inputs; class names and colours come from the
:class:`~tisynth.classes.ClassRegistry`.

Result tables use the *long* format written by the segment pipeline: one row per
(``variant``, ``seed``, ``eval_set``, ``metric``, ``class``) with a ``value``; ``class`` is
empty for OA / mIoU / mAcc. Metric values are fractions; tables and figures show percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tisynth.classes import ClassRegistry

SUMMARY_METRICS = ("OA", "mIoU", "mAcc")
RESULT_COLUMNS = ("variant", "seed", "eval_set", "metric", "class", "value")


def _rgb(color: Sequence[int]) -> tuple[float, float, float]:
    return tuple(float(c) / 255.0 for c in color)  # type: ignore[return-value]


def _variant_order(variants: Sequence[str], baseline: str, augmented: str) -> list[str]:
    order = [v for v in (baseline, augmented) if v in variants]
    return order + sorted(v for v in variants if v not in order)


# ---------------------------------------------------------------------------- tables
# Two-sided 95 % quantiles of Student's t by degrees of freedom (linear in 1/df between entries).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (to about 3 decimals)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        lo, hi, q_lo, q_hi = keys[-1], float("inf"), _T975[keys[-1]], 1.960
    else:
        lo = max(k for k in keys if k < df)
        hi = min(k for k in keys if k > df)
        q_lo, q_hi = _T975[lo], _T975[hi]
    w = (1 / lo - 1 / df) / (1 / lo - (0 if hi == float("inf") else 1 / hi))
    return q_lo + w * (q_hi - q_lo)


def paired_interval(diff: Sequence[float]) -> tuple[float, float]:
    """95 % paired-t interval of the mean of per-seed differences (NaNs with fewer than 2 seeds)."""
    d = np.asarray(diff, dtype=float)
    if len(d) < 2:
        return float("nan"), float("nan")
    half = t_quantile_975(len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def comparison_table(results: pd.DataFrame, baseline: str = "baseline", augmented: str = "augmented") -> pd.DataFrame:
    """Mean and std over seeds of OA / mIoU / mAcc per eval set and variant, and the gain.

    Columns: ``eval_set, metric, <variant>_mean, <variant>_std`` for each variant,
    ``n_seeds`` and, when both are present, ``delta_mean`` / ``delta_std`` (augmented −
    baseline, computed per seed then averaged; seeds are paired) and ``delta_ci_low`` /
    ``delta_ci_high``, the 95 % paired-t interval of that mean over seeds.
    """
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"segment results: missing column(s) {missing}")
    summary = results[results["metric"].isin(SUMMARY_METRICS)]
    rows = []
    variants = _variant_order(sorted(summary["variant"].unique()), baseline, augmented)
    for eval_set in summary["eval_set"].drop_duplicates():
        for metric in SUMMARY_METRICS:
            part = summary[(summary["eval_set"] == eval_set) & (summary["metric"] == metric)]
            if part.empty:
                continue
            row: dict[str, object] = {"eval_set": eval_set, "metric": metric}
            per_variant = {v: part[part["variant"] == v].set_index("seed")["value"] for v in variants}
            for v in variants:
                vals = per_variant[v].astype(float)
                row[f"{v}_mean"] = float(vals.mean()) if len(vals) else np.nan
                row[f"{v}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0 if len(vals) else np.nan
            row["n_seeds"] = int(part["seed"].nunique())
            if baseline in per_variant and augmented in per_variant:
                diff = (per_variant[augmented] - per_variant[baseline]).dropna()
                row["delta_mean"] = float(diff.mean()) if len(diff) else np.nan
                row["delta_std"] = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0 if len(diff) else np.nan
                row["delta_ci_low"], row["delta_ci_high"] = paired_interval(diff.to_numpy())
            rows.append(row)
    return pd.DataFrame(rows)


def per_class_table(results: pd.DataFrame, metric: str = "IoU") -> pd.DataFrame:
    """Mean / std over seeds of a per-class metric: one row per (eval_set, class, variant)."""
    part = results[results["metric"] == metric]
    grouped = part.groupby(["eval_set", "class", "variant"], sort=False)["value"]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def _pct(mean: float, std: float, n: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def comparison_markdown(
    table: pd.DataFrame,
    per_class: pd.DataFrame | None = None,
    baseline: str = "baseline",
    augmented: str = "augmented",
    title: str = "Real-only vs real + synthetic segmentation",
    notes: Sequence[str] = (),
) -> str:
    """Markdown report: summary metrics (percent, mean ± std over seeds) and per-class IoU."""
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    variants = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean") and c != "delta_mean"]
    variants = _variant_order(variants, baseline, augmented)
    for eval_set in table["eval_set"].drop_duplicates() if len(table) else []:
        part = table[table["eval_set"] == eval_set]
        n = int(part["n_seeds"].max())
        lines += [f"## {eval_set} ({n} seed{'s' if n != 1 else ''}, percent)", ""]
        header = ["metric", *variants] + (["gain", "gain, 95 % interval"] if "delta_mean" in part.columns else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in part.iterrows():
            cells = [str(row["metric"])] + [_pct(row[f"{v}_mean"], row[f"{v}_std"], n) for v in variants]
            if "delta_mean" in part.columns:
                d = row["delta_mean"]
                cells.append("n/a" if not np.isfinite(d) else
                             (f"{100 * d:+.2f} ± {100 * row['delta_std']:.2f}" if n > 1 else f"{100 * d:+.2f}"))
                lo, hi = row.get("delta_ci_low", np.nan), row.get("delta_ci_high", np.nan)
                cells.append(f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "n/a (one seed)")
            lines.append("| " + " | ".join(cells) + " |")
        if "delta_mean" in part.columns and n > 1:
            lines += ["", "Gain: augmented − baseline per seed (seeds paired: same seed, crops and initialisation), "
                      "mean ± std; the interval is the 95 % paired-t interval of the mean gain over seeds."]
        lines.append("")
        if per_class is not None and len(per_class):
            pc = per_class[per_class["eval_set"] == eval_set]
            if len(pc):
                classes = list(pc["class"].drop_duplicates())
                lines += ["Per-class IoU:", "", "| class | " + " | ".join(variants) + " |",
                          "|" + "---|" * (len(variants) + 1)]
                for cls in classes:
                    cells = [str(cls)]
                    for v in variants:
                        r = pc[(pc["class"] == cls) & (pc["variant"] == v)]
                        cells.append(_pct(float(r["mean"].iloc[0]), float(r["std"].iloc[0]), int(r["count"].iloc[0]))
                                     if len(r) else "n/a")
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------- figures
def plot_per_class_iou(
    results: pd.DataFrame,
    registry: ClassRegistry,
    baseline: str = "baseline",
    augmented: str = "augmented",
    metric: str = "IoU",
) -> Figure:
    """Per-class IoU bars, baseline vs augmented, one panel per eval set (error bars = std over seeds).

    Bars take the class colour; the baseline bar is lighter and hatched.
    """
    pc = per_class_table(results, metric)
    eval_sets = list(pc["eval_set"].drop_duplicates()) or ["(none)"]
    names = registry.names
    fig = Figure(figsize=(max(6.0, 1.1 * len(names) + 2), 3.6 * len(eval_sets)), layout="constrained")
    axes = fig.subplots(len(eval_sets), 1, squeeze=False)[:, 0]
    variants = _variant_order(list(pc["variant"].drop_duplicates()), baseline, augmented)
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(names))
    for ax, eval_set in zip(axes, eval_sets):
        part = pc[pc["eval_set"] == eval_set]
        for j, variant in enumerate(variants):
            vals = part[part["variant"] == variant].set_index("class").reindex(names)
            heights = 100 * vals["mean"].to_numpy(dtype=float)
            errs = 100 * vals["std"].to_numpy(dtype=float)
            colors = [_rgb(c) for c in registry.palette]
            light = j == 0 and len(variants) > 1
            ax.bar(x + (j - (len(variants) - 1) / 2) * width, np.nan_to_num(heights), width,
                   yerr=np.nan_to_num(errs), color=colors, alpha=0.45 if light else 0.95,
                   edgecolor="black", linewidth=0.6, hatch="//" if light else None, capsize=2)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{eval_set}: per-class {metric}")
        ax.grid(axis="y", alpha=0.3)
        handles = [Patch(facecolor="0.6", alpha=0.45 if (j == 0 and len(variants) > 1) else 0.95,
                         hatch="//" if (j == 0 and len(variants) > 1) else None, edgecolor="black", label=v)
                   for j, v in enumerate(variants)]
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    return fig


def confusion_from_long(confusions: pd.DataFrame, num_classes: int, **selector: object) -> np.ndarray:
    """Sum a long confusion table (``truth, prediction, pixels`` + selector columns) into K×K."""
    part = confusions
    for key, value in selector.items():
        part = part[part[key] == value]
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (part["truth"].to_numpy(dtype=int), part["prediction"].to_numpy(dtype=int)),
              part["pixels"].to_numpy(dtype=np.int64))
    return m


def plot_confusion_matrices(
    matrices: Mapping[str, np.ndarray], registry: ClassRegistry, normalize: bool = True, columns: int = 2
) -> Figure:
    """Row-normalised confusion matrices (truth rows, prediction columns), one panel each."""
    names = registry.names
    n = max(1, len(matrices))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    side = 0.55 * len(names) + 2.2
    fig = Figure(figsize=(side * cols, side * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(matrices):]:
        ax.set_axis_off()
    for ax, (title, m) in zip(axes, matrices.items()):
        m = np.asarray(m, dtype=np.float64)
        shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
        im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
        for i in range(len(names)):
            for j in range(len(names)):
                v = shown[i, j]
                ax.text(j, i, f"{100 * v:.0f}" if normalize else f"{int(v)}", ha="center", va="center",
                        fontsize=7, color="white" if (normalize and v > 0.5) else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("prediction")
        ax.set_ylabel("truth")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.7)
    return fig


def _legend(fig: Figure, registry: ClassRegistry) -> None:
    handles = [Patch(facecolor=_rgb(c), edgecolor="black", label=n) for n, c in zip(registry.names, registry.palette)]
    handles.append(Patch(facecolor=_rgb(registry.ignore_color), edgecolor="black", label=f"{registry.ignore_name} (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def plot_image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    registry: ClassRegistry,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Grid of RGB images and index masks (2-D arrays are colourised with the registry)."""
    n_rows = max(1, len(rows))
    n_cols = len(column_titles)
    fig = Figure(figsize=(2.2 * n_cols, 2.2 * n_rows + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if r >= len(rows) or c >= len(rows[r]):
                continue
            arr = np.asarray(rows[r][c])
            ax.imshow(registry.colorize(arr) if arr.ndim == 2 else arr, interpolation="nearest")
            if r == 0:
                ax.set_title(column_titles[c], fontsize=9)
            if row_titles is not None and c == 0 and r < len(row_titles):
                ax.text(-0.05, 0.5, row_titles[r], transform=ax.transAxes, rotation=90, ha="right",
                        va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    _legend(fig, registry)
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return fig


def plot_filter_examples(
    examples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, bool, float]],
    registry: ClassRegistry,
) -> Figure:
    """Synthetic image | mask | filtered mask, one row per ``(name, image, mask, filtered, kept, kept_fraction)``."""
    rows = [(img, mask, filt) for _, img, mask, filt, _, _ in examples]
    labels = [f"{name}\n{'kept' if kept else 'dropped'} {100 * frac:.0f}%"
              for name, _, _, _, kept, frac in examples]
    return plot_image_grid(rows, ["synthetic image", "mask", "filtered mask"], registry, labels,
                           "FreeMask filtering: noisy pixels become ignore")


def plot_prediction_examples(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    registry: ClassRegistry,
    names: Sequence[str] | None = None,
) -> Figure:
    """Image | truth | one column per model (e.g. baseline, augmented)."""
    rows = [[img, truth, *(predictions[k][i] for k in predictions)] for i, (img, truth) in enumerate(zip(images, truths))]
    return plot_image_grid(rows, ["image", "truth", *predictions.keys()], registry, names, "Test predictions")


def comparison_metrics(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """MLflow metrics of a :func:`comparison_table`: ``<eval set>.<variant>.<metric>[.std]``."""
    from tisynth.segmentation.tracking import safe_metric_name

    metrics: dict[str, dict[str, float]] = {}
    for _, row in table.iterrows():
        for column in row.index:
            if column.endswith(("_mean", "_std")):
                value = row[column]
                if isinstance(value, (int, float)) and np.isfinite(value):
                    name = safe_metric_name(f"{row['eval_set']}.{column.rsplit('_', 1)[0]}.{row['metric']}"
                                            f"{'' if column.endswith('_mean') else '.std'}")
                    metrics[name] = {"value": float(value), "step": 0}
    return metrics
