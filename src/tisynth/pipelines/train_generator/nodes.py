"""Thin nodes of the ``train_generator`` pipeline; the logic is in :mod:`tisynth.generator`
and :mod:`tisynth.generator.stages`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tisynth.classes import ClassRegistry
from tisynth.generator import (
    MlflowCallback,
    TileDataset,
    build_generator,
    collate_items,
    resolve_generator_config,
    sample_images,
    stages,
    train_generator,
)
from tisynth.generator.data import images_to_uint8
from tisynth.generator.diagnostics import DEFAULT_TIMESTEPS, DiagnosticsError, mask_use
from tisynth.generator.latent_cache import LatentTileDataset, PairedLatentDataset, build_latent_cache, build_style_cache
from tisynth.generator.sample import sample_grid
from tisynth.io import TileSet
from tisynth.references import target_pool_splits
from tisynth.runs import file_digest, settings_digest

log = logging.getLogger(__name__)


def init_generator(registry: ClassRegistry, generator: dict[str, Any], params: dict[str, Any]) -> Any:
    model = build_generator(generator, registry, seed=int((params.get("common") or {}).get("seed", 0)))
    counts = model.parameter_counts()
    log.info("generator built: %s", ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items()))
    return model


def _train_names(manifest: pd.DataFrame, params: dict[str, Any]) -> list[str]:
    splits = params.get("splits") or ["train"]
    return sorted(manifest.loc[manifest["split"].isin(splits) & manifest["mask"].notna(), "name"])


def cache_latents(model: Any, tiles: TileSet, manifest: pd.DataFrame, target_tiles: TileSet | None,
                  target_manifest: pd.DataFrame | None, params: dict[str, Any]) -> dict[str, Any]:
    """Encode the training tiles once (``latent_cache.variants`` orientations) for training; ``{"enabled": false}`` when off.

    With ``style_pairs.enabled`` the labelled tiles are also encoded in ``style_pairs.k`` random
    styles (stage B's style pairs); with ``unlabeled.enabled`` the mask-free tiles stage B adds
    (the target domain's, ``unlabeled.target``; in-domain tiles of ``unlabeled.splits``) are
    encoded too, without reading any of their masks.
    """
    cfg = dict(params.get("latent_cache") or {})
    if not cfg.get("enabled", False):
        return {"enabled": False}
    rows = manifest[manifest["name"].isin(_train_names(manifest, params))]
    dtype, batch = str(cfg.get("dtype", "float16")), int(cfg.get("batch_size", 16))
    cache = build_latent_cache(model.autoencoder, tiles, rows, cfg["root"], variants=int(cfg.get("variants", 8)),
                               batch_size=batch, dtype=dtype)
    log.info("latent cache %s: %d tiles x %d variants (%d encoded now)", cache["folder"], cache["tiles"],
             cache["variants"], cache["encoded_now"])
    out: dict[str, Any] = {"enabled": True, **cache}
    style = dict(params.get("style_pairs") or {})
    if style.get("enabled", False):
        out["styles"] = build_style_cache(model.autoencoder, tiles, rows, cache, style.get("family"), int(style.get("k", 1)),
                                          int(style.get("set_size", 3)), int(style.get("seed", 0)), batch_size=batch)
        log.info("style pairs %s: %d tiles x %d styles, sets of %d (%d tiles encoded now)", out["styles"]["folder"],
                 cache["tiles"], out["styles"]["k"], out["styles"]["set_size"], out["styles"]["encoded_now"])
    unl = dict(params.get("unlabeled") or {})
    if unl.get("enabled", False):
        out["unlabeled"] = []
        sources = []
        if unl.get("target", True) and target_manifest is not None and len(target_manifest) and target_tiles is not None:
            # the target's test tiles stay evaluation-only, as in the Ref pool
            target_splits = unl.get("target_splits") or target_pool_splits(target_manifest)
            frame = target_manifest[target_manifest["split"].isin(target_splits)]
            sources.append(("target", target_tiles, frame, Path(cfg["root"]) / "target"))
        splits = list(unl.get("splits") or [])
        pool = manifest[manifest["split"].isin(splits)] if splits else manifest.iloc[:0]
        if len(pool):
            sources.append(("unlabeled", tiles, pool, Path(cfg["root"])))
        for domain, tileset, frame, root in sources:
            c = build_latent_cache(model.autoencoder, tileset, frame, root, variants=1, batch_size=batch, dtype=dtype,
                                   require_masks=False)
            content = settings_digest(sorted((str(n), file_digest(tileset.path(str(i))))
                                             for n, i in zip(frame["name"], frame["image"]) if pd.notna(i)))
            out["unlabeled"].append({"domain": domain, "cache": c, "repeat": int(unl.get("repeat", 1)), "content": content})
            log.info("mask-free %s tiles for stage B: %d (%d encoded now; masks not read)", domain, c["tiles"], c["encoded_now"])
        if not out["unlabeled"]:
            log.info("unlabeled.enabled: no target domain and no tiles of splits %s; stage B has no mask-free tiles", splits)
    return out


def _style_first(generator: dict[str, Any]) -> bool:
    """The base itself takes the Ref's look (a global style path): it then trains on the paired items too."""
    return resolve_generator_config(generator).get("style_conditioning", "none") != "none"


def _paired_stage(stage: str, generator: dict[str, Any]) -> bool:
    """Stages that train on style pairs and mask-free tiles (when enabled): B, and the base of a style-first model."""
    return stage == "B" or (stage == "base" and _style_first(generator))


def _stage_extras(stage: str, generator: dict[str, Any], cache: dict[str, Any]) -> dict[str, Any]:
    """What a paired stage depends on beyond its settings: style pairs, mask-free tiles, the global style path.

    Each enters only when used, so the fingerprints of the paper's recipe do not change.
    """
    if not _paired_stage(stage, generator):
        return {}
    extras: dict[str, Any] = {}
    resolved = resolve_generator_config(generator)
    style = resolved.get("style_conditioning", "none")
    if style != "none":
        extras["_style_conditioning"] = style
        extras["_style_conditioning_hidden"] = resolved.get("style_conditioning_hidden")
    if cache.get("styles"):
        extras["_style_pairs"] = cache["styles"]["digest"]
    if cache.get("unlabeled"):
        extras["_unlabeled"] = [[u["domain"], u["content"], u["repeat"]] for u in cache["unlabeled"]]
    return extras


def _train_tiles(tiles: TileSet, manifest: pd.DataFrame, params: dict[str, Any]) -> dict[str, str]:
    """``{name: digest of image and mask}`` of the generator's training tiles."""
    rows = manifest[manifest["name"].isin(_train_names(manifest, params))]
    return {str(n): f"{file_digest(tiles.path(str(i)))}:{file_digest(tiles.path(str(m)))}"
            for n, i, m in zip(rows["name"], rows["image"], rows["mask"])}


def _fingerprint_chain(stage: str, generator: dict[str, Any], tiles: TileSet, manifest: pd.DataFrame,
                       params: dict[str, Any], ref_augment: dict[str, Any],
                       cache: dict[str, Any] | None = None) -> tuple[str, str]:
    """(this stage's fingerprint, the one versions that knew tiles by name only gave it)."""
    cache = dict(params.get("latent_cache") or {})
    # the global style path only exists from stage B on: it enters B's fingerprint, not the data's
    resolved = {k: v for k, v in resolve_generator_config(generator).items()
                if k not in ("style_conditioning", "style_conditioning_hidden")}
    data = {**resolved,
            "_latent_cache": {k: cache.get(k) for k in ("enabled", "variants", "dtype")} if cache.get("enabled") else None}
    chains = [stages.data_fingerprint(data, _train_tiles(tiles, manifest, params)),
              stages.names_data_fingerprint(data, _train_names(manifest, params))]
    for s in stages.STAGES:
        cfg = stages.stage_config(params, s, ref_augment)
        cfg.update(_stage_extras(s, generator, cache or {}))
        steps = [stages.stage_fingerprints(up, cfg) for up in chains]
        if s == stage:
            return steps[0][0], steps[1][0]
        chains = [nxt for _, nxt in steps]
    raise ValueError(stage)


def _train(stage: str, model: Any, cache: dict[str, Any], tiles: TileSet, manifest: pd.DataFrame, params: dict[str, Any],
           ref_augment: dict[str, Any], generator: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    cfg = stages.stage_config(params, stage, ref_augment)
    if stage == "base" and generator.get("pretrained"):
        log.info("stage base skipped: the UNet comes pretrained from %s", generator["pretrained"])
        return model, []
    if stage == "A" and model.mask_first:
        log.info("stage A skipped: the base UNet is mask-conditioned (%s) from its first step", model.config["mask_conditioning"])
        return model, []
    if int(cfg.get("steps", 0)) <= 0:
        log.info("stage %s skipped (steps: 0)", stage)
        return model, []
    rows = manifest[manifest["name"].isin(_train_names(manifest, params))]
    if _paired_stage(stage, generator) and (cache.get("styles") or cache.get("unlabeled")):
        unlabeled = [{"cache": u["cache"], "repeat": u["repeat"]} for u in cache.get("unlabeled") or []]
        data = PairedLatentDataset(cache, tiles, rows, styles=cache.get("styles"), unlabeled=unlabeled)
        log.info("stage %s items: %d labelled x orientations, %d styled, %d mask-free", stage, data.n_plain,
                 data.n_styled, data.n_unlabeled)
    elif cache.get("enabled"):
        data = LatentTileDataset(cache, tiles, rows)
    else:
        data = TileDataset(tiles, rows, split=None)
    fingerprint, by_names = _fingerprint_chain(stage, generator, tiles, manifest, params, ref_augment, cache)
    folder = stages.prepare_checkpoint_dir(Path(params["checkpoint_dir"]) / f"stage_{stage}", fingerprint,
                                           adopt=[by_names])
    log.info("stage %s: %d training tiles, %d steps, checkpoints in %s", stage, len(data), cfg["steps"], folder)
    result = train_generator(model, data, cfg, folder, callback=MlflowCallback(prefix=f"generator_{stage}/"))
    return result.model, result.history


def train_generator_base(model: Any, cache: dict[str, Any], tiles: TileSet, manifest: pd.DataFrame, params: dict[str, Any],
               ref_augment: dict[str, Any], generator: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    return _train("base", model, cache, tiles, manifest, params, ref_augment, generator)


def train_generator_stage_a(model: Any, cache: dict[str, Any], tiles: TileSet, manifest: pd.DataFrame, params: dict[str, Any],
                  ref_augment: dict[str, Any], generator: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    return _train("A", model, cache, tiles, manifest, params, ref_augment, generator)


def train_generator_stage_b(model: Any, cache: dict[str, Any], tiles: TileSet, manifest: pd.DataFrame, params: dict[str, Any],
                  ref_augment: dict[str, Any], generator: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    return _train("B", model, cache, tiles, manifest, params, ref_augment, generator)


def report_generator_training(
    history_base: list[dict[str, Any]], history_a: list[dict[str, Any]], history_b: list[dict[str, Any]],
    model: Any, tiles: TileSet, manifest: pd.DataFrame, params: dict[str, Any],
) -> tuple[pd.DataFrame, Figure, Figure, dict[str, Any]]:
    """Loss curves of every stage, mask | Ref | sample rows for held-out (val) tiles, and how
    much the model uses the masks (:func:`tisynth.generator.diagnostics.mask_use` as MLflow metrics)."""
    history = stages.history_frame({"base": history_base, "A": history_a, "B": history_b})
    report = params.get("report") or {}
    split = report.get("split", "val")
    rows = manifest[(manifest["split"] == split) & manifest["mask"].notna()]
    if rows.empty:
        rows = manifest[manifest["mask"].notna()]
    data = TileDataset(tiles, rows.head(int(report.get("tiles", 6))), split=None)
    batch = collate_items([data[i] for i in range(len(data))])
    masks, refs = batch["masks"].numpy(), images_to_uint8(batch["images"])
    samples = sample_images(model, masks, refs, batch["prompts"], list(range(len(data))),
                            {**dict(report.get("sample") or {}), "mode": "tisynth"})
    grid = sample_grid([np.stack([model.registry.colorize(m) for m in masks]), refs, samples])
    return (history, stages.loss_figure(history), stages.grid_figure(grid, f"{split} tiles: mask | Ref (own image) | sample"),
            _mask_use_metrics(model, tiles, rows, manifest, dict(report.get("mask_use") or {})))


def _mask_use_metrics(model: Any, tiles: TileSet, rows: pd.DataFrame, manifest: pd.DataFrame,
                      cfg: dict[str, Any]) -> dict[str, Any]:
    n = int(cfg.get("tiles", 16))
    if len(rows) < 2:  # too few held-out tiles: use the labelled tiles of every split
        rows = manifest[manifest["mask"].notna()]
    if n < 2 or len(rows) < 2:
        log.info("mask-use check skipped (needs at least 2 labelled tiles and mask_use.tiles >= 2)")
        return {}
    data = TileDataset(tiles, rows.head(n), split=None)
    batch = collate_items([data[i] for i in range(len(data))])
    try:
        result = mask_use(model, batch, cfg.get("timesteps") or DEFAULT_TIMESTEPS)
    except DiagnosticsError as err:
        log.warning("mask-use check skipped: %s", err)
        return {}
    log.info("mask use (%d tiles; loss with true vs other tiles' masks): %s", len(data), "; ".join(
        f"t={r['t']:.0f} {r['loss_true_mask']:.4f} vs {r['loss_other_mask']:.4f}, gain {r['mask_gain']:.3f}" for r in result))
    return {f"{key}_t{r['t']:.0f}": {"value": float(r[key]), "step": 0}
            for r in result for key in ("mask_gain", "loss_true_mask", "loss_other_mask")}
