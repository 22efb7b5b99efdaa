"""Does the Ref steer the look? A report that measures it.

For fixed masks and seeds the generator samples each mask twice, once with a Ref from the
source domain and once with a Ref from the target domain (without a target: two disjoint groups
of the source's scenes), and the report gives:

* **Ref effect / seed effect**: the mean absolute pixel change (grey levels) when only the Ref
  switches from source to target, against the change when only the seed changes (same mask,
  same source Ref). Below about 0.1 the Ref does nothing visible; at 1 it moves an image as much
  as a new seed does. Beside it, the same ratio for the source-Ref images moved by exactly the
  real per-band shift in mean and spread (``ref_over_seed_at_real_shift``): what a colour
  transfer of 100 % would show as Ref / seed on this pair of domains.
* **Colour transfer**: the real difference between the domains in per-band mean and standard
  deviation (target tiles minus source tiles, a 6-vector), and the share of it that the
  synthetic images cover when their Refs switch from source to target (the projection of the
  synthetic difference on the real one, over its squared length). 100 % = the whole shift.
* **KID** of each synthetic set (source Refs, target Refs) against real target tiles and
  against real source tiles (Inception features, :mod:`tisynth.generator.quality`).
* a figure: mask | source-Ref sample | target-Ref sample | the target Ref, one row per mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from tisynth.errors import TisynthError
from tisynth.io import TileSet
from tisynth.params import dataclass_from_mapping

log = logging.getLogger(__name__)


class SteeringError(TisynthError, ValueError):
    """Ref-steering settings or data that cannot be used."""


@dataclass
class SteeringSettings:
    """Parameters of the Ref-steering report (block ``ref_steering``).

    Attributes:
        masks: labelled masks sampled with both kinds of Ref (0 = skip the report).
        mask_split: the split the masks come from (held-out: ``val``).
        seed_items: of those, how many are also sampled with a second seed (the seed effect).
        real_tiles: real tiles per domain for KID and the colour statistics.
        seed: seed of the draws (masks, Refs, sampling seeds).
        kid: compute KID (needs the Inception network); False: colour and pixel figures only.
        figure_rows: rows of the figure.
        colour_tiles: tiles per domain whose colour statistics give the real shift (0: every tile of the
            pool; a 64-tile draw misses the domains' difference by about 7 grey levels per band, 256 by 3).
        ref_set_tiles: tiles per domain in the Ref set whose moments Ref-set moments take (as a synthesis
            run takes up to ``sample.ref_moments.tiles`` Refs of its plan), outside the real tiles where
            the pool allows; 0: the per-mask Refs themselves.
        sample: sampler overrides on top of ``sample.sampler`` (e.g. ``{steps: 12}``).
    """

    masks: int = 24
    mask_split: str = "val"
    seed_items: int = 8
    real_tiles: int = 64
    seed: int = 0
    kid: bool = True
    figure_rows: int = 8
    ref_set_tiles: int = 256
    colour_tiles: int = 0
    sample: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> SteeringSettings:
        cfg = dataclass_from_mapping(cls, dict(params or {}), SteeringError, "unknown ref_steering key(s)")
        for name in ("masks", "seed_items", "real_tiles", "figure_rows", "ref_set_tiles", "colour_tiles"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SteeringError(f"ref_steering.{name} must be a non-negative integer, got {value!r}")
        if cfg.masks and cfg.masks < 2:
            raise SteeringError(f"ref_steering.masks must be 0 or at least 2, got {cfg.masks}")
        if cfg.masks and cfg.real_tiles < 2:
            raise SteeringError(f"ref_steering.real_tiles must be at least 2, got {cfg.real_tiles}")
        if cfg.seed_items > cfg.masks:
            raise SteeringError(f"ref_steering.seed_items ({cfg.seed_items}) cannot exceed ref_steering.masks ({cfg.masks})")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- figures of merit
def colour_stats(images: np.ndarray) -> np.ndarray:
    """Per-band mean and standard deviation over all pixels of a set (N×H×W×3 uint8) -> 6-vector
    (a 6-vector, e.g. from :func:`pool_colour_stats`, is returned as it is)."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 6:
        return arr
    x = arr.reshape(-1, 3)
    return np.concatenate([x.mean(0), x.std(0)])


def pool_colour_stats(tiles: TileSet, paths: Sequence[str]) -> np.ndarray:
    """:func:`colour_stats` of a whole pool of tiles, read one at a time (no stack in memory)."""
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for p in paths:
        x = np.asarray(tiles.read_image(str(p)), dtype=np.float64).reshape(-1, 3)
        total += x.sum(0)
        squares += (x * x).sum(0)
        count += len(x)
    if not count:
        raise SteeringError("colour statistics of an empty set of tiles")
    mean = total / count
    return np.concatenate([mean, np.sqrt(np.maximum(squares / count - mean * mean, 0))])


def colour_transfer(syn_source: np.ndarray, syn_target: np.ndarray, real_source: np.ndarray,
                    real_target: np.ndarray) -> dict[str, float]:
    """The share of the real source→target colour difference the synthetic images cover.

    ``share = <d_syn, d_real> / |d_real|^2`` with ``d = stats(target set) - stats(source set)``
    (:func:`colour_stats`). 1 = the synthetic images move exactly as far as the real domains
    differ, in the same direction; 0 = they do not move; negative = the wrong way.
    """
    d_real = colour_stats(real_target) - colour_stats(real_source)  # images, or pool statistics
    d_syn = colour_stats(syn_target) - colour_stats(syn_source)
    norm = float(d_real @ d_real)
    if norm < 1e-9:
        raise SteeringError("the two real domains have the same colour statistics; there is no shift to transfer")
    out = {"colour_transfer": float(d_syn @ d_real) / norm, "real_shift_norm": float(np.sqrt(norm)),
           "synthetic_shift_norm": float(np.sqrt(d_syn @ d_syn))}
    for i, name in enumerate(("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b")):
        out[f"real_shift_{name}"] = float(d_real[i])
        out[f"synthetic_shift_{name}"] = float(d_syn[i])
    return out


def mean_abs_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels between two image sets of one shape."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def apply_colour_shift(images: np.ndarray, source_stats: np.ndarray, target_stats: np.ndarray) -> np.ndarray:
    """``images`` moved by the per-band shift from the colour statistics ``source_stats`` to
    ``target_stats`` (:func:`colour_stats` 6-vectors): their set mean moves by ``μ_t − μ_s`` and
    their spread around it scales by ``σ_t/σ_s`` (``x + (μ_t − μ_s) + (σ_t/σ_s − 1)(x − x̄)``, with
    ``x̄`` the images' own per-band mean), rounded and clipped to uint8."""
    src, tgt = colour_stats(source_stats), colour_stats(target_stats)
    x = np.asarray(images, dtype=np.float64)
    own = x.reshape(-1, 3).mean(0)
    out = x + (tgt[:3] - src[:3]) + (tgt[3:] / np.maximum(src[3:], 1e-9) - 1) * (x - own)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- choosing the images
@dataclass
class SteeringInputs:
    """What the report samples from: masks with prompts, one source and one target Ref per mask,
    real tiles of both domains, and (for Ref-set moments) a Ref set per domain drawn like a synthesis
    run's: other tiles of the same pools than the real tiles wherever the pool is large enough; the
    colour statistics (6-vectors) of each domain's pool for the real colour shift."""

    names: list[str]
    masks: np.ndarray
    prompts: list[str]
    source_refs: np.ndarray
    target_refs: np.ndarray
    real_source: np.ndarray
    real_target: np.ndarray
    source_label: str
    target_label: str
    source_ref_set: np.ndarray | None = None
    target_ref_set: np.ndarray | None = None
    colour_source: np.ndarray | None = None
    colour_target: np.ndarray | None = None


def _rng_pick(rng: np.random.Generator, items: Sequence[Any], n: int, replace: bool = False) -> list[Any]:
    if not items:
        return []
    idx = rng.choice(len(items), size=n if replace else min(n, len(items)), replace=replace or n > len(items))
    return [items[int(i)] for i in idx]


def split_groups(manifest: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Two disjoint halves of the manifest's scene groups (``group``, else ``source``), balanced by tile count."""
    col = "group" if "group" in manifest.columns and manifest["group"].nunique() > 1 else "source"
    if col not in manifest.columns or manifest[col].nunique() < 2:
        raise SteeringError("without a target domain the report compares two scene groups, but the tiles have only one "
                            "group and one source image")
    counts = manifest[col].astype(str).value_counts().sort_index()
    a, b, na, nb = [], [], 0, 0
    for g, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if na <= nb:
            a.append(g)
            na += c
        else:
            b.append(g)
            nb += c
    return a, b


def choose_inputs(tiles: TileSet, manifest: pd.DataFrame, target_tiles: TileSet | None, target_manifest: pd.DataFrame | None,
                  cfg: SteeringSettings, target_splits: Sequence[str] | None = None) -> SteeringInputs:
    """Masks from ``cfg.mask_split`` and Refs/real tiles of the two domains (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    labelled = manifest[manifest["mask"].notna()]
    has_target = target_manifest is not None and len(target_manifest) > 0 and target_tiles is not None
    pool = manifest[manifest["split"] != "test"]
    src_set, src_rows = tiles, pool
    if has_target:
        from tisynth.references import target_pool_splits

        splits = list(target_splits) if target_splits else target_pool_splits(target_manifest)
        tgt_rows = target_manifest[target_manifest["split"].isin(splits)]
        tgt_set = target_tiles
        labels = ("source", "target")
    else:
        col = "group" if "group" in manifest.columns and manifest["group"].nunique() > 1 else "source"
        a, b = split_groups(pool)
        src_rows = pool[pool[col].astype(str).isin(a)]
        tgt_rows = pool[pool[col].astype(str).isin(b)]
        tgt_set = tiles
        labels = (f"{col}s {', '.join(a[:3])}{'…' if len(a) > 3 else ''}", f"{col}s {', '.join(b[:3])}{'…' if len(b) > 3 else ''}")
    masks_from = labelled[labelled["split"] == cfg.mask_split]
    if len(masks_from) < 2:  # a tiny dataset: every labelled tile may serve
        log.info("ref_steering: %d labelled %s tile(s); taking the masks from every split", len(masks_from), cfg.mask_split)
        masks_from = labelled
    if len(masks_from) < 2:
        raise SteeringError(f"ref_steering: at least two labelled tiles are needed, got {len(masks_from)}")
    if len(src_rows) < 2 or len(tgt_rows) < 2:
        raise SteeringError(f"the Ref-steering report needs at least two tiles on each side, got {len(src_rows)} and {len(tgt_rows)}")
    mask_rows = masks_from.iloc[sorted(rng.choice(len(masks_from), size=min(cfg.masks, len(masks_from)), replace=False))]
    src_names = [n for n in src_rows["name"]]
    tgt_names = list(tgt_rows["name"])
    src_refs_n = [n for n in _rng_pick(rng, [n for n in src_names if n not in set(mask_rows["name"])] or src_names,
                                       len(mask_rows), replace=True)]
    tgt_refs_n = _rng_pick(rng, tgt_names, len(mask_rows), replace=True)
    src_by = src_rows.set_index("name")["image"]
    tgt_by = tgt_rows.set_index("name")["image"]
    real_src_n = _rng_pick(rng, src_names, cfg.real_tiles)
    real_tgt_n = _rng_pick(rng, tgt_names, cfg.real_tiles)
    # drawn last, so every earlier draw (and the report without Ref moments) is what it was
    src_set_n = _ref_set(rng, src_names, set(real_src_n), cfg.ref_set_tiles)
    tgt_set_n = _ref_set(rng, tgt_names, set(real_tgt_n), cfg.ref_set_tiles)
    src_colour_n = src_names if not cfg.colour_tiles else _rng_pick(rng, src_names, cfg.colour_tiles)
    tgt_colour_n = tgt_names if not cfg.colour_tiles else _rng_pick(rng, tgt_names, cfg.colour_tiles)
    return SteeringInputs(
        names=[str(n) for n in mask_rows["name"]],
        masks=np.stack([tiles.read_mask(str(m)) for m in mask_rows["mask"]]),
        prompts=[str(p) for p in mask_rows["prompt"]],
        source_refs=np.stack([src_set.read_image(str(src_by[n])) for n in src_refs_n]),
        target_refs=np.stack([tgt_set.read_image(str(tgt_by[n])) for n in tgt_refs_n]),
        real_source=np.stack([src_set.read_image(str(src_by[n])) for n in real_src_n]),
        real_target=np.stack([tgt_set.read_image(str(tgt_by[n])) for n in real_tgt_n]),
        source_label=labels[0],
        target_label=labels[1],
        source_ref_set=np.stack([src_set.read_image(str(src_by[n])) for n in src_set_n]) if src_set_n else None,
        target_ref_set=np.stack([tgt_set.read_image(str(tgt_by[n])) for n in tgt_set_n]) if tgt_set_n else None,
        colour_source=pool_colour_stats(src_set, [str(src_by[n]) for n in src_colour_n]),
        colour_target=pool_colour_stats(tgt_set, [str(tgt_by[n]) for n in tgt_colour_n]),
    )


def _ref_set(rng: np.random.Generator, names: Sequence[str], avoid: set[str], k: int) -> list[str]:
    """Up to ``k`` distinct tiles for a domain's Ref set, outside ``avoid`` (the real tiles) while enough remain."""
    if k <= 0:
        return []
    others = [n for n in names if n not in avoid]
    return _rng_pick(rng, others if len(others) >= min(k, len(names)) else list(names), k)


# ---------------------------------------------------------------------- the report
def moment_transfers(model: Any, inputs: SteeringInputs, settings: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """The Ref-moment transfers of the two Ref sets (``sample.ref_moments``; ``(None, None)`` when off).

    Home moments over the report's real source tiles (a synthesis run takes the labelled tiles of its
    masks, the same domain); Ref moments over each side's Ref set (``pool: set``: ``ref_set_tiles``
    tiles of the domain's pool other than the real tiles, as many as a synthesis run's plan gives;
    without one, the distinct per-mask Refs, at most ``tiles``, seeded) or each item's own Ref
    (``pool: item``).
    """
    from tisynth.generator.moments import (MomentSettings, MomentTransfer, encode_home_moments, encode_item_moments,
                                           encode_moments)

    mcfg = MomentSettings.from_params(settings)
    if not mcfg.enabled:
        return None, None
    home = encode_home_moments(model, inputs.real_source, mcfg.pool, transform=mcfg.transform)

    def side(refs: np.ndarray, ref_set: np.ndarray | None) -> Any:
        if mcfg.pool == "item":
            targets = encode_item_moments(model, refs, transform=mcfg.transform)
        elif ref_set is not None and len(ref_set):
            targets = encode_moments(model, ref_set[: mcfg.tiles], transform=mcfg.transform)
        else:
            distinct = np.unique(refs.reshape(len(refs), -1), axis=0).reshape(-1, *refs.shape[1:])
            if len(distinct) > mcfg.tiles:
                keep = np.random.default_rng(mcfg.seed).choice(len(distinct), size=mcfg.tiles, replace=False)
                distinct = distinct[np.sort(keep)]
            targets = encode_moments(model, distinct, transform=mcfg.transform)
        return MomentTransfer(home, targets, mcfg.strength, mcfg.min_std, mcfg.transform)

    return side(inputs.source_refs, inputs.source_ref_set), side(inputs.target_refs, inputs.target_ref_set)


def ref_steering(model: Any, inputs: SteeringInputs, cfg: SteeringSettings, sampler: Mapping[str, Any] | None = None,
                 extractor: Any = None, moments: Mapping[str, Any] | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Sample and measure; returns ``(metrics, images)`` with images ``source``, ``target``, ``seed2``.

    ``moments``: the ``sample.ref_moments`` block (:mod:`tisynth.generator.moments`); when on, each side's
    samples take their Ref set's latent moments, as in a synthesis run.
    """
    from tisynth.generator.sample import sample_images

    scfg = {**dict(sampler or {}), **dict(cfg.sample), "mode": "tisynth"}
    n = len(inputs.names)
    base_seed = int(cfg.seed) * 1000 + 17
    seeds = [base_seed + i for i in range(n)]
    m = min(cfg.seed_items, n)
    move_src, move_tgt = moment_transfers(model, inputs, moments)
    syn_src = sample_images(model, inputs.masks, inputs.source_refs, inputs.prompts, seeds, scfg, moments=move_src)
    syn_tgt = sample_images(model, inputs.masks, inputs.target_refs, inputs.prompts, seeds, scfg, moments=move_tgt)
    if move_src is not None and move_src.targets.ndim == 2:
        move_src = replace(move_src, targets=move_src.targets[:m])
    syn_seed = sample_images(model, inputs.masks[:m], inputs.source_refs[:m], inputs.prompts[:m],
                             [s + 100_000 for s in seeds[:m]], scfg, moments=move_src) if m else syn_src[:0]
    metrics: dict[str, float] = {"masks": float(n), "seed_items": float(m),
                                 "ref_moments_strength": float(move_src.strength) if move_src is not None else 0.0}
    metrics["ref_effect"] = mean_abs_change(syn_src, syn_tgt)
    if m:
        metrics["seed_effect"] = mean_abs_change(syn_src[:m], syn_seed)
        metrics["ref_effect_same_items"] = mean_abs_change(syn_src[:m], syn_tgt[:m])
        metrics["ref_over_seed"] = metrics["ref_effect_same_items"] / max(metrics["seed_effect"], 1e-9)
    real_colour = ((inputs.colour_source, inputs.colour_target) if inputs.colour_source is not None
                   and inputs.colour_target is not None else (inputs.real_source, inputs.real_target))
    real_colour = tuple(colour_stats(x) for x in real_colour)  # once: the transfer and the real-shift reference
    metrics.update(colour_transfer(syn_src, syn_tgt, *real_colour))
    if m:
        # the change an exact per-band shift of the real domains would make to the source-Ref images,
        # against the seed: what a colour transfer of 100 % shows as Ref / seed on this pair of domains
        ideal = apply_colour_shift(syn_src[:m], *real_colour)
        metrics["ref_effect_at_real_shift"] = mean_abs_change(syn_src[:m], ideal)
        metrics["ref_over_seed_at_real_shift"] = metrics["ref_effect_at_real_shift"] / max(metrics["seed_effect"], 1e-9)
    small = min(n, len(inputs.real_source), len(inputs.real_target))
    if cfg.kid and small < 2:
        log.info("ref_steering: KID skipped (a set of %d image(s); it needs two)", small)
    if cfg.kid and small >= 2:
        from tisynth.generator.quality import inception_extractor, kernel_inception_distance

        ext = extractor if extractor is not None else inception_extractor()
        feats = {k: ext(v) for k, v in (("syn_source", syn_src), ("syn_target", syn_tgt),
                                         ("real_source", inputs.real_source), ("real_target", inputs.real_target))}
        for syn in ("source", "target"):
            for real in ("source", "target"):
                kid, _ = kernel_inception_distance(feats[f"syn_{syn}"], feats[f"real_{real}"], subsets=50,
                                                   subset_size=1000, seed=cfg.seed)
                metrics[f"kid_{syn}_refs_vs_real_{real}"] = kid
        kid_rt, _ = kernel_inception_distance(feats["real_source"], feats["real_target"], subsets=50, subset_size=1000, seed=cfg.seed)
        metrics["kid_real_source_vs_real_target"] = kid_rt
        metrics["kid_ratio_target"] = metrics["kid_target_refs_vs_real_target"] / max(metrics["kid_source_refs_vs_real_target"], 1e-9)
    return metrics, {"source": syn_src, "target": syn_tgt, "seed2": syn_seed}


def steering_figure(model: Any, inputs: SteeringInputs, images: Mapping[str, np.ndarray], metrics: Mapping[str, float],
                    rows: int = 8):  # -> Figure
    """mask | source-Ref sample | target-Ref sample | target Ref (and the source Ref), one row per mask."""
    from tisynth.plots import plt

    k = min(rows, len(inputs.names))
    cols = [("mask", [model.registry.colorize(mk) for mk in inputs.masks[:k]]),
            (f"Ref: {inputs.source_label}", list(inputs.source_refs[:k])),
            ("sample, source Ref", list(images["source"][:k])),
            ("sample, target Ref", list(images["target"][:k])),
            (f"Ref: {inputs.target_label}", list(inputs.target_refs[:k]))]
    fig, axes = plt.subplots(k, len(cols), figsize=(1.9 * len(cols), 1.9 * k + 0.6), squeeze=False)
    for c, (title, column) in enumerate(cols):
        for r in range(k):
            ax = axes[r][c]
            ax.imshow(column[r])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    ratio = metrics.get("ref_over_seed", float("nan"))
    moments = metrics.get("ref_moments_strength", 0.0)
    fig.suptitle(f"Ref effect {metrics['ref_effect']:.1f} grey levels ({ratio:.2f}× the seed effect); "
                 f"colour transfer {100 * metrics['colour_transfer']:.0f} %"
                 + (f"; Ref-set latent moments, strength {moments:g}" if moments else ""), fontsize=9)
    fig.tight_layout()
    return fig


def metrics_table(metrics: Mapping[str, float], label: str = "") -> pd.DataFrame:
    return pd.DataFrame([{"run": label, **{k: float(v) for k, v in metrics.items()}}])
