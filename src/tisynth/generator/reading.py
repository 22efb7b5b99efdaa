"""How a real segmenter reads a generator's images: does the generator follow its masks?

A segmenter trained on real tiles only reads the classes off synthetic images; its agreement
with the masks the images were made from is the measure (FreeMask's and TISynth's premise: an
image whose pixels a real model reads as their mask's class is useful training data). Besides
mIoU / OA over all pixels, two numbers tell the failure modes apart on data like GID-5, where
most tiles hold one class:

* ``dominant_acc``: the share of tiles whose most-predicted class is the mask's most frequent
  class (is the tile recognised as its class at all?);
* ``multi_mIoU``: mIoU over the masks with more than one class above 1 % of their pixels only
  (does the layout follow the mask?).

:func:`read_generator` samples images for held-out masks with Refs from the training tiles, at
several guidance scales, and returns one row per scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tisynth.classes import IGNORE_INDEX
from tisynth.io import DataError, TileSet
from tisynth.segmentation.metrics import ConfusionAccumulator

MULTI_CLASS_SHARE = 0.01
"""A class counts towards a multi-class mask when it covers more than this share of its labelled pixels."""


def mask_following(predictions: Sequence[np.ndarray], masks: Sequence[np.ndarray], num_classes: int) -> dict[str, float]:
    """Scores of predicted index maps against the masks the images were made for.

    Returns ``mIoU``, ``OA``, ``dominant_acc``, ``multi_mIoU`` (NaN without a multi-class mask)
    and ``multi_tiles`` (fractions, not percent).
    """
    if len(predictions) != len(masks) or not len(masks):
        raise DataError(f"mask_following needs one prediction per mask, got {len(predictions)} and {len(masks)}")
    every, multi = ConfusionAccumulator(num_classes), ConfusionAccumulator(num_classes)
    hits, n_multi, n_labelled = 0, 0, 0
    for pred, mask in zip(predictions, masks):
        if pred.shape != mask.shape:
            raise DataError(f"prediction {pred.shape} and mask {mask.shape} differ in size")
        every.update(mask, pred)
        valid = mask != IGNORE_INDEX
        counts = np.bincount(mask[valid].ravel(), minlength=num_classes)[:num_classes]
        if counts.sum() == 0:
            continue
        n_labelled += 1
        predicted = np.bincount(pred[valid].ravel(), minlength=num_classes)[:num_classes]
        hits += int(np.argmax(predicted) == np.argmax(counts))
        if int((counts / counts.sum() > MULTI_CLASS_SHARE).sum()) > 1:
            multi.update(mask, pred)
            n_multi += 1
    r = every.result()
    return {"mIoU": float(r.miou), "OA": float(r.oa), "dominant_acc": hits / max(1, n_labelled),
            "multi_mIoU": float(multi.result().miou) if n_multi else float("nan"), "multi_tiles": float(n_multi)}


@dataclass(frozen=True)
class ReadingSettings:
    """Which masks, Refs and guidance scales :func:`read_generator` uses.

    Attributes:
        tiles: how many held-out masks (every ``stride``-th labelled tile of ``split``).
        stride: take every n-th tile of the split (spread over the split's order).
        split: the held-out split whose masks are read.
        ref_split: Refs are drawn from this split's images (never the mask's own image).
        refs: ``random`` or ``same_group`` (a Ref of the mask's scene group).
        guidance: guidance scales, one row each.
        mode: sampling mode (``tisynth``, or ``base`` for a mask-first base alone).
        seed: seed of the Ref draw; image seeds are 0..N-1.
    """

    tiles: int = 24
    stride: int = 4
    split: str = "val"
    ref_split: str = "train"
    refs: str = "random"
    guidance: tuple[float, ...] = (1.0, 2.0, 3.0)
    mode: str = "tisynth"
    seed: int = 0
    sampler: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, sampler: Mapping[str, Any] | None = None) -> ReadingSettings:
        params = dict(params or {})
        unknown = set(params) - {"tiles", "stride", "split", "ref_split", "refs", "guidance", "mode", "seed"}
        if unknown:
            raise DataError(f"unknown reading key(s) {sorted(unknown)}")
        cfg = cls(**{**params, "guidance": tuple(float(g) for g in params.get("guidance", cls.guidance))},
                  sampler=dict(sampler or {}))
        if cfg.refs not in ("random", "same_group"):
            raise DataError(f"reading.refs must be 'random' or 'same_group', got {cfg.refs!r}")
        if cfg.tiles < 0 or cfg.stride < 1:
            raise DataError(f"reading.tiles must be >= 0 and stride >= 1, got {cfg.tiles}, {cfg.stride}")
        return cfg


def choose_refs(manifest: pd.DataFrame, rows: pd.DataFrame, cfg: ReadingSettings) -> list[str]:
    """One Ref image path per row, from ``cfg.ref_split`` (same scene group with ``same_group``)."""
    rng = np.random.default_rng(cfg.seed)
    pool = manifest[manifest["split"] == cfg.ref_split]
    if pool.empty:
        raise DataError(f"no tiles in split {cfg.ref_split!r} to draw Refs from")
    out = []
    for _, row in rows.iterrows():
        cands = pool[pool["name"] != row["name"]]
        if cfg.refs == "same_group" and "group" in pool.columns:
            same = cands[cands["group"] == row.get("group")]
            cands = same if len(same) else cands
        out.append(str(cands["image"].iloc[int(rng.integers(len(cands)))]))
    return out


def read_generator(generator: Any, segmenter: Any, tiles: TileSet, manifest: pd.DataFrame, cfg: ReadingSettings) -> pd.DataFrame:
    """Sample images for held-out masks at each guidance scale; the segmenter's reading per scale."""
    from tisynth.generator.sample import sample_images

    rows = manifest[(manifest["split"] == cfg.split) & manifest["mask"].notna()].iloc[:: cfg.stride].head(cfg.tiles)
    if rows.empty:
        raise DataError(f"no labelled {cfg.split!r} tiles to read the generator on")
    masks = np.stack([tiles.read_mask(m) for m in rows["mask"]])
    refs = np.stack([tiles.read_image(r) for r in choose_refs(manifest, rows, cfg)]) if cfg.mode == "tisynth" else None
    out = []
    for g in cfg.guidance:
        images = sample_images(generator, masks, refs, list(rows["prompt"]), list(range(len(rows))),
                               {**dict(cfg.sampler), "guidance_scale": g, "mode": cfg.mode})
        preds = [segmenter.predict(img)[0] for img in images]
        out.append({"guidance": g, "refs": cfg.refs if cfg.mode == "tisynth" else "none", "mode": cfg.mode,
                    "tiles": len(rows), **mask_following(preds, list(masks), generator.num_classes)})
    real = [segmenter.predict(tiles.read_image(i))[0] for i in rows["image"]]
    out.append({"guidance": float("nan"), "refs": "real tiles", "mode": "real", "tiles": len(rows),
                **mask_following(real, list(masks), generator.num_classes)})
    return pd.DataFrame(out)
