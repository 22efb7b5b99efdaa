"""Figures shared by the pipelines. Class names and colours always come from the registry."""

from __future__ import annotations

from collections.abc import Sequence

import sys

import matplotlib

if "ipykernel" not in sys.modules:  # headless pipelines; notebooks keep their inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tisynth.classes import ClassRegistry  # noqa: E402


def class_colors(registry: ClassRegistry) -> list[tuple[float, float, float]]:
    """Registry colours (ignore last) as matplotlib RGB tuples, with a grey edge for black/white."""
    colors = [tuple(v / 255 for v in c) for c in registry.palette]
    colors.append(tuple(v / 255 for v in registry.ignore_color))
    return colors  # type: ignore[return-value]


def class_share_figure(stats: pd.DataFrame, registry: ClassRegistry) -> Figure:
    """Grouped bars: pixel share per class (ignore included) for each split."""
    splits = [s for s in ("all", "train", "val", "test") if s in set(stats["split"]) and stats.loc[stats["split"] == s, "tiles"].max() > 0]
    names = registry.names + [registry.ignore_name]
    colors = class_colors(registry)
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.35 * len(names) * max(1, len(splits)) + 2)), 4), layout="constrained")
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(names))
    hatches = ["", "//", "..", "xx"]
    for i, split in enumerate(splits):
        part = stats[stats["split"] == split].set_index("class").reindex(names)
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, 100 * part["share"].to_numpy(), width,
               color=colors, edgecolor="0.25", hatch=hatches[i % len(hatches)])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("pixel share (%)")
    ax.set_title("Class shares per split")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="white", edgecolor="0.25", hatch=hatches[i % len(hatches)],
                     label=f"{s} ({int(stats.loc[stats['split'] == s, 'tiles'].max())} tiles)") for i, s in enumerate(splits)]
    ax.legend(handles=handles, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    col_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    cell: float = 1.8,
) -> Figure:
    """A grid of uint8 images (H, W, 3) or (H, W); rows may differ in length."""
    n_rows = max(1, len(rows))
    n_cols = max(1, max((len(r) for r in rows), default=1))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + (0.4 if title else 0)), squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i < len(rows) and j < len(rows[i]):
                img = rows[i][j]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and col_titles and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
            if j == 0 and row_titles and i < len(row_titles):
                ax.set_ylabel(row_titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
