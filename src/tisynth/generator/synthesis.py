"""Synthesis runs: turn a synthesis plan into image files, resumably.

:func:`write_synthetic_images` is the writer that the ``synthetic_images`` catalog entry
(an incremental :class:`~tisynth.datasets.FileTreeDataset`) runs on its folder:

* each image is written atomically under its plan name, with a record of the inputs it was
  sampled from (``sources/<name>.txt``, :class:`tisynth.runs.ItemRecords`); an image that exists
  with the record of its current mask, Ref, prompt and seed is skipped, so an interrupted run
  resumes where it stopped and never duplicates work, and a mask or Ref rewritten under its name
  is sampled again (the old image moved to ``superseded/changed-inputs/``);
* a fingerprint of the generator and of the sampling settings is kept beside the images
  (``run.json``, :mod:`tisynth.runs`); when either changes, the old images are stale: they are
  moved aside, never deleted, to ``superseded/<digest of their fingerprint>/`` before sampling
  starts (delete them by hand when they are not needed);
* the sampling settings are validated when the settings are read, before any file is looked
  at, so a typo in a sampler key fails with nothing touched;
* ``shard_index``/``shard_count`` split the plan between processes or machines that write into
  the same folder (each takes every ``shard_count``-th item); under ``accelerate launch`` each
  process takes the shard of its rank. A final single-process run then finds everything done
  and indexes the whole set.

Every image depends only on its (mask, Ref, prompt, seed) (and, with Ref moments, on its Ref
set: :mod:`tisynth.generator.moments`), so neither the batch size nor the sharding changes the
computation; a CPU may pick other kernels for another batch size, which can round a few pixels
one grey level apart.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tisynth.io import DataError, TileSet, atomic_path, write_image
from tisynth.runs import MANIFEST, ItemRecords, RunFolder, file_digest, settings_digest, weights_digest

log = logging.getLogger(__name__)

LEGACY_FINGERPRINT = "fingerprint.json"  # the manifest name before run.json
MOMENT_CACHE = "ref_moments.safetensors"  # the Ref-moment vectors of the run (a cache: read when its key matches)


@dataclass(frozen=True)
class SynthesisSettings:
    sample: dict[str, Any]
    chunk: int = 32
    image_format: str = "png"
    shard_index: int = 0
    shard_count: int = 1
    ref_moments: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> SynthesisSettings:
        """Settings from ``params:sample``. Under ``accelerate launch`` (``WORLD_SIZE`` > 1 in the
        environment) and without an explicit shard, each process takes the shard of its rank."""
        shard = dict(params.get("shard") or {})
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", "1"))
        if world > 1 and int(shard.get("count", 1)) == 1:
            shard = {"index": int(env.get("RANK", "0")), "count": world}
        cfg = cls(
            sample=dict(params.get("sampler") or {}),
            chunk=int(params.get("chunk", 32)),
            image_format=str(params.get("image_format", "png")),
            shard_index=int(shard.get("index", 0)),
            shard_count=int(shard.get("count", 1)),
            ref_moments=params.get("ref_moments") or {},
        )
        from tisynth.generator.moments import MomentSettings
        from tisynth.generator.sample import SampleConfig

        SampleConfig.from_dict(cfg.sample)  # unknown or invalid sampler keys fail here, before any file is touched
        moments = MomentSettings.from_params(cfg.ref_moments)
        mode = cfg.sample.get("mode", "tisynth")
        if moments.enabled and mode != "tisynth":
            raise DataError(f"sample.ref_moments.strength is {moments.strength}, but sample.sampler.mode {mode!r} samples "
                            "without Refs; Ref moments need mode tisynth (set the strength to 0 for this mode)")
        if cfg.image_format not in ("png", "jpg"):
            raise DataError(f"sample.image_format must be png or jpg, got {cfg.image_format!r}")
        if not 0 <= cfg.shard_index < cfg.shard_count:
            raise DataError(f"sample.shard: index {cfg.shard_index} not in 0..{cfg.shard_count - 1}")
        return cfg


def generator_version(model: torch.nn.Module) -> str:
    """A short content hash of a generator's weights (what a synthetic image came from)."""
    return weights_digest(model)


def run_fingerprint(version: str, sample: Mapping[str, Any], image_format: str,
                    moments: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a synthesis folder's images depend on besides their own inputs; ``moments`` (the Ref-moment
    settings and digests of the tile sets their moments were taken over) only when Ref moments are on, so runs without them
    keep their fingerprints."""
    keep = {k: v for k, v in sample.items() if k not in ("batch_size", "progress", "device")}
    out = {"generator_version": version, "sampler": keep, "image_format": image_format}
    if moments:
        out["ref_moments"] = dict(moments)
    return out


def plan_moments(model: Any, plan: pd.DataFrame, tilesets: Mapping[str, TileSet],
                 cfg: Any, cache: Path | None = None, version: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The latent moments a run with Ref moments needs, taken over the **whole** plan (so every shard agrees):
    ``home`` over the images of the plan's masks (the labelled source tiles) and, with ``pool: set``, one vector
    per Ref domain over the plan's distinct Refs of that domain; each set is at most ``cfg.tiles`` tiles drawn
    with ``cfg.seed``. Returns the vectors and, per vector, a digest of the bytes of the tiles it was taken
    over (for the run's fingerprint: float noise does not resample, but a rewritten tile of a set, or a plan
    that draws other tiles, makes the whole folder stale: its images are moved aside and sampled again).

    ``cache``: a file (safetensors) that keeps the vectors under a key of the generator ``version`` (required
    with it), the pool, the transform and the sets' digests (the strength does not change the vectors); a rerun with the same key reads them instead of encoding every set
    again (a run that resumes with nothing left to sample starts in seconds)."""
    from tisynth.generator.moments import draw_names, encode_home_moments, encode_moments

    if "image_of_mask" not in plan.columns:
        raise DataError("Ref moments need the plan's image_of_mask column (the labelled tile of each mask)")
    sets = {"home": ("source", draw_names(plan["image_of_mask"].astype(str), cfg.tiles, cfg.seed))}
    if cfg.pool == "set":
        for domain, rows in plan.groupby("ref_domain", sort=True):
            sets[f"ref:{domain}"] = (str(domain), draw_names(rows["ref"].astype(str), cfg.tiles, cfg.seed))
    sources = {}
    for key, (domain, names) in sets.items():
        tileset = _tileset(tilesets, domain)
        sources[key] = settings_digest([file_digest(tileset.path(n)) for n in names])
    if cache is not None and not version:
        raise ValueError("plan_moments: a moment cache needs the generator version (its vectors belong to one autoencoder)")
    # what the vectors depend on: the autoencoder (in the version), the sets' bytes, how they are pooled
    cache_key = settings_digest({"version": version, "pool": cfg.pool, "transform": cfg.transform, "sets": sources})
    known = _read_moment_cache(cache, cache_key, set(sets)) if cache is not None else None
    if known is not None:
        log.info("Ref moments: %s read from %s", ", ".join(sorted(known)), cache)
        return known, sources
    vectors = {}
    for key, (domain, names) in sets.items():
        tileset = _tileset(tilesets, domain)
        log.info("Ref moments: %s moments over %d %s tiles", key, len(names), domain)
        images = np.stack([tileset.read_image(n) for n in names])
        vectors[key] = (encode_home_moments(model, images, cfg.pool, transform=cfg.transform) if key == "home"
                        else encode_moments(model, images, transform=cfg.transform))
    if cache is not None:
        from safetensors.torch import save_file

        with atomic_path(cache) as tmp:
            save_file({k: v.contiguous() for k, v in vectors.items()}, str(tmp), metadata={"key": cache_key})
    return vectors, sources


def _read_moment_cache(path: Path, key: str, names: set[str]) -> dict[str, torch.Tensor] | None:
    """The vectors of a moment cache written under ``key`` with exactly ``names``; ``None`` when absent,
    written for other inputs, or unreadable (then the moments are encoded again and the file replaced)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key or set(f.keys()) != names:
                return None
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # a truncated or foreign file is only a cache: encode again
        log.warning("Ref moments: %s unreadable (%s); encoding the sets again", path, err)
        return None


def run_generator_version(folder: Path) -> str | None:
    """The generator version recorded in a synthesis folder's manifest (``None`` when there is none)."""
    for name, key in ((MANIFEST, "fingerprint"), (LEGACY_FINGERPRINT, None)):
        path = Path(folder) / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            data = data.get(key) if key else data
            if isinstance(data, dict) and "generator_version" in data:
                return data["generator_version"]
    return None


def image_path(name: str, image_format: str) -> str:
    return f"images/{name}.{image_format}"


def write_synthetic_images(
    folder: Path,
    model: Any,
    plan: pd.DataFrame,
    tilesets: Mapping[str, TileSet],
    settings: SynthesisSettings,
    version: str,
) -> int:
    """Sample every planned image that is not on disk yet; returns how many were made."""
    from tisynth.generator.sample import sample_images

    from tisynth.generator.moments import MomentSettings, MomentTransfer, encode_item_moments

    folder = Path(folder)
    mcfg = MomentSettings.from_params(settings.ref_moments)
    vectors, sets = (plan_moments(model, plan, tilesets, mcfg, folder / MOMENT_CACHE, version)
                     if mcfg.enabled and len(plan) else ({}, {}))
    recorded = {**mcfg.to_dict(), "sets": sets} if mcfg.enabled else None
    RunFolder.open(folder, run_fingerprint(version, settings.sample, settings.image_format, recorded),
                   entries=["images", ItemRecords.DIR], legacy_manifest=LEGACY_FINGERPRINT)
    (folder / "images").mkdir(parents=True, exist_ok=True)

    mine = plan.iloc[settings.shard_index :: settings.shard_count]
    # an image is finished work only for the inputs it was sampled from: a mask or Ref rewritten
    # under its name is sampled again (tisynth.runs.ItemRecords; one small file per image)
    records = ItemRecords(folder)
    wanted = {str(r.name): item_source(tilesets, r.mask, r.ref_domain, r.ref, r.prompt, r.seed)
              for r in mine.itertuples(index=False)}
    done = {n for n in wanted if records.is_done(n, folder / image_path(n, settings.image_format), wanted[n])}
    stale = sum((folder / image_path(n, settings.image_format)).exists() for n in set(wanted) - done)
    if stale:
        log.info("%d images were sampled from another mask or Ref, or not finished; sampling them again", stale)
    todo = mine[~mine["name"].astype(str).isin(done)]
    if len(todo) < len(mine):
        log.info("%d of %d images already on disk; sampling the other %d", len(mine) - len(todo), len(mine), len(todo))
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc="sampling", unit="img") as bar:
        for start in range(0, len(todo), settings.chunk):
            rows = todo.iloc[start : start + settings.chunk]
            masks = np.stack([tilesets["source"].read_mask(m) for m in rows["mask"]])
            refs = np.stack([_tileset(tilesets, d).read_image(r) for d, r in zip(rows["ref_domain"], rows["ref"])])
            transfer = None
            if mcfg.enabled:
                targets = (torch.stack([vectors[f"ref:{d}"] for d in rows["ref_domain"]]) if mcfg.pool == "set"
                           else encode_item_moments(model, refs, transform=mcfg.transform))
                transfer = MomentTransfer(vectors["home"], targets, mcfg.strength, mcfg.min_std, mcfg.transform)
            images = sample_images(model, masks, refs, list(rows["prompt"]), [int(s) for s in rows["seed"]], settings.sample,
                                   moments=transfer)
            for name, img in zip(rows["name"], images):
                out = folder / image_path(name, settings.image_format)
                records.begin(str(name), out)
                write_image(out, img)
                records.finish(str(name), wanted[str(name)])
            bar.update(len(rows))
    return len(todo)


def item_source(tilesets: Mapping[str, TileSet], mask: str, ref_domain: str, ref: str, prompt: str, seed: Any) -> str:
    """Digest of what one synthetic image is sampled from: its mask's and Ref's bytes, its prompt and seed."""
    ref_file = _tileset(tilesets, ref_domain).path(ref) if isinstance(ref, str) and ref else None
    return settings_digest([file_digest(tilesets["source"].path(mask)),
                            file_digest(ref_file) if ref_file is not None else None, str(prompt), int(seed)])



def _tileset(tilesets: Mapping[str, TileSet], domain: str) -> TileSet:
    if domain not in tilesets:
        raise DataError(f"the synthesis plan uses Refs from the {domain!r} domain, but no {domain} tiles were given")
    return tilesets[domain]


def index_synthetic(folder: TileSet, plan: pd.DataFrame, image_format: str) -> pd.DataFrame:
    """The synthetic manifest: plan rows whose image exists, with the generator version."""
    version = run_generator_version(folder.root)
    rows = plan.copy()
    rows["image"] = [image_path(n, image_format) for n in rows["name"]]
    exists = np.array([folder.path(p).is_file() for p in rows["image"]], dtype=bool)
    if not exists.all():
        log.warning("%d of %d planned images are missing (another shard still running?); indexing the %d present",
                    int((~exists).sum()), len(rows), int(exists.sum()))
    rows = rows[exists].reset_index(drop=True)
    rows["generator_version"] = version
    return rows
