"""Does the Ref steer the look? The Ref-steering report on a finished workspace, as a table.

The same report as the ``read_generator.report_ref_steering`` node (:mod:`tisynth.generator.steering`):
for fixed held-out masks and seeds, samples with source Refs and with target Refs (without a
target domain: two disjoint halves of the scene groups) and reports the Ref effect over the
seed effect, the colour transfer, and KID of each set against real tiles of each domain; writes
``<out>/ref_steering_<label>.png`` and appends one row per run to ``<out>/ref_steering.csv``.

    python benchmarks/ref_steering.py --workspace <ws> --label "style pairs + target tiles"
    python benchmarks/ref_steering.py --workspace <ws> --model data/06_models/generator --masks 24 --guidance 3
    python benchmarks/ref_steering.py --workspace <ws> --label "+ Ref moments" --moments 1.0 [--moments-pool item]

``--moments S`` samples with Ref-set latent moments at strength S (``sample.ref_moments``,
:mod:`tisynth.generator.moments`); the default 0 is the generator alone.

Several workspaces (an ablation) append to one table with ``--out``; ``--print`` shows it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

COLUMNS = ["label", "moments_transform", "ref_over_seed", "ref_over_seed_at_real_shift", "ref_effect_same_items",
           "seed_effect", "colour_transfer",
           "kid_target_refs_vs_real_target", "kid_source_refs_vs_real_target", "kid_ratio_target",
           "kid_target_refs_vs_real_source", "kid_source_refs_vs_real_source", "kid_real_source_vs_real_target"]


def _latest(folder: Path) -> Path:
    """A Kedro versioned dataset's newest version (or the plain file)."""
    if folder.is_file():
        return folder
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise SystemExit(f"{folder}: no manifest; run the ingest pipeline in this workspace first")
    return files[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, type=Path)
    p.add_argument("--model", default="data/06_models/generator", help="generator folder inside the workspace")
    p.add_argument("--label", default=None, help="the row's name in the table (default: the workspace's name)")
    p.add_argument("--out", type=Path, default=None, help="folder of the table and figures (default: <ws>/results)")
    p.add_argument("--masks", type=int, default=24)
    p.add_argument("--seed-items", type=int, default=8)
    p.add_argument("--real-tiles", type=int, default=64)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-kid", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--moments", type=float, default=0.0, help="Ref-moment strength (0: off)")
    p.add_argument("--moments-pool", choices=("set", "item"), default="set")
    p.add_argument("--moments-transform", choices=("channel", "covariance"), default="channel",
                   help="per-channel moments, or means and the full channel covariance (Gaussian transport)")
    p.add_argument("--ref-set-tiles", type=int, default=256,
                   help="tiles per domain in the Ref set of Ref-set moments (0: the per-mask Refs)")
    args = p.parse_args()

    import torch

    from tisynth.generator import TISynthGenerator
    from tisynth.generator.steering import SteeringSettings, choose_inputs, ref_steering, steering_figure
    from tisynth.io import TileSet

    torch.set_num_threads(args.threads)
    ws = args.workspace.resolve()
    out = (args.out or ws / "results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    label = args.label or (ws.name + (f", Ref moments {args.moments:g} ({args.moments_pool}, {args.moments_transform})"
                                      if args.moments > 0 else ""))
    model = TISynthGenerator.from_pretrained(ws / args.model).eval()
    manifest = pd.read_parquet(_latest(ws / "data/03_primary/tile_manifest.parquet"))
    tiles = TileSet(ws / "data/02_intermediate/tiles")
    target_path = ws / "data/03_primary/target_manifest.parquet"
    target_manifest = pd.read_parquet(_latest(target_path)) if target_path.exists() else None
    target_tiles = TileSet(ws / "data/02_intermediate/target_tiles") if target_manifest is not None and len(target_manifest) else None
    cfg = SteeringSettings.from_params({"masks": args.masks, "seed_items": args.seed_items, "real_tiles": args.real_tiles,
                                        "seed": args.seed, "kid": not args.no_kid,
                                        "ref_set_tiles": args.ref_set_tiles})
    start = time.time()
    inputs = choose_inputs(tiles, manifest, target_tiles, target_manifest, cfg)
    sampler = {"steps": args.steps, "guidance_scale": args.guidance, "timestep_spacing": "trailing", "uncond": "mask_prompt"}
    moments = {"strength": args.moments, "pool": args.moments_pool, "transform": args.moments_transform}
    metrics, images = ref_steering(model, inputs, cfg, sampler, moments=moments)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower() or "run"
    steering_figure(model, inputs, images, metrics, rows=8).savefig(out / f"ref_steering_{slug}.png", dpi=110)
    row = {"label": label, "workspace": ws.name, "masks": len(inputs.names), "guidance": args.guidance,
           "moments": args.moments, "moments_pool": args.moments_pool, "moments_transform": args.moments_transform,
           "ref_set_tiles": args.ref_set_tiles,
           "seconds": round(time.time() - start, 1), **metrics}
    table_path = out / "ref_steering.csv"
    table = pd.read_csv(table_path) if table_path.exists() else pd.DataFrame()
    table = pd.concat([table[table.get("label", pd.Series(dtype=str)) != label] if len(table) else table,
                       pd.DataFrame([row])], ignore_index=True)
    table.to_csv(table_path, index=False)
    shown = [c for c in COLUMNS if c in table.columns]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
