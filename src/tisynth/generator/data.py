"""Training data for the generator: (image, index mask, prompt) items.

An item is a dict ``{"image": uint8 H×W×3, "mask": uint8 H×W (index space), "prompt": str}``
(``name`` optional). Any ``Sequence`` of such dicts (or of ``(image, mask, prompt)`` tuples)
works as a training set; :class:`TileDataset` reads them from a :class:`~tisynth.io.TileSet`
and its manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tisynth.errors import TisynthError
from tisynth.io import TileSet


class TileDatasetError(TisynthError, ValueError):
    """A training item that cannot be used."""


class TileDataset(Dataset):
    """Tiles of one split of a manifest (columns ``name``, ``split``, ``image``, ``mask``, ``prompt``).

    Args:
        tileset: the tile folder.
        manifest: the tile manifest (a pandas DataFrame).
        split: rows with this ``split`` value (``None``: all rows); rows without a mask are skipped.
    """

    REQUIRED = ("name", "image", "mask", "prompt")

    def __init__(self, tileset: TileSet, manifest: Any, split: str | None = "train"):
        missing = [c for c in self.REQUIRED if c not in manifest.columns]
        if missing:
            raise TileDatasetError(f"tile manifest lacks column(s) {missing}; needs {list(self.REQUIRED)}")
        rows = manifest
        if split is not None:
            if "split" not in manifest.columns:
                raise TileDatasetError("tile manifest has no `split` column; pass split=None to use every row")
            rows = rows[rows["split"] == split]
        rows = rows[rows["mask"].notna()]
        if len(rows) == 0:
            raise TileDatasetError(f"no labelled tiles with split {split!r} in the manifest ({len(manifest)} rows)")
        self.tileset = tileset
        self.rows = rows[list(self.REQUIRED)].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[int(index)]
        return {
            "name": str(row["name"]),
            "image": self.tileset.read_image(str(row["image"])),
            "mask": self.tileset.read_mask(str(row["mask"])),
            "prompt": str(row["prompt"]),
        }


def as_item(item: Any, where: str = "item") -> dict[str, Any]:
    """Normalise a dict or an ``(image, mask, prompt)`` tuple to the item dict, checking shapes."""
    if isinstance(item, Mapping):
        image, mask, prompt = item.get("image"), item.get("mask"), item.get("prompt")
    elif isinstance(item, Sequence) and len(item) == 3:
        image, mask, prompt = item
    else:
        raise TileDatasetError(f"{where}: expected a dict with image/mask/prompt or an (image, mask, prompt) tuple")
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise TileDatasetError(f"{where}: image must be uint8 H×W×3, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise TileDatasetError(f"{where}: mask shape {mask.shape} differs from image size {image.shape[:2]}")
    if not isinstance(prompt, str):
        raise TileDatasetError(f"{where}: prompt must be a string, got {type(prompt).__name__}")
    return {"image": image, "mask": mask.astype(np.uint8, copy=False), "prompt": prompt}


def collate_items(items: Sequence[Any]) -> dict[str, Any]:
    """Items -> ``{"images": float B×3×H×W in [-1, 1], "masks": uint8 B×H×W, "prompts": list}``.

    Items of a latent cache (with ``latent``) are batched by :func:`collate_latent_items`.
    """
    if items and isinstance(items[0], Mapping) and "latent" in items[0]:
        return collate_latent_items(items)
    norm = [as_item(it, f"item {i}") for i, it in enumerate(items)]
    sizes = {it["image"].shape for it in norm}
    if len(sizes) > 1:
        raise TileDatasetError(f"items of one batch must share a size, got {sorted(sizes)}")
    images = torch.from_numpy(np.stack([it["image"] for it in norm])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    masks = torch.from_numpy(np.stack([it["mask"] for it in norm]))
    return {"images": images, "masks": masks, "prompts": [it["prompt"] for it in norm]}


def collate_latent_items(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch latent-cache items (:class:`tisynth.generator.latent_cache.LatentTileDataset`).

    Always: ``latents``, ``variants``, ``variant_index``, ``masks``, ``prompts``. Items that name
    their own Ref (style pairs, mask-free tiles) add ``ref_latents`` (B×C×h×w, uncropped) and
    ``cond_keep`` (False where the item has no mask and prompt to condition on).
    """
    shapes = {tuple(it["latent"].shape) for it in items}
    if len(shapes) > 1:
        raise TileDatasetError(f"cached latents of one batch must share a shape, got {sorted(shapes)}")
    out = {
        "latents": torch.stack([it["latent"] for it in items]),
        "variants": torch.stack([it["variants"] for it in items]),
        "variant_index": torch.tensor([int(it["variant_index"]) for it in items]),
        "masks": torch.from_numpy(np.stack([it["mask"] for it in items]).astype(np.uint8)),
        "prompts": [it["prompt"] for it in items],
    }
    with_ref = [it.get("ref_latent") is not None for it in items]
    if any(with_ref):
        if not all(with_ref):
            raise TileDatasetError("a batch mixes items with and without their own Ref latent")
        out["ref_latents"] = torch.stack([it["ref_latent"] for it in items])
        out["cond_keep"] = torch.tensor([bool(it.get("cond_keep", True)) for it in items])
    return out


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (B×3×H×W) -> uint8 B×H×W×3."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def uint8_to_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 B×H×W×3 (or one H×W×3) -> float B×3×H×W in [-1, 1]."""
    t = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise TileDatasetError(f"images must be uint8 B×H×W×3, got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0
