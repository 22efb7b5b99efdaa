"""What the latent cache saves: a training step on pixels (encode every step) vs on cached latents.

Builds the generator of a preset (with the TAEF2 autoencoder when ``--taef2`` is given), times
``--steps`` optimizer steps of stage ``base`` and of stage ``B`` on batches read from images
(the autoencoder encodes tile and Ref every step) and from a latent cache, and the one-off cost
of building the cache per tile. Random tiles of the preset's size stand in for data: the
speed does not depend on the pixels. Prints a table.

    python benchmarks/bench_latent_cache.py --preset small --taef2 ../shared/data/weights/taef2 --steps 6
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--taef2", default=None)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tiles", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from tisynth.classes import ClassRegistry
    from tisynth.generator import build_generator, train_generator
    from tisynth.generator.latent_cache import LatentTileDataset, build_latent_cache
    from tisynth.io import TileSet, write_image

    registry = ClassRegistry.from_records([{"id": i, "name": f"class{i}", "color": [40 * i + 20, 0, 0]} for i in range(5)])
    cfg = {"preset": args.preset}
    if args.taef2:
        cfg["autoencoder"] = {"type": "taef2", "weights_dir": str(Path(args.taef2).resolve()), "scale": 1.25}
    model = build_generator(cfg, registry, seed=0)
    size = int(model.config["image_size"])
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.tiles):
            write_image(root / "tiles" / "images" / f"t{i}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            write_image(root / "tiles" / "masks" / f"t{i}.png", rng.integers(0, 5, (size, size), dtype=np.uint8))
            rows.append({"name": f"t{i}", "split": "train", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                         "prompt": "a satellite image of class0 class1"})
        tiles, manifest = TileSet(root / "tiles"), pd.DataFrame(rows)
        t0 = time.perf_counter()
        cache = build_latent_cache(model.autoencoder, tiles, manifest, root / "cache", variants=8, progress=False)
        per_tile = (time.perf_counter() - t0) / args.tiles
        from tisynth.generator import TileDataset

        pixel = TileDataset(tiles, manifest, split=None)
        latent = LatentTileDataset(cache, tiles, manifest)
        table = []
        for stage in ("base", "B"):
            times = {}
            for name, data in (("pixels", pixel), ("cached latents", latent)):
                run = {"stage": stage, "steps": args.steps + 1, "batch_size": args.batch, "progress": False,
                       "checkpoint_every": 0, "learning_rate": 1e-4}
                stamps = []

                def cb(event, stamps=stamps):
                    if event.get("event") == "step":
                        stamps.append(time.perf_counter())

                with tempfile.TemporaryDirectory() as ck:
                    train_generator(model, data, {**run, "log_every": 1}, ck, callback=cb)
                times[name] = (stamps[-1] - stamps[0]) / args.steps  # the first step (warm-up) is left out
            table.append((stage, times["pixels"], times["cached latents"]))
    print(f"\npreset {args.preset}, autoencoder {model.autoencoder.kind}, batch {args.batch}, {args.threads} threads")
    print(f"cache build: {per_tile:.3f} s per tile (8 dihedral variants)\n")
    print("| stage | step on pixels (s) | step on cached latents (s) | speed-up |")
    print("|---|---|---|---|")
    for stage, a, b in table:
        print(f"| {stage} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
