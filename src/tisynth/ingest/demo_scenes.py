"""Seeded procedural land-cover scenes for the embedded default.

Each scene is a GeoTIFF image (3 bands, uint8, with a UTM CRS and an affine transform) and a
GeoTIFF label raster on the same grid, so that the default run goes through the real GeoTIFF
tiling path with no download. Classes differ in colour, texture *and* shape so that a
segmenter and a mask-conditioned generator have something to learn:

* water: smooth blue with faint ripples; a meandering river and round lakes
* forest: dark green with a grainy canopy texture; large smooth blobs
* farmland: rectangular parcels with oriented furrow stripes in yellow-green/brown tones
* built-up: grey blocks of rectangular roofs separated by bright streets
* meadow: light green, low-frequency variation (the background)

A strip along one edge of some scenes is no-data (image nodata 0, label 0 = no-data), as at
the border of a satellite swath, to exercise ignore handling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tisynth.classes import ClassRegistry
from tisynth.io import write_geotiff, write_text_atomic

DEMO_CLASSES: list[dict[str, Any]] = [
    {"id": 0, "name": "no-data", "color": [0, 0, 0]},
    {"id": 1, "name": "built-up", "color": [255, 0, 0]},
    {"id": 2, "name": "farmland", "color": [0, 255, 0]},
    {"id": 3, "name": "forest", "color": [0, 255, 255]},
    {"id": 4, "name": "meadow", "color": [255, 255, 0]},
    {"id": 5, "name": "water", "color": [0, 0, 255]},
]

MARKER = ".tisynth-demo"


@dataclass(frozen=True)
class DemoSceneConfig:
    n_scenes: int = 4
    size: int = 256
    seed: int = 0
    pixel_size: float = 1.0
    crs: str = "EPSG:32650"
    origin: tuple[float, float] = (500000.0, 4400000.0)
    nodata_strip: float = 0.08  # width of the no-data strip (fraction of the side) in odd scenes
    # the look of the domain: per-channel gain, brightness offset and texture strength, so that
    # two domains with the same classes can differ in colour and texture
    color_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 0.0
    texture: float = 1.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DemoSceneConfig:
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        for key in ("origin", "color_gain"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Gaussian-filtered white noise (FFT), normalised to zero mean and unit std."""
    white = rng.standard_normal((size, size))
    freq = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    kernel = np.exp(-2.0 * (np.pi * scale) ** 2 * (fx**2 + fy**2))
    out = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    return (out - out.mean()) / (out.std() + 1e-8)


def _label_map(rng: np.random.Generator, size: int, ids: Mapping[str, int]) -> np.ndarray:
    """Land-cover layout in raw ids."""
    label = np.full((size, size), ids["meadow"], dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # forest: large blobs
    forest = _smooth_noise(rng, size, size / 10) > 0.55
    label[forest] = ids["forest"]

    # farmland: a region of rectangular parcels
    region = _smooth_noise(rng, size, size / 8) > 0.15
    parcel = max(8, size // 10)
    oy, ox = rng.integers(0, parcel, size=2)
    py = ((yy + oy) // parcel).astype(int)
    px = ((xx + ox) // (parcel * 1.5)).astype(int)
    parcel_id = py * 1000 + px
    keep = rng.random(parcel_id.max() + 1) < 0.75
    farm = region & keep[parcel_id] & ~forest
    label[farm] = ids["farmland"]

    # built-up: one or two blocks of buildings in a corner-ish area
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.integers(size // 5, size - size // 5, size=2)
        h, w = rng.integers(size // 6, size // 3, size=2)
        y0, y1 = max(0, cy - h // 2), min(size, cy + h // 2)
        x0, x1 = max(0, cx - w // 2), min(size, cx + w // 2)
        label[y0:y1, x0:x1] = ids["built-up"]

    # water: a meandering river and a lake
    phase, amp, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.15) * size, rng.uniform(1, 2.5)
    centre = size * rng.uniform(0.3, 0.7) + amp * np.sin(2 * np.pi * freq * xx / size + phase)
    width = size * rng.uniform(0.03, 0.06)
    river = np.abs(yy - centre) < width
    if rng.random() < 0.5:
        river = river.T
    ly, lx = rng.integers(0, size, size=2)
    lr = rng.uniform(0.06, 0.14) * size
    lake = (yy - ly) ** 2 + (xx - lx) ** 2 < lr**2 * (1 + 0.3 * _smooth_noise(rng, size, size / 16))
    label[river | lake] = ids["water"]
    return label


def _render(rng: np.random.Generator, label: np.ndarray, ids: Mapping[str, int], cfg: DemoSceneConfig) -> np.ndarray:
    """Colour and texture per class -> uint8 RGB (H, W, 3)."""
    size = label.shape[0]
    img = np.zeros((size, size, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fine = cfg.texture * rng.standard_normal((size, size)).astype(np.float32)
    low = cfg.texture * _smooth_noise(rng, size, size / 12).astype(np.float32)

    def paint(cls: str, base: Sequence[float], tex: np.ndarray) -> None:
        m = label == ids[cls]
        for c in range(3):
            img[..., c][m] = base[c] + tex[m]

    paint("meadow", (120, 165, 80), 10 * low + 4 * fine)
    canopy = cfg.texture * _smooth_noise(rng, size, 1.2).astype(np.float32)
    paint("forest", (35, 80, 40), 18 * canopy + 6 * low)
    angle = rng.uniform(0, np.pi)
    furrow = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / 4.0)
    tone = np.where(_smooth_noise(rng, size, size / 10) > 0, 1.0, -1.0).astype(np.float32)
    farm_base = (170, 160, 95)
    m = label == ids["farmland"]
    for c, shift in enumerate((20, 10, -10)):
        img[..., c][m] = farm_base[c] + shift * tone[m] + 14 * furrow[m] + 4 * fine[m]
    # built-up: roofs on a grid, bright streets between them
    m = label == ids["built-up"]
    cell = 9
    street = ((yy % cell) < 2) | ((xx % cell) < 2)
    roof_shade = rng.uniform(-35, 35, size=(size // cell + 2, size // cell + 2)).astype(np.float32)
    roof = roof_shade[(yy // cell).astype(int), (xx // cell).astype(int)]
    for c, base in enumerate((150, 145, 150)):
        val = np.where(street, 205.0, base + roof) + 5 * fine
        img[..., c][m] = val[m]
    ripple = np.sin(yy / 2.5 + 2 * low) * 3
    paint("water", (30, 70, 130), ripple + 6 * low + 2 * fine)
    img = img * np.asarray(cfg.color_gain, dtype=np.float32) + cfg.brightness
    return np.clip(img, 1, 255).astype(np.uint8)  # 0 is reserved for no-data


def make_scene(cfg: DemoSceneConfig, index: int, registry: ClassRegistry) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 (H, W, 3), raw label uint8 (H, W))."""
    rng = np.random.default_rng([cfg.seed, index])
    ids = {c.name: c.id for c in registry.classes}
    missing = {"built-up", "farmland", "forest", "meadow", "water"} - set(ids)
    if missing:
        raise ValueError(f"demo scenes need classes {sorted(missing)} in the demo class table")
    label = _label_map(rng, cfg.size, ids)
    image = _render(rng, label, ids, cfg)
    if cfg.nodata_strip > 0 and index % 2 == 1 and registry.ignore_id is not None:
        w = int(round(cfg.nodata_strip * cfg.size))
        image[:, cfg.size - w :] = 0
        label[:, cfg.size - w :] = registry.ignore_id
    return image, label


def write_demo_dataset(root: Path, cfg: DemoSceneConfig, classes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Write ``scenes/*.tif``, ``labels/*.tif`` and ``classes.csv`` under ``root``."""
    from rasterio.transform import from_origin

    registry = ClassRegistry.from_records(classes, ignore_id="auto", source="demo parameters")
    root = Path(root)
    names = []
    for i in range(cfg.n_scenes):
        image, label = make_scene(cfg, i, registry)
        name = f"demo_scene_{i:02d}"
        x0 = cfg.origin[0] + i * (cfg.size + 100) * cfg.pixel_size
        transform = from_origin(x0, cfg.origin[1], cfg.pixel_size, cfg.pixel_size)
        write_geotiff(root / "scenes" / f"{name}.tif", image, crs=cfg.crs, transform=transform, nodata=0)
        write_geotiff(root / "labels" / f"{name}.tif", label, crs=cfg.crs, transform=transform)
        names.append(name)
    rows = ["id,name,r,g,b"] + [f"{c['id']},{c['name']},{c['color'][0]},{c['color'][1]},{c['color'][2]}" for c in classes]
    write_text_atomic(root / "classes.csv", "\n".join(rows) + "\n")
    write_text_atomic(root / MARKER, f"seed={cfg.seed} n_scenes={cfg.n_scenes} size={cfg.size}\n")
    return names
