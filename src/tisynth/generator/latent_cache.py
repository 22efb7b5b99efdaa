"""A latent cache: every training tile encoded once, in its 8 dihedral variants.

Training a latent diffusion model on a CPU spends most of each step re-encoding the same tiles
with the autoencoder (TAEF2 at 224²: about ten times a small UNet's forward pass). The cache
encodes each tile once per autoencoder, in all 8 dihedral variants (4 rotations × optional
flip: overhead imagery has no "up"), and training then reads latents, never pixels. Masks are
not cached: their variants are exact index permutations, made on the fly.

Encoding every variant is the point: a learned encoder is not equivariant to rotations and
flips (TAEF2 on GID-5 tiles: rotating the latent instead of the image is off by about the
latents' own variance), so variants cannot be made in latent space. ``variants`` picks how many
are encoded: 8 (the whole group), 4 (the four rotations), 2 (identity and the horizontal flip,
the method's own flip augmentation) or 1 (none); the cost is one encoder pass per tile and
variant, once.

Layout of a cache folder (one per autoencoder fingerprint, variant count and dtype, so a changed
autoencoder or setting never reuses or deletes another's latents)::

    <root>/<fingerprint>-v<V>-<dtype>/cache.json     autoencoder config + weights fingerprint, variants
    <root>/<fingerprint>-v<V>-<dtype>/latents/<name>.safetensors   "latents": V×C×h×w (fp16 or fp32)
    <root>/<fingerprint>-v<V>-<dtype>/sources/<name>.txt   digest of the image bytes it was encoded from

Each tile's file is written atomically; a rerun skips tiles already there and encoded from the
same image bytes (resumable; a tile rewritten under its name is encoded again), and a cache
whose ``cache.json`` belongs to other weights is refused rather than mixed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tisynth.classes import IGNORE_INDEX
from tisynth.errors import TisynthError
from tisynth.generator.autoencoders import LatentAutoencoder
from tisynth.generator.data import TileDataset, TileDatasetError, collate_latent_items, uint8_to_images
from tisynth.styles import Style, StyleFamily, apply_style, style_sets
from tisynth.io import TileSet, atomic_path, write_json_atomic
from tisynth.runs import ItemRecords, file_digest, settings_digest, weights_digest
from tisynth.weights import read_safetensors

CACHE_FILE = "cache.json"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
VARIANT_SETS = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}
"""Dihedral variants encoded for each ``variants`` setting (see :func:`dihedral`)."""


class LatentCacheError(TisynthError, ValueError):
    """A latent cache that cannot be built or read as asked."""


def dihedral(x: np.ndarray | torch.Tensor, variant: int) -> Any:
    """Variant ``0..7`` of an image/mask (last two axes spatial): ``v // 4`` flips, ``v % 4`` quarter turns."""
    if not 0 <= int(variant) < 8:
        raise LatentCacheError(f"dihedral variant must be 0..7, got {variant}")
    if isinstance(x, torch.Tensor):
        y = x.flip(-1) if variant >= 4 else x
        return torch.rot90(y, int(variant) % 4, dims=(-2, -1))
    y = x[..., ::-1] if variant >= 4 else x
    return np.ascontiguousarray(np.rot90(y, int(variant) % 4, axes=(-2, -1)))


def weights_fingerprint(module: torch.nn.Module, config: Any = None) -> str:
    """A short hash of a module's weights (and a config), e.g. the autoencoder's."""
    return weights_digest(module, extra=config)


def build_latent_cache(
    autoencoder: LatentAutoencoder,
    tiles: TileSet,
    manifest: pd.DataFrame,
    root: str | Path,
    variants: int = 8,
    batch_size: int = 16,
    dtype: str = "float16",
    progress: bool = True,
    require_masks: bool = True,
) -> dict[str, Any]:
    """Encode the labelled tiles of ``manifest`` (all rows given) into ``root``; returns the cache's description.

    ``require_masks=False`` encodes every row with an image, masks or not (mask-free training
    tiles: a target domain's or an unlabeled pool); their masks are never read.

    Resumable: tiles whose latents exist and were encoded from the same image bytes
    (``sources/``, :class:`tisynth.runs.ItemRecords`) are skipped. ``variants``: 1, 2, 4 or 8 (:data:`VARIANT_SETS`).
    The cache lives in ``root/<autoencoder fingerprint>-v<variants>-<dtype>``: another autoencoder,
    variant count or dtype gets a new folder, and the old one is kept.
    """
    if variants not in VARIANT_SETS:
        raise LatentCacheError(f"variants must be one of {sorted(VARIANT_SETS)}, got {variants}")
    if dtype not in DTYPES:
        raise LatentCacheError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    rows = TileDataset(tiles, manifest, split=None).rows if require_masks else image_rows(manifest)
    config = autoencoder.get_config()
    fp = weights_fingerprint(autoencoder, config)
    folder = Path(root) / f"{fp}-v{variants}-{dtype}"
    meta = {"fingerprint": fp, "autoencoder": config, "variants": variants, "dtype": dtype,
            "latent_channels": autoencoder.latent_channels, "factor": autoencoder.downsample_factor}
    meta_path = folder / CACHE_FILE
    if meta_path.is_file():
        have = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: have.get(k) for k in meta} != meta:
            raise LatentCacheError(f"{meta_path} describes another cache ({have}); expected {meta}")
    else:
        write_json_atomic(meta_path, meta)
    # a latent is finished work only for the image bytes it was encoded from: a tile rewritten
    # under the same name (the tiles ingested again with other settings) is encoded again
    records = ItemRecords(folder)
    wanted = {str(n): file_digest(tiles.path(str(i))) for n, i in zip(rows["name"], rows["image"])}
    todo = [n for n in wanted if not records.is_done(n, folder / "latents" / f"{n}.safetensors", wanted[n])]
    by_name = rows.set_index("name")
    device = next(autoencoder.parameters(), torch.empty(0)).device
    bar = tqdm(total=len(todo) * variants, desc="latent cache", unit="latent", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(todo), max(1, batch_size // variants)):
            names = todo[start : start + max(1, batch_size // variants)]
            images = [tiles.read_image(str(by_name.loc[n, "image"])) for n in names]
            sizes = {im.shape for im in images}
            if len(sizes) > 1:
                raise LatentCacheError(f"tiles {names} differ in size {sorted(sizes)}; the cache needs one tile size")
            batch = uint8_to_images(np.stack(images))
            stack = torch.cat([dihedral(batch, v) for v in VARIANT_SETS[variants]])  # variant-major
            latents = autoencoder.encode(stack.to(device)).float().cpu()
            latents = latents.view(variants, len(names), *latents.shape[1:]).transpose(0, 1)
            for name, lat in zip(names, latents):
                out = folder / "latents" / f"{name}.safetensors"
                records.begin(name, out)
                with atomic_path(out) as tmp:
                    save_file({"latents": lat.to(DTYPES[dtype]).contiguous()}, str(tmp))
                records.finish(name, wanted[name])
            bar.update(len(names) * variants)
    bar.close()
    return {**meta, "folder": str(folder), "tiles": int(len(rows)), "encoded_now": len(todo),
            "names": [str(n) for n in rows["name"]]}


def image_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """``name``, ``image`` (and ``group`` when present) of every row with an image; masks are not looked at."""
    missing = [c for c in ("name", "image") if c not in manifest.columns]
    if missing:
        raise LatentCacheError(f"tile manifest lacks column(s) {missing}")
    rows = manifest[manifest["image"].notna()]
    if rows.empty:
        raise LatentCacheError(f"no tiles with an image in the manifest ({len(manifest)} rows)")
    cols = ["name", "image"] + (["group"] if "group" in rows.columns else [])
    return rows[cols].reset_index(drop=True)


class LatentTileDataset(Dataset):
    """Training items from a latent cache: one item per (tile, dihedral variant).

    An item is ``{"latent": C×h×w, "variants": V×C×h×w, "variant_index": int, "mask": the mask in
    that variant, "prompt", "name"}``; :func:`tisynth.generator.data.collate_items` batches them.
    ``image_item(i)`` gives tile ``i`` with its pixels (for sample grids).
    """

    def __init__(self, cache: dict[str, Any], tiles: TileSet, manifest: pd.DataFrame):
        self.tiles = TileDataset(tiles, manifest, split=None)
        self.folder = Path(cache["folder"])
        self.variants = int(cache["variants"])
        meta_path = self.folder / CACHE_FILE
        if not meta_path.is_file():
            raise LatentCacheError(f"{self.folder}: no {CACHE_FILE}; build the cache first")
        missing = [n for n in self.tiles.rows["name"] if not (self.folder / "latents" / f"{n}.safetensors").is_file()]
        if missing:
            raise LatentCacheError(f"{self.folder}: {len(missing)} tile(s) not cached, e.g. {missing[:3]}; rebuild the cache")

    def __len__(self) -> int:
        return len(self.tiles) * self.variants

    def image_item(self, index: int) -> dict[str, Any]:
        return self.tiles[int(index) % len(self.tiles)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        tile, variant = divmod(int(index), self.variants)
        row = self.tiles.rows.iloc[tile]
        stack = read_safetensors(self.folder / "latents" / f"{row['name']}.safetensors")["latents"].float()
        mask = self.tiles.tileset.read_mask(str(row["mask"]))
        return {
            "name": str(row["name"]),
            "latent": stack[variant],
            "variants": stack,
            "variant_index": variant,
            "mask": dihedral(mask, VARIANT_SETS[self.variants][variant]),
            "prompt": str(row["prompt"]),
        }

    def ref_latent_for(self, index: int) -> torch.Tensor:
        """Without style pairs, the Ref of item ``index`` is another orientation of its own tile
        (the tile itself with one variant); chosen by the index, so an item always has the same Ref."""
        tile, variant = divmod(int(index), self.variants)
        stack = read_safetensors(self.folder / "latents" / f"{self.tiles.rows.iloc[tile]['name']}.safetensors")["latents"]
        if self.variants == 1:
            return stack[0].float()
        j = _pick(index, self.variants - 1, salt="own")
        return stack[j + 1 if j >= variant else j].float()


# ---------------------------------------------------------------------- style pairs
STYLE_FILE = "styles.json"


def _pick(index: int, n: int, salt: str = "") -> int:
    """A fixed pseudo-random choice in ``0..n-1`` for item ``index``."""
    if n <= 1:
        return 0
    return int(settings_digest([salt, int(index)])[:12], 16) % n


def build_style_cache(
    autoencoder: LatentAutoencoder,
    tiles: TileSet,
    manifest: pd.DataFrame,
    cache: Mapping[str, Any],
    family: StyleFamily | Mapping[str, Any] | None,
    k: int,
    set_size: int = 3,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every labelled tile of ``manifest`` in ``k`` random styles, beside the plain cache ``cache``.

    Round ``r`` (0..k-1) partitions the tiles into seeded sets of ``set_size`` (within the
    manifest's ``group`` where it has one, :func:`tisynth.styles.style_sets`); each set
    draws one style from ``family`` and all its tiles are rendered in it and encoded. A training
    item (tile, round) then takes as its Ref another tile of its set, in the same style.

    Layout: ``<cache folder>/styles/<digest>/styles.json`` (family, rounds, sets, each set's
    style) and ``latents/<name>.safetensors`` (``latents``: k×C×h×w, the identity orientation).
    The digest covers the family, ``k``, ``set_size``, ``seed`` and the tiles with their groups,
    so other settings get another folder; per-tile records make it resumable.
    """
    family = StyleFamily.from_dict(family)
    if int(k) < 1:
        raise LatentCacheError(f"style_pairs.k must be at least 1, got {k}")
    rows = TileDataset(tiles, manifest, split=None).rows
    groups = None
    if "group" in manifest.columns:
        by_name = manifest.set_index("name")["group"]
        groups = [str(by_name.get(n, "")) for n in rows["name"]]
    names = [str(n) for n in rows["name"]]
    rounds = [style_sets(names, groups, int(set_size), int(settings_digest([seed, "sets", r])[:8], 16)) for r in range(int(k))]
    styles = [[family.draw(int(settings_digest([seed, "style", r, j])[:12], 16)).to_dict() for j in range(len(sets))]
              for r, sets in enumerate(rounds)]
    digest = settings_digest([family.to_dict(), int(k), int(set_size), int(seed), sorted(zip(names, groups or [""] * len(names)))])
    folder = Path(cache["folder"]) / "styles" / digest
    meta = {"family": family.to_dict(), "k": int(k), "set_size": int(set_size), "seed": int(seed), "sets": rounds, "styles": styles}
    meta_path = folder / STYLE_FILE
    if not meta_path.is_file():
        write_json_atomic(meta_path, meta)
    # tile -> (round -> set index)
    member = {n: [0] * int(k) for n in names}
    for r, sets in enumerate(rounds):
        for j, members in enumerate(sets):
            for n in members:
                member[n][r] = j
    records = ItemRecords(folder)
    wanted = {n: file_digest(tiles.path(str(i))) for n, i in zip(names, rows["image"])}
    todo = [n for n in names if not records.is_done(n, folder / "latents" / f"{n}.safetensors", wanted[n])]
    by_name = rows.set_index("name")
    device = next(autoencoder.parameters(), torch.empty(0)).device
    per_call = max(1, int(batch_size) // int(k))
    bar = tqdm(total=len(todo) * int(k), desc="style pairs", unit="latent", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(todo), per_call):
            chunk = todo[start : start + per_call]
            images = []
            for n in chunk:
                image = tiles.read_image(str(by_name.loc[n, "image"]))
                images += [apply_style(image, Style.from_dict(styles[r][member[n][r]]), n) for r in range(int(k))]
            if len({im.shape for im in images}) > 1:
                raise LatentCacheError(f"tiles {chunk} differ in size; the cache needs one tile size")
            latents = autoencoder.encode(uint8_to_images(np.stack(images)).to(device)).float().cpu()
            latents = latents.view(len(chunk), int(k), *latents.shape[1:])
            for n, lat in zip(chunk, latents):
                out = folder / "latents" / f"{n}.safetensors"
                records.begin(n, out)
                with atomic_path(out) as tmp:
                    save_file({"latents": lat.to(DTYPES[str(cache.get("dtype", "float16"))]).contiguous()}, str(tmp))
                records.finish(n, wanted[n])
            bar.update(len(chunk) * int(k))
    bar.close()
    return {"folder": str(folder), "k": int(k), "set_size": int(set_size), "digest": digest, "encoded_now": len(todo)}


class PairedLatentDataset(Dataset):
    """Stage-B items whose Ref is another tile: style pairs and mask-free tiles, on top of a latent cache.

    Items, in this order:

    * each labelled tile in each cached orientation (its own, source look); the Ref is another
      tile of the tile's set of style round 0 in the same look (with ``styles``), else another
      orientation of the tile itself;
    * with ``styles``: each labelled tile in each of the k styles; the Ref is another tile of its
      set in that round, in the same style;
    * each mask-free tile (``unlabeled``: a target domain's tiles, an unlabeled pool), ``repeat``
      times; mask and prompt are dropped (``cond_keep`` False, all-ignore mask, empty prompt) and
      the Ref is another tile of the same domain. Their masks are never read.

    Args:
        cache: the plain cache of the labelled tiles (:func:`build_latent_cache`).
        tiles, manifest: the labelled tiles (their masks and prompts are read).
        styles: :func:`build_style_cache`'s description, or None.
        unlabeled: ``[{"cache": build_latent_cache(..., require_masks=False), "repeat": int}]``.
    """

    def __init__(self, cache: Mapping[str, Any], tiles: TileSet, manifest: pd.DataFrame,
                 styles: Mapping[str, Any] | None = None, unlabeled: Sequence[Mapping[str, Any]] = ()):
        self.plain = LatentTileDataset(dict(cache), tiles, manifest)
        self.names = [str(n) for n in self.plain.tiles.rows["name"]]
        self.factor = int(cache.get("factor", 8))
        self.styles = None
        if styles is not None:
            self.style_folder = Path(styles["folder"])
            meta = json.loads((self.style_folder / STYLE_FILE).read_text(encoding="utf-8"))
            self.k = int(meta["k"])
            missing = [n for n in self.names if not (self.style_folder / "latents" / f"{n}.safetensors").is_file()]
            if missing:
                raise LatentCacheError(f"{self.style_folder}: {len(missing)} tile(s) have no styled latents, e.g. {missing[:3]}")
            self.sets = {}  # (round, name) -> the other members of its set
            for r, sets in enumerate(meta["sets"]):
                for members in sets:
                    for n in members:
                        self.sets[(r, n)] = [m for m in members if m != n]
            self.styles = meta
        self.unlabeled = []
        for u in unlabeled:
            folder = Path(u["cache"]["folder"])
            names = [str(n) for n in u["cache"]["names"]]
            if len(names) < 2:
                raise LatentCacheError(f"{folder}: mask-free training tiles need at least two tiles (one is the other's Ref)")
            self.unlabeled.append({"folder": folder, "names": names, "repeat": max(1, int(u.get("repeat", 1)))})
        self.n_plain = len(self.plain)
        self.n_styled = len(self.names) * self.k if self.styles is not None else 0
        self.n_unlabeled = sum(len(u["names"]) * u["repeat"] for u in self.unlabeled)

    def __len__(self) -> int:
        return self.n_plain + self.n_styled + self.n_unlabeled

    @property
    def tiles(self) -> TileDataset:
        return self.plain.tiles

    def image_item(self, index: int) -> dict[str, Any]:
        return self.plain.image_item(index)

    def _styled(self, name: str) -> torch.Tensor:
        return read_safetensors(self.style_folder / "latents" / f"{name}.safetensors")["latents"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < self.n_plain:
            item = self.plain[index]
            if self.styles is not None:
                others = self.sets[(0, item["name"])]
                other = others[_pick(index, len(others), "plain")]
                ref = read_safetensors(self.plain.folder / "latents" / f"{other}.safetensors")["latents"][0].float()
            else:
                ref = self.plain.ref_latent_for(index)
            return {**item, "ref_latent": ref, "cond_keep": True}
        index -= self.n_plain
        if index < self.n_styled:
            tile, r = divmod(index, self.k)
            name = self.names[tile]
            item = self.plain[tile * self.plain.variants]  # identity orientation: mask and prompt
            latent = self._styled(name)[r].float()
            others = self.sets[(r, name)]
            ref = self._styled(others[_pick(index, len(others), "styled")])[r].float()
            return {**item, "latent": latent, "variants": latent[None].repeat(self.plain.variants, 1, 1, 1),
                    "variant_index": 0, "ref_latent": ref, "cond_keep": True, "style_round": r}
        index -= self.n_styled
        for d, u in enumerate(self.unlabeled):
            n = len(u["names"]) * u["repeat"]
            if index < n:
                tile = index % len(u["names"])
                name = u["names"][tile]
                latent = read_safetensors(u["folder"] / "latents" / f"{name}.safetensors")["latents"][0].float()
                j = _pick(index, len(u["names"]) - 1, f"unlabeled:{d}")
                other = u["names"][j + 1 if j >= tile else j]
                ref = read_safetensors(u["folder"] / "latents" / f"{other}.safetensors")["latents"][0].float()
                h, w = latent.shape[-2:]
                return {"name": name, "latent": latent, "variants": latent[None].repeat(self.plain.variants, 1, 1, 1),
                        "variant_index": 0, "mask": np.full((h * self.factor, w * self.factor), IGNORE_INDEX, np.uint8),
                        "prompt": "", "ref_latent": ref, "cond_keep": False}
            index -= n
        raise IndexError(index)
