"""Run by ``accelerate launch --num_processes N --cpu`` in test_two_processes.py (and in-process
there as the one-process reference): sample a synthesis plan, then train stage B a few steps, on
the tiny SD 1.5-layout fixture.

Each process writes ``sampled_<rank>.json`` (the plan names of its shard and how many images it
made); the main process writes ``history.json`` (the loss per step) and ``trained.safetensors``
(the trained parameters).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tisynth.classes import ClassRegistry
from tisynth.ingest.demo_scenes import DEMO_CLASSES
from tisynth.io import TileSet, write_image

TRAIN = {
    "stage": "B",
    "learning_rate": 1.0e-3,
    "mixed_precision": "no",
    "gradient_checkpointing": False,
    "checkpoint_every": 0,
    "log_every": 1,
    "progress": False,
    "cpu": True,
    "seed": 3,
}
SAMPLER = {"steps": 2, "guidance_scale": 9.0, "timestep_spacing": "leading", "uncond": "prompt", "batch_size": 1,
           "precision": "fp32", "device": "cpu"}


def registry() -> ClassRegistry:
    return ClassRegistry.from_records(DEMO_CLASSES)


def write_tiles(folder: Path, n: int = 8, size: int = 64, seed: int = 0) -> pd.DataFrame:
    """``n`` labelled tiles (images/, masks/) of random class rectangles; returns the plan of one
    image per mask with another tile's image as Ref."""
    reg = registry()
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (reg.num_classes, 3))
    rows = []
    for i in range(n):
        mask = np.full((size, size), rng.integers(reg.num_classes), np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, size - 16, 2)
            mask[y : y + 16, x : x + 24] = rng.integers(reg.num_classes)
        image = np.clip(colours[mask] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        write_image(folder / "images" / f"t{i}.png", image)
        write_image(folder / "masks" / f"t{i}.png", mask)
        rows.append({"name": f"t{i}", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png", "prompt": reg.prompt(mask)})
    tiles = pd.DataFrame(rows)
    plan = tiles.assign(name=[f"t{i}_ref{(i + 1) % n}_0" for i in range(n)], mask_name=tiles["name"],
                        ref=[tiles["image"][(i + 1) % n] for i in range(n)], ref_name=[f"t{(i + 1) % n}" for i in range(n)],
                        ref_domain="source", seed=[1000 + i for i in range(n)], k=0)
    return plan


def items(tiles: Path, plan: pd.DataFrame) -> list[dict[str, Any]]:
    ts = TileSet(tiles)
    return [{"image": ts.read_image(r.image), "mask": ts.read_mask(r.mask), "prompt": r.prompt} for r in plan.itertuples()]


def build(sd15: Path):  # noqa: ANN201 - a TISynthGenerator
    from tisynth.generator import build_generator

    return build_generator({"preset": "sd15", "pretrained": str(sd15), "image_size": 64}, registry(), seed=0)


def sample(sd15: Path, tiles: Path, plan: pd.DataFrame, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Sample the plan into ``out`` the way the sample pipeline does (each process its shard)."""
    from tisynth.generator import synthesis

    settings = synthesis.SynthesisSettings.from_params({"sampler": SAMPLER, "chunk": 2, "image_format": "png"}, env=env)
    model = build(sd15)
    version = synthesis.generator_version(model)
    made = synthesis.write_synthetic_images(out, model, plan, {"source": TileSet(tiles)}, settings, version)
    mine = list(plan["name"].iloc[settings.shard_index :: settings.shard_count])
    return {"rank": settings.shard_index, "count": settings.shard_count, "made": made, "names": mine}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sd15", type=Path, required=True)
    p.add_argument("--tiles", type=Path, required=True)
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2, help="items per process and step")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from tisynth.generator import train_generator

    plan = pd.read_parquet(args.plan)
    rank = int(os.environ.get("RANK", "0"))
    shard = sample(args.sd15, args.tiles, plan, args.out / "synthetic")
    (args.out / f"sampled_{rank}.json").write_text(json.dumps(shard), encoding="utf-8")

    model = build(args.sd15)
    cfg = {**TRAIN, "steps": args.steps, "batch_size": args.batch}
    result = train_generator(model, items(args.tiles, plan), cfg, args.out / "checkpoints")
    if rank == 0:
        (args.out / "history.json").write_text(json.dumps(result.history), encoding="utf-8")
        names = model.trainable_parameter_names("B")
        params = dict(model.named_parameters())
        save_file({n: params[n].detach().contiguous() for n in names}, str(args.out / "trained.safetensors"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
