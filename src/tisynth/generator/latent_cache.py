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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tisynth.errors import TisynthError
from tisynth.generator.autoencoders import LatentAutoencoder
from tisynth.generator.data import TileDataset, TileDatasetError, uint8_to_images
from tisynth.io import TileSet, atomic_path, write_json_atomic
from tisynth.runs import ItemRecords, file_digest, weights_digest
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
) -> dict[str, Any]:
    """Encode the labelled tiles of ``manifest`` (all rows given) into ``root``; returns the cache's description.

    Resumable: tiles whose latents exist and were encoded from the same image bytes
    (``sources/``, :class:`tisynth.runs.ItemRecords`) are skipped. ``variants``: 1, 2, 4 or 8 (:data:`VARIANT_SETS`).
    The cache lives in ``root/<autoencoder fingerprint>-v<variants>-<dtype>``: another autoencoder,
    variant count or dtype gets a new folder, and the old one is kept.
    """
    if variants not in VARIANT_SETS:
        raise LatentCacheError(f"variants must be one of {sorted(VARIANT_SETS)}, got {variants}")
    if dtype not in DTYPES:
        raise LatentCacheError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    rows = TileDataset(tiles, manifest, split=None).rows  # validates the manifest
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
    return {**meta, "folder": str(folder), "tiles": int(len(rows)), "encoded_now": len(todo)}


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


def collate_latent_items(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`LatentTileDataset` items."""
    shapes = {tuple(it["latent"].shape) for it in items}
    if len(shapes) > 1:
        raise TileDatasetError(f"cached latents of one batch must share a shape, got {sorted(shapes)}")
    return {
        "latents": torch.stack([it["latent"] for it in items]),
        "variants": torch.stack([it["variants"] for it in items]),
        "variant_index": torch.tensor([int(it["variant_index"]) for it in items]),
        "masks": torch.from_numpy(np.stack([it["mask"] for it in items]).astype(np.uint8)),
        "prompts": [it["prompt"] for it in items],
    }
