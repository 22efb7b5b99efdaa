"""How much does the Ref change a sample? A check that the Ref branch is used at all.

For a few val masks of a finished workspace, samples the same mask, prompt and seed with
``--refs`` different Refs (training tiles drawn at random), and the same mask and Ref with
``--refs`` different seeds, and prints the mean absolute pixel difference (0-255) within each
set. A Ref branch that steers the style moves pixels by an amount of the order of a new seed;
one that the model ignores moves them by almost nothing.

    python benchmarks/ref_influence.py --workspace <ws> --masks 4 --refs 3 --guidance 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, type=Path)
    p.add_argument("--model", default="data/06_models/generator", help="generator folder inside the workspace")
    p.add_argument("--masks", type=int, default=4)
    p.add_argument("--refs", type=int, default=3)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from tisynth.generator import TISynthGenerator, sample_images
    from tisynth.io import TileSet

    torch.set_num_threads(args.threads)
    ws = args.workspace
    model = TISynthGenerator.from_pretrained(ws / args.model).eval()
    manifest = pd.read_parquet(sorted((ws / "data/03_primary/tile_manifest.parquet").rglob("*.parquet"))[-1])
    tiles = TileSet(ws / "data/02_intermediate/tiles")
    labelled = manifest[manifest["mask"].notna()]
    val = labelled[labelled["split"] == "val"]
    val = val.iloc[:: max(1, len(val) // args.masks)].head(args.masks)
    refs = labelled[labelled["split"] == "train"].sample(args.refs, random_state=args.seed)
    ref_images = [tiles.read_image(r) for r in refs["image"]]
    cfg = {"steps": args.steps, "guidance_scale": args.guidance}
    k = args.refs

    def spread(images: np.ndarray) -> list[float]:
        x = images.astype(np.float32)
        return [float(np.abs(x[i] - x[j]).mean()) for i in range(k) for j in range(i + 1, k)]

    other_ref, other_seed = [], []
    for _, row in val.iterrows():
        mask = tiles.read_mask(row["mask"])
        other_ref += spread(sample_images(model, [mask] * k, ref_images, [row["prompt"]] * k, [7] * k, cfg))
        other_seed += spread(sample_images(model, [mask] * k, [ref_images[0]] * k, [row["prompt"]] * k,
                                           list(range(7, 7 + k)), cfg))
    print(json.dumps({"masks": len(val), "refs": k, "guidance": args.guidance,
                      "mean_abs_diff_other_ref_same_seed": round(float(np.mean(other_ref)), 4),
                      "mean_abs_diff_same_ref_other_seed": round(float(np.mean(other_seed)), 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
