"""The long stages as separate processes, for the SIGKILL fault tests (``tests/test_faults.py``).

    python -m tests.fault_worker STAGE WORK

Each stage builds its inputs deterministically inside ``WORK`` (the same bytes on every call),
then runs the stage's own code as the pipeline runs it, writing into ``WORK/out``. A rerun after
a kill must finish the work and leave what an uninterrupted run leaves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tisynth.classes import ClassRegistry
from tisynth.io import TileSet, write_image, write_json_atomic

REG = ClassRegistry.from_records([{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(
    [("road", [255, 0, 0]), ("tree", [0, 255, 0]), ("water", [0, 0, 255])])])


def _tiles(root: Path, n: int, size: int = 32) -> tuple[TileSet, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img, mask = root / "images" / f"t{i}.png", root / "masks" / f"t{i}.png"
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 3, (size, size), dtype=np.uint8)
        if not img.exists():
            write_image(img, image)
            write_image(mask, labels)
        rows.append({"name": f"t{i}", "split": "train", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                     "group": "g", "prompt": "a satellite image of road tree water"})
    return TileSet(root), pd.DataFrame(rows)


def ingest(work: Path) -> None:
    from tisynth import ingest as ing
    from tisynth.datasets import FileTreeDataset
    from tisynth.ingest.demo_scenes import DEMO_CLASSES, DemoSceneConfig, write_demo_dataset

    raw = work / "raw"
    if not (raw / "classes.csv").exists():
        write_demo_dataset(raw, DemoSceneConfig(n_scenes=2, size=384, seed=3), DEMO_CLASSES)
    dcfg = ing.DatasetConfig.from_params({"root": str(raw), "kind": "geotiff", "images": "scenes", "masks": "labels"})
    icfg = ing.IngestConfig.from_params({"tile_size": 32, "workers": 1, "chunk_tiles": 8})
    registry = ing.load_registry(dcfg)
    plan, _ = ing.plan_tiles(registry, dcfg, icfg)
    manifest = ing.manifest_from_plan(plan, registry, icfg)
    FileTreeDataset(str(work / "out" / "tiles")).save(lambda folder: ing.write_tiles(manifest, registry, dcfg, icfg, folder))
    ing.public_manifest(manifest).to_parquet(work / "out" / "manifest.parquet")


def sample(work: Path) -> None:
    from tisynth import references
    from tisynth.generator import build_generator, synthesis

    tiles, manifest = _tiles(work / "tiles", 6)
    model = build_generator({"preset": "tiny", "image_size": 32}, REG, seed=0).eval()
    pool = references.build_pool(manifest, None, "source")
    plan = references.plan_synthesis(manifest, pool, references.PairingConfig(refs_per_mask=2, seeds_per_pair=2))
    settings = synthesis.SynthesisSettings(sample={"steps": 3, "guidance_scale": 2.0, "batch_size": 1}, chunk=1)
    synthesis.write_synthetic_images(work / "out", model, plan, {"source": tiles}, settings, "v1")


def train_generator(work: Path) -> None:
    from tisynth.generator import TileDataset, build_generator
    from tisynth.generator import train_generator as train

    tiles, manifest = _tiles(work / "tiles", 8)
    model = build_generator({"preset": "tiny", "image_size": 32}, REG, seed=0)
    cfg = {"stage": "base", "steps": 16, "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 2,
           "checkpoints_keep": 2, "log_every": 1, "progress": False, "seed": 0, "ema_decay": 0.9}
    result = train(model, TileDataset(tiles, manifest, split=None), cfg, work / "out" / "checkpoints")
    write_json_atomic(work / "out" / "history.json", result.history)
    torch.save({k: v.clone() for k, v in model.unet.state_dict().items()}, work / "out" / "unet.pt")


def train_segmenter(work: Path) -> None:
    from tests.segmentation.toydata import manifest_pairs, tiny_config, toy_registry, write_toy_tiles
    from tisynth.segmentation.train import train_segmenter as train

    tiles_root = work / "tiles"
    if not (tiles_root / "manifest.parquet").exists():
        write_toy_tiles(tiles_root, {"train": 16, "val": 4}, seed=0).to_parquet(tiles_root / "manifest.parquet")
    manifest = pd.read_parquet(tiles_root / "manifest.parquet")
    train_pairs, val_pairs = manifest_pairs(tiles_root, manifest, "train"), manifest_pairs(tiles_root, manifest, "val")
    cfg = tiny_config(train={"iterations": 40, "val_interval": 8, "checkpoint_interval": 4, "log_interval": 4})
    seg = train(cfg, toy_registry(), train_pairs, val_pairs, work / "out" / "job", label="fault")
    info = dict(seg.training_info)
    write_json_atomic(work / "out" / "info.json", {k: info[k] for k in ("iterations", "val_history")})
    seg.save_pretrained(work / "out" / "model")


def filter_masks(work: Path) -> None:
    from tests.segmentation.toydata import manifest_pairs, synthetic_set, tiny_config, toy_registry, write_toy_tiles
    from tisynth import filtering
    from tisynth.segmentation.train import train_segmenter as train

    tiles_root = work / "tiles"
    if not (tiles_root / "manifest.parquet").exists():
        write_toy_tiles(tiles_root, {"train": 40, "val": 4}, seed=0).to_parquet(tiles_root / "manifest.parquet")
    manifest = pd.read_parquet(tiles_root / "manifest.parquet")
    tiles = TileSet(tiles_root)
    cfg = tiny_config(train={"iterations": 8, "val_interval": 8, "checkpoint_interval": 8, "log_interval": 8})
    seg = train(cfg, toy_registry(), manifest_pairs(tiles_root, manifest, "train"), manifest_pairs(tiles_root, manifest, "val"),
                work / "segmenter", label="fault")  # finished once, then reused (done.json)
    syn, syn_manifest = synthetic_set(work / "synthetic", tiles, manifest, n_good=30, n_bad=10)
    losses = filtering.compute_class_losses(seg, manifest_pairs(tiles_root, manifest, "train"))
    mu = filtering.class_losses_array(losses, 3)
    filtering.filter_synthetic_set(seg, filtering.synthetic_items(syn_manifest, syn, tiles), mu, work / "out" / "filtered",
                                   tolerance=1.25, batch_size=1)


STAGES = {"filter": filter_masks, "ingest": ingest, "sample": sample, "train_generator": train_generator, "train_segmenter": train_segmenter}

if __name__ == "__main__":
    torch.set_num_threads(1)
    stage, work = sys.argv[1], Path(sys.argv[2])
    STAGES[stage](work)
    (work / "out").mkdir(parents=True, exist_ok=True)
    (work / "out" / "finished").write_text(json.dumps({"stage": stage}))
