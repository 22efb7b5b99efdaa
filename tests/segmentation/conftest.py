"""Shared fixtures: the toy task's registry and tiles, and a segmenter trained on them once."""

from __future__ import annotations

import pandas as pd
import pytest

from tisynth.classes import ClassRegistry
from tisynth.io import TileSet

from .toydata import manifest_pairs, tiny_config, toy_registry, write_toy_tiles


@pytest.fixture(scope="session")
def registry() -> ClassRegistry:
    return toy_registry()


@pytest.fixture(scope="session")
def toy_tiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[TileSet, pd.DataFrame]:
    root = tmp_path_factory.mktemp("toy_tiles")
    manifest = write_toy_tiles(root, {"train": 16, "val": 6, "test": 8}, seed=1)
    return TileSet(root), manifest


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, toy_tiles, registry):
    """A tiny segmenter trained once on the toy tiles (train split, selected on val)."""
    from tisynth.segmentation.train import train_segmenter

    tiles, manifest = toy_tiles
    work = tmp_path_factory.mktemp("trained") / "job"
    seg = train_segmenter(tiny_config(), registry, manifest_pairs(tiles.root, manifest, "train"),
                          manifest_pairs(tiles.root, manifest, "val"), work, label="fixture")
    return seg, work
