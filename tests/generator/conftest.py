"""Fixtures for the generator tests: a small class registry, procedural tiles, the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tisynth.classes import ClassRegistry
from tisynth.generator import TISynthGenerator, build_generator


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads; one thread avoids oversubscribing a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def registry() -> ClassRegistry:
    return ClassRegistry.from_records(
        [
            {"id": 0, "name": "built-up", "color": [255, 0, 0]},
            {"id": 1, "name": "farmland", "color": [0, 255, 0]},
            {"id": 2, "name": "forest", "color": [0, 255, 255]},
            {"id": 3, "name": "meadow", "color": [255, 255, 0]},
            {"id": 4, "name": "water", "color": [0, 0, 255]},
            {"id": 5, "name": "unlabeled", "color": [0, 0, 0]},
        ]
    )


def make_tiles(registry: ClassRegistry, n: int = 8, size: int = 64, seed: int = 0) -> list[dict]:
    """Procedural labelled tiles: rectangles of classes, class colours with texture, some ignore."""
    rng = np.random.default_rng(seed)
    k = registry.num_classes
    base = rng.uniform(-0.6, 0.6, size=(k, 3))
    items = []
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(n):
        mask = np.full((size, size), rng.integers(k), np.uint8)
        for _ in range(rng.integers(2, 5)):
            y0, x0 = rng.integers(0, size - 8, 2)
            h, w = rng.integers(8, size // 2, 2)
            mask[y0 : y0 + h, x0 : x0 + w] = rng.integers(k)
        mask[:2, :2] = 255
        texture = 0.15 * np.sin(xx / rng.uniform(2, 6) + rng.uniform(0, 6))[..., None]
        colour = np.where(mask[..., None] == 255, 0.0, base[np.minimum(mask, k - 1)])
        img = np.clip(colour + texture + rng.normal(0, 0.05, (size, size, 3)), -1, 1)
        image = ((img + 1) * 127.5).round().astype(np.uint8)
        items.append({"image": image, "mask": mask, "prompt": registry.prompt(mask)})
    return items


@pytest.fixture
def tiles(registry: ClassRegistry) -> list[dict]:
    return make_tiles(registry)


PAPER_PATH = {"mask_conditioning": "controlnet", "mask_residual": True, "scheduler": {"rescale_betas_zero_snr": False}}
"""The tiny preset on the paper's mask path (mask ControlNet, stage A), as it was before the
mask-first base became the from-scratch default: the ControlNet/AIA tests use it."""


@pytest.fixture
def tiny(registry: ClassRegistry) -> TISynthGenerator:
    return build_generator({"preset": "tiny", **PAPER_PATH}, registry, seed=0)


@pytest.fixture
def mask_first_tiny(registry: ClassRegistry) -> TISynthGenerator:
    return build_generator({"preset": "tiny"}, registry, seed=0)


def perturb_zero_inits(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> list[str]:
    """Give every all-zero floating tensor (zero convs, AIA to_out, LN biases) small random values.

    Zero initialisations make some gradients exactly zero at the first step; tests that need
    every path to carry signal (or a trained-looking model) call this first.
    """
    g = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
                names.append(name)
    return names
