"""Running the generator's training stages inside a project: stage order, checkpoint folders
that never mix runs, and the figures of a training run.

The stages are ``base`` (the text-conditioned UNet; only when no pretrained base is given,
because with random weights the frozen UNet of the method would otherwise be noise), ``A``
(the mask ControlNet) and ``B`` (the Ref ControlNet and the all-in-attention layers).

Each stage checkpoints into its own folder. The folder carries a fingerprint of everything
the stage's result depends on: the generator config, the training images, the stage's
settings and the full history of the stages before it. A rerun with the same fingerprint
resumes from the newest checkpoint (a finished stage returns at once; a larger ``steps``
continues); a different fingerprint means the checkpoints belong to another run: they are
moved, untouched, to ``superseded/`` inside the folder (:mod:`tisynth.runs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tisynth.runs import RunFolder, settings_digest

log = logging.getLogger(__name__)

STAGES = ("base", "A", "B")
# settings that do not change what a stage computes (or only how long it runs)
_NOT_IN_FINGERPRINT = {"steps", "checkpoint_every", "checkpoints_keep", "log_every", "sample_every", "sample_items",
                       "sample", "progress", "num_workers", "resume"}


def stage_config(params: Mapping[str, Any], stage: str, ref_augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """The TrainConfig dict of one stage: ``common`` settings overridden by the stage's own."""
    cfg = {**dict(params.get("common") or {}), **dict(params.get(stage) or {}), "stage": stage}
    if stage == "B" and ref_augment is not None:
        cfg["ref_augment"] = dict(ref_augment)
    return cfg


def stage_fingerprints(upstream: str, cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(fingerprint of this stage's checkpoints, fingerprint handed to the next stage)."""
    own = settings_digest([upstream, {k: v for k, v in cfg.items() if k not in _NOT_IN_FINGERPRINT}])
    return own, settings_digest([upstream, dict(cfg)])


def data_fingerprint(generator_config: Mapping[str, Any], train_tiles: Mapping[str, str]) -> str:
    """The generator's settings and its training tiles, each by name and content digest."""
    return settings_digest([dict(generator_config), sorted(train_tiles.items())])


def names_data_fingerprint(generator_config: Mapping[str, Any], train_names: Sequence[str]) -> str:
    """What :func:`data_fingerprint` was before tiles entered it by content (names only); for adoption."""
    return settings_digest([dict(generator_config), sorted(train_names)])


def prepare_checkpoint_dir(folder: Path, fingerprint: str, policy: str = "set_aside",
                           adopt: Sequence[str] = ()) -> Path:
    """Make ``folder`` hold only checkpoints of this fingerprint; another run's are set aside (or per ``policy``).

    ``adopt``: fingerprints an earlier version gave these same checkpoints (they resume).
    """
    return RunFolder.open(folder, fingerprint, policy=policy, legacy_manifest="fingerprint.json", adopt=adopt).root


def history_frame(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    rows = [{"stage": s, **h} for s, hist in histories.items() for h in hist]
    return pd.DataFrame(rows, columns=["stage", "step", "loss", "lr"])


def loss_figure(history: pd.DataFrame):  # -> Figure
    """One panel per stage: loss per step and its running mean."""
    from tisynth.plots import plt

    stages = [s for s in STAGES if s in set(history["stage"])]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.2 * max(1, len(stages)), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        h = history[history["stage"] == stage]
        ax.plot(h["step"], h["loss"], lw=0.6, alpha=0.4, label="loss")
        window = max(1, len(h) // 20)
        ax.plot(h["step"], h["loss"].rolling(window, min_periods=1).mean(), lw=1.6, label=f"mean over {window}")
        ax.set_title(f"stage {stage}")
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ε-prediction MSE")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def grid_figure(grid: np.ndarray, title: str):  # -> Figure
    from tisynth.plots import image_grid

    return image_grid([[grid]], title=title, cell=min(12.0, 2.0 + grid.shape[1] / 80))
