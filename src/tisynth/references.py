"""Reference (Ref) images: the pool, and the pairing of masks with Refs for synthesis.

At synthesis time TISynth conditions every mask on a *Ref image* from the target domain, so
that the synthetic image takes the Ref's style. The pool is a set of unlabeled tiles (by
default the source's own training tiles; a target dataset's tiles for domain transfer), and
the *synthesis plan* lists every image to make: (mask, Ref, prompt, seed).

Seeds are per item and derived from (mask, Ref, k, base seed) with a stable hash, so an image
depends only on what it is conditioned on, never on batch size, order or the rest of the plan.
The training-time Ref augmentation is :class:`tisynth.generator.augment.RefAugment`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tisynth.io import DataError
from tisynth.params import split_names

STRATEGIES = ("random", "same", "same_group", "list")
POOL_COLUMNS = ["ref_name", "ref_domain", "ref", "ref_group"]
PLAN_COLUMNS = ["name", "mask_name", "mask", "image_of_mask", "ref_name", "ref_domain", "ref", "prompt", "seed", "k", "split"]


@dataclass(frozen=True)
class PairingConfig:
    strategy: str = "random"
    refs_per_mask: int = 1
    seeds_per_pair: int = 1
    exclude_self: bool = True
    list_file: str | None = None
    seed: int = 0
    base_seed: int = 0
    mask_splits: tuple[str, ...] = ("train",)
    mask_limit: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PairingConfig:
        pairing = params.get("pairing") or {}
        masks = params.get("masks") or {}
        cfg = cls(
            strategy=pairing.get("strategy", "random"),
            refs_per_mask=int(pairing.get("refs_per_mask", 1)),
            seeds_per_pair=int(params.get("seeds_per_pair", 1)),
            exclude_self=bool(pairing.get("exclude_self", True)),
            list_file=pairing.get("list_file"),
            seed=int(pairing.get("seed", 0)),
            base_seed=int(params.get("base_seed", 0)),
            mask_splits=tuple(masks.get("splits") or ("train",)),
            mask_limit=masks.get("limit"),
        )
        if cfg.strategy not in STRATEGIES:
            raise DataError(f"references.pairing.strategy must be one of {STRATEGIES}, got {cfg.strategy!r}")
        if cfg.refs_per_mask < 1 or cfg.seeds_per_pair < 1:
            raise DataError("references: refs_per_mask and seeds_per_pair must be >= 1")
        if cfg.strategy == "list" and not cfg.list_file:
            raise DataError("references.pairing.strategy 'list' needs pairing.list_file (CSV with mask_name,ref_name)")
        return cfg


def build_pool(manifest: pd.DataFrame, splits: str | Sequence[str] | None, domain: str) -> pd.DataFrame:
    """Ref pool rows from a tile manifest: every tile of the given splits (all when None)."""
    splits = split_names(splits)
    rows = manifest if not splits else manifest[manifest["split"].isin(list(splits))]
    if rows.empty:
        raise DataError(f"the Ref pool is empty: no {domain} tiles in splits {list(splits or [])}")
    return pd.DataFrame(
        {"ref_name": rows["name"].to_numpy(), "ref_domain": domain, "ref": rows["image"].to_numpy(),
         "ref_group": rows["group"].to_numpy()}
    ).reset_index(drop=True)


def target_pool_splits(target_manifest: pd.DataFrame) -> list[str]:
    """Target tiles that may serve as Refs: all of them, except the test tiles when the target
    has a split of its own (then its test tiles are kept for evaluation only)."""
    splits = set(target_manifest["split"])
    if "test" in splits and len(splits - {"test"}) > 0:
        return sorted(splits - {"test"})
    return sorted(splits)


def item_seed(mask_name: str, ref_name: str, k: int, base_seed: int) -> int:
    """A stable 31-bit seed for one synthetic image."""
    digest = hashlib.blake2b(f"{base_seed}|{mask_name}|{ref_name}|{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


def synthetic_name(mask_name: str, ref_name: str, k: int) -> str:
    return f"{mask_name}__ref_{ref_name}__k{k}"


def _choose_refs(mask_rows: pd.DataFrame, pool: pd.DataFrame, cfg: PairingConfig, list_root: Path | None) -> list[list[int]]:
    rng = np.random.default_rng(cfg.seed)
    index_by_name = {n: i for i, n in enumerate(pool["ref_name"])}
    choices: list[list[int]] = []
    listed: dict[str, list[str]] = {}
    if cfg.strategy == "list":
        path = Path(cfg.list_file)  # type: ignore[arg-type]
        if list_root is not None and not path.is_absolute() and not path.exists():
            path = list_root / path
        if not path.is_file():
            raise DataError(f"{path}: pairing list not found")
        table = pd.read_csv(path, dtype=str)
        if not {"mask_name", "ref_name"} <= set(table.columns):
            raise DataError(f"{path}: pairing list needs columns mask_name,ref_name")
        unknown = sorted(set(table["ref_name"]) - set(index_by_name))
        if unknown:
            raise DataError(f"{path}: Ref(s) {unknown[:5]} are not in the Ref pool")
        for m, r in zip(table["mask_name"], table["ref_name"]):
            listed.setdefault(m, []).append(r)
    for name, group in zip(mask_rows["name"], mask_rows["group"]):
        if cfg.strategy == "same":
            if name not in index_by_name:
                raise DataError(f"pairing 'same': tile {name!r} is not in the Ref pool (is the pool another domain?)")
            choices.append([index_by_name[name]])
        elif cfg.strategy == "list":
            choices.append([index_by_name[r] for r in listed.get(name, [])])
        else:
            candidates = np.arange(len(pool))
            if cfg.strategy == "same_group":
                candidates = candidates[pool["ref_group"].to_numpy() == group]
            if cfg.exclude_self:
                candidates = candidates[pool["ref_name"].to_numpy()[candidates] != name]
            if len(candidates) == 0:
                raise DataError(f"pairing {cfg.strategy!r}: no Ref candidate for mask {name!r}")
            n = min(cfg.refs_per_mask, len(candidates))
            choices.append(sorted(rng.choice(candidates, size=n, replace=False).tolist()))
    return choices


LIMIT_STREAM = 1  # the random stream of the mask sample, apart from the Ref draws of the same seed


def plan_synthesis(manifest: pd.DataFrame, pool: pd.DataFrame, cfg: PairingConfig, list_root: Path | None = None) -> pd.DataFrame:
    """The synthesis plan: one row per synthetic image (mask × Ref × seed)."""
    masks = manifest[manifest["mask"].notna() & manifest["split"].isin(list(cfg.mask_splits))]
    masks = masks.sort_values("name").reset_index(drop=True)
    if cfg.mask_limit and int(cfg.mask_limit) < len(masks):
        # a seeded sample, not the first names: names often sort by scene class (builtup_0001, ...)
        keep = np.random.default_rng([cfg.seed, LIMIT_STREAM]).choice(len(masks), size=int(cfg.mask_limit), replace=False)
        masks = masks.iloc[np.sort(keep)].reset_index(drop=True)
    if masks.empty:
        raise DataError(f"no labelled tiles in splits {list(cfg.mask_splits)} to synthesise for")
    rows = []
    for (_, m), refs in zip(masks.iterrows(), _choose_refs(masks, pool, cfg, list_root)):
        for r in refs:
            ref = pool.iloc[r]
            for k in range(cfg.seeds_per_pair):
                rows.append({
                    "name": synthetic_name(m["name"], ref["ref_name"], k),
                    "mask_name": m["name"], "mask": m["mask"], "image_of_mask": m["image"],
                    "ref_name": ref["ref_name"], "ref_domain": ref["ref_domain"], "ref": ref["ref"],
                    "prompt": m["prompt"], "seed": item_seed(m["name"], ref["ref_name"], k, cfg.base_seed),
                    "k": k, "split": m["split"],
                })
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    if plan.empty:
        raise DataError("the synthesis plan is empty (a pairing list that names no mask of the chosen splits?)")
    return plan
