"""A tiny, easy, generated segmentation task (colour tells the class) and a fast segmenter config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tisynth.classes import IGNORE_INDEX, ClassRegistry
from tisynth.io import TileSet, write_image
from tisynth.segmentation.pairs import Pair

# class 0 background (dark red), 1 (green), 2 (blue): colour tells the class, noise makes it less trivial
TOY_COLORS = np.array([[150, 60, 40], [50, 170, 60], [40, 70, 190]], dtype=np.float64)
TOY_SIZE = 32


def toy_registry() -> ClassRegistry:
    return ClassRegistry.from_records(
        [
            {"id": 0, "name": "bare", "color": [200, 100, 50]},
            {"id": 1, "name": "vegetation", "color": [0, 200, 0]},
            {"id": 2, "name": "water", "color": [0, 0, 255]},
        ],
        ignore_id=None,
    )


def toy_sample(rng: np.random.Generator, size: int = TOY_SIZE, ignore_rate: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """An image with two random rectangles (classes 1 and 2) on class 0, plus a few ignored pixels."""
    mask = np.zeros((size, size), np.uint8)
    for cls in (1, 2):
        h, w = rng.integers(size // 4, size // 2 + 1, 2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        mask[y:y + h, x:x + w] = cls
    img = TOY_COLORS[mask] + rng.normal(0, 20, (size, size, 3))
    mask[rng.random((size, size)) < ignore_rate] = IGNORE_INDEX
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_toy_tiles(root: Path, counts: dict[str, int], seed: int = 0, size: int = TOY_SIZE) -> pd.DataFrame:
    """A tile folder (images/*.png, masks/*.png) and its manifest with the contract's columns."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in counts.items():
        for i in range(n):
            name = f"{split}_{i:03d}"
            img, mask = toy_sample(rng, size)
            write_image(root / "images" / f"{name}.png", img)
            write_image(root / "masks" / f"{name}.png", mask)
            rows.append({"name": name, "split": split, "image": f"images/{name}.png", "mask": f"masks/{name}.png",
                         "source": "toy", "group": "toy"})
    return pd.DataFrame(rows)


def manifest_pairs(root: Path, manifest: pd.DataFrame, split: str) -> list[Pair]:
    rows = manifest[manifest["split"] == split]
    return [Pair(str(root / i), str(root / m)) for i, m in zip(rows["image"], rows["mask"])]


def tiny_config(**changes: dict) -> dict:
    """A segmenter that trains in a few seconds on 32x32 tiles, one CPU thread."""
    cfg = {
        "model": {"type": "segformer", "embed_dims": 16, "head_channels": 64, "dropout": 0.0},
        "data": {"crop_size": TOY_SIZE, "resize_ratio": None, "photometric": False, "cache_images": True},
        "train": {"iterations": 80, "val_interval": 40, "checkpoint_interval": 40, "batch_size": 4,
                  "log_interval": 40, "seed": 0, "device": "cpu", "num_threads": 1},
        "optimizer": {"type": "AdamW", "lr": 0.003, "weight_decay": 1e-4, "policy": "poly"},
        "inference": {"batch_size": 8},
    }
    for section, values in changes.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


def synthetic_set(
    root: Path, tiles: TileSet, manifest: pd.DataFrame, n_good: int = 4, n_bad: int = 2, seed: int = 5
) -> tuple[TileSet, pd.DataFrame]:
    """A synthetic set (folder + manifest with the contract's columns) for real training masks.

    The first ``n_good`` images follow their mask (class colours plus noise); the next ``n_bad``
    are uniformly "water" whatever the mask says, so most of their pixels contradict it.
    """
    rng = np.random.default_rng(seed)
    rows = []
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    for i in range(n_good + n_bad):
        real = train.iloc[i]
        mask = tiles.read_mask(real["mask"])
        if i < n_good:
            colours = TOY_COLORS[np.where(mask == IGNORE_INDEX, 0, mask)]
            img = np.clip(colours + rng.normal(0, 20, colours.shape), 0, 255).astype(np.uint8)
        else:
            img = np.zeros(mask.shape + (3,), np.uint8)
            img[:] = TOY_COLORS[2].astype(np.uint8)
        name = f"{real['name']}_seed_{i}"
        write_image(root / "images" / f"{name}.png", img)
        rows.append({"name": name, "image": f"images/{name}.png", "mask_name": real["name"], "mask": real["mask"],
                     "ref_name": "ref", "prompt": "p", "seed": i, "generator_version": "test"})
    return TileSet(root), pd.DataFrame(rows)
