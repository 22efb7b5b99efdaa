"""A sensor-shift target domain made from a folder dataset: the same classes, another "sensor".

Cross-domain tests need a target that differs in appearance but not in its label set
(splitting a dataset by scene category removes a class from the source, which measures a
missing class, not a domain shift). This module imitates another sensor on a disjoint part of
the tiles, with a documented, seeded transform of each image (masks stay as they are: the
transform keeps the pixel grid):

1. **lower ground resolution**: Gaussian blur (σ = 0.5 × ``resolution_factor``), then
   resampling to ``1 / resolution_factor`` of the size and back (bilinear), as a coarser sensor
   delivered on the same grid;
2. **radiometry**: per-band gain and offset (DN), then a gamma curve;
3. **haze**: a blend towards a bright, bluish haze colour;
4. **noise**: Gaussian sensor noise (DN), drawn from the tile's own seed.

``python -m tisynth sensor-shift SOURCE OUT --config conf/sensor_shift.yml`` writes
``OUT/source`` (the untouched tiles) and ``OUT/target`` (the shifted ones), each a folder dataset
with the original ``classes.csv`` and its share of ``split.csv``, and ``OUT/sensor_shift.png``
(tiles before and after). Then ``dataset.root=OUT/source`` and ``target.root=OUT/target``:
Refs from the target's non-test tiles, evaluation on its test tiles.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageFilter

from tisynth.errors import TisynthError
from tisynth.io import atomic_path, read_image, write_bytes_atomic, write_image, write_text_atomic
from tisynth.params import dataclass_from_mapping

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class SensorShiftError(TisynthError, ValueError):
    """A sensor-shift setting or source dataset that cannot be used."""


@dataclass(frozen=True)
class SensorShift:
    """The transform's parameters (the ``sensor_shift`` YAML block); defaults imitate a coarser,
    bluer, hazier sensor than Gaofen-2."""

    gain: tuple[float, float, float] = (0.85, 0.95, 1.2)
    offset: tuple[float, float, float] = (6.0, 0.0, -10.0)
    gamma: float = 1.3
    haze: float = 0.12
    haze_color: tuple[float, float, float] = (205.0, 210.0, 225.0)
    resolution_factor: float = 2.0
    noise_std: float = 3.0
    target_fraction: float = 0.3
    seed: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> SensorShift:
        raw = dict(params or {})
        for key in ("gain", "offset", "haze_color"):
            if key in raw:
                raw[key] = tuple(float(v) for v in raw[key])
        cfg = dataclass_from_mapping(cls, raw, SensorShiftError, "sensor_shift: unknown key(s)")
        for key in ("gain", "offset", "haze_color"):
            if len(getattr(cfg, key)) != 3:
                raise SensorShiftError(f"sensor_shift.{key} needs 3 values (R, G, B), got {getattr(cfg, key)}")
        if min(cfg.gain) <= 0 or cfg.gamma <= 0 or cfg.resolution_factor < 1 or cfg.noise_std < 0:
            raise SensorShiftError("sensor_shift: gain and gamma must be > 0, resolution_factor >= 1, noise_std >= 0")
        if not 0 <= cfg.haze < 1 or not 0 < cfg.target_fraction < 1:
            raise SensorShiftError("sensor_shift: haze must be in [0, 1) and target_fraction in (0, 1)")
        return cfg

    def apply(self, image: np.ndarray, seed: int) -> np.ndarray:
        """The shifted H×W×3 uint8 image; the same ``seed`` gives the same noise."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SensorShiftError(f"expected an H×W×3 uint8 image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        pic = Image.fromarray(image)
        if self.resolution_factor > 1:
            pic = pic.filter(ImageFilter.GaussianBlur(0.5 * self.resolution_factor))
            small = (max(1, round(w / self.resolution_factor)), max(1, round(h / self.resolution_factor)))
            pic = pic.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
        x = np.asarray(pic, dtype=np.float64)
        x = x * np.asarray(self.gain) + np.asarray(self.offset)
        x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** self.gamma
        x = (1 - self.haze) * x + self.haze * np.asarray(self.haze_color)
        if self.noise_std > 0:
            x = x + np.random.default_rng(seed).normal(0.0, self.noise_std, x.shape)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _tile_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "little")


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def choose_target(split: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """Names of the tiles that become the target: ``fraction`` of each split, seeded."""
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for _, group in split.sort_values("name").groupby("split", sort=True):
        n = int(round(fraction * len(group)))
        chosen |= set(group["name"].to_numpy()[rng.permutation(len(group))[:n]])
    return chosen


def make_sensor_shift_datasets(source: str | Path, out: str | Path, shift: SensorShift,
                               preview_tiles: int = 6) -> dict[str, int]:
    """Write ``out/source`` and ``out/target`` (see the module doc) and the preview figure.

    Resumable: finished images are kept (their content depends only on the settings, which
    ``out/sensor_shift.yml`` records; other settings in an existing ``out`` are refused).
    """
    source, out = Path(source), Path(out)
    images, masks = source / "images", source / "masks"
    for need in (images, masks, source / "classes.csv", source / "split.csv"):
        if not need.exists():
            raise SensorShiftError(f"{source}: a folder dataset with images/, masks/, classes.csv and split.csv is needed; {need.name} is missing")
    split = pd.read_csv(source / "split.csv")
    if not {"name", "split"} <= set(split.columns):
        raise SensorShiftError(f"{source / 'split.csv'}: needs columns name,split; has {list(split.columns)}")
    image_files, mask_files = _files(images), _files(masks)
    missing = sorted(set(split["name"]) - set(image_files))
    if missing:
        raise SensorShiftError(f"{source / 'split.csv'}: {len(missing)} name(s) without an image, e.g. {missing[:3]}")
    settings = yaml.safe_dump({"sensor_shift": {f.name: (list(v) if isinstance(v := getattr(shift, f.name), tuple) else v)
                                                for f in fields(shift)}}, sort_keys=False)
    record = out / "sensor_shift.yml"
    if record.is_file() and record.read_text() != settings:
        raise SensorShiftError(f"{out} was made with other sensor_shift settings ({record}); choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record, settings)
    target = choose_target(split, shift.target_fraction, shift.seed)
    counts = {"source": 0, "target": 0}
    for domain in ("source", "target"):
        (out / domain / "images").mkdir(parents=True, exist_ok=True)
        (out / domain / "masks").mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / domain / "classes.csv", (source / "classes.csv").read_bytes())
        part = split[split["name"].isin(target) == (domain == "target")]
        write_text_atomic(out / domain / "split.csv", part.to_csv(index=False))
    from tqdm import tqdm

    for name in tqdm(split["name"], desc="sensor shift", unit="tile"):
        domain = "target" if name in target else "source"
        dst = out / domain / "images" / f"{name}.png"
        if not dst.exists():
            img = read_image(image_files[name])
            write_image(dst, shift.apply(img, _tile_seed(shift.seed, name)) if domain == "target" else img)
        if name in mask_files:
            mdst = out / domain / "masks" / f"{name}{mask_files[name].suffix}"
            if not mdst.exists():
                write_bytes_atomic(mdst, mask_files[name].read_bytes())
        counts[domain] += 1
    picks = sorted(target)[:: max(1, len(target) // max(1, preview_tiles))][:preview_tiles]
    with atomic_path(out / "sensor_shift.png") as tmp:
        preview_figure([image_files[n] for n in picks], shift).savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    return counts


def preview_figure(paths: Sequence[Path], shift: SensorShift):  # -> Figure
    """Each tile as the source sensor saw it (top) and as the shifted sensor does (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(paths))
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for i, path in enumerate(paths):
        img = read_image(path)
        for row, pic in enumerate((img, shift.apply(img, _tile_seed(shift.seed, path.stem)))):
            axes[row][i].imshow(pic)
            axes[row][i].set_xticks([])
            axes[row][i].set_yticks([])
        axes[0][i].set_title(path.stem, fontsize=7)
    axes[0][0].set_ylabel("source sensor")
    axes[1][0].set_ylabel("sensor shift")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tisynth sensor-shift", description=__doc__.splitlines()[0])
    p.add_argument("source", help="folder dataset (images/, masks/, classes.csv, split.csv)")
    p.add_argument("out", help="output folder: source/, target/, sensor_shift.png")
    p.add_argument("--config", help="YAML file with a sensor_shift block (default: the built-in settings)")
    args = p.parse_args(argv)
    block: dict[str, Any] = {}
    if args.config:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        block = data.get("sensor_shift", data)
    counts = make_sensor_shift_datasets(args.source, args.out, SensorShift.from_params(block))
    print(f"{counts['source']} source tiles in {Path(args.out) / 'source'}, {counts['target']} shifted target tiles in "
          f"{Path(args.out) / 'target'}; preview {Path(args.out) / 'sensor_shift.png'}")
    return 0
