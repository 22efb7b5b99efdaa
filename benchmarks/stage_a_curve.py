"""How mask following grows with more stage-A training (the mask ControlNet) on real data.

Continues the stage-A model of a finished ``benchmarks/experiment.py`` workspace (mask
ControlNet + UNet decoder, the workspace's recipe) for ``--steps`` more steps and, every
``--eval-every`` steps, scores images sampled for val masks with the workspace's real-only
segmenter (mIoU / OA of its predictions against the masks, at ControlNet conditioning scales 1
and 4) and measures how much the mask lowers the training loss at high noise (v-loss with the
true masks vs with the masks of other tiles, t = 800 and 950, 32 training tiles). It also prints
how much of the latents' variance the class at each position explains (per-class means): the
gain a model that learnt only each class's mean latent would show. Prints a table; ``--out``
keeps the continued model and a mask | Ref | sample grid per evaluation.

    python benchmarks/stage_a_curve.py --workspace <experiment workspace> --steps 3000 --eval-every 750
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stage_a_init import load_workspace, print_table, sample_stage_a, score, stage_a_config, val_batch
from tisynth.generator import TileDataset, collate_items, mask_use, train_generator
from tisynth.generator.data import images_to_uint8
from tisynth.generator.sample import sample_grid


@torch.no_grad()
def class_mean_r2(model: Any, dataset: Any, items: int = 160) -> float:
    """Share of latent variance that the class at each latent position explains (per-class means).

    The mask gain a model would reach at the top of the schedule if it learnt nothing from the
    mask but each class's mean latent.
    """
    factor = model.downsample_factor
    latents, classes = [], []
    picks = np.linspace(0, len(dataset) - 1, min(items, len(dataset))).round().astype(int)
    for start in range(0, len(picks), 32):
        b = collate_items([dataset[int(i)] for i in picks[start : start + 32]])
        latents.append(model.encode_images(b["images"]).permute(0, 2, 3, 1).reshape(-1, model.latent_channels))
        classes.append(b["masks"][:, factor // 2 :: factor, factor // 2 :: factor].reshape(-1))
    lat, cls = torch.cat(latents).double(), torch.cat(classes)
    keep = cls < model.num_classes
    lat, cls = lat[keep], cls[keep]
    total = ((lat - lat.mean(0)) ** 2).sum()
    within = sum(((lat[cls == c] - lat[cls == c].mean(0)) ** 2).sum() for c in cls.unique())
    return float(1 - within / total)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, help="a finished benchmarks/experiment.py workspace")
    p.add_argument("--steps", type=int, default=3000, help="more stage-A steps")
    p.add_argument("--eval-every", type=int, default=750)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--items", type=int, default=48, help="val masks to sample for (every 4th val tile)")
    p.add_argument("--sample-steps", type=int, default=12)
    p.add_argument("--out", help="folder for the continued model and the grids")
    args = p.parse_args()

    out = Path(args.out).resolve() if args.out else None  # before the session changes the working directory
    loaded = load_workspace(Path(args.workspace).resolve())
    registry, tiles, manifest = loaded["class_registry"], loaded["tiles"], loaded["tile_manifest"]
    segmenter, model = loaded["real_segmenter"], loaded["generator_stage_a"]
    batch = val_batch(tiles, manifest, args.items)
    masks = batch["masks"].numpy()
    train = TileDataset(tiles, manifest, split="train")
    probe = collate_items([train[i] for i in np.linspace(0, len(train) - 1, 32).round().astype(int)])
    if out:
        out.mkdir(parents=True, exist_ok=True)

    def evaluate(done: int, loss: str, seconds: float) -> tuple[str, ...]:
        cells = []
        for scale in (1.0, 4.0):
            images = sample_stage_a(model, batch, args.sample_steps, scale)
            cells.append(score(segmenter, registry, images, masks))
            if out and scale == 1.0:
                colour = np.stack([registry.colorize(m) for m in masks[:6]])
                Image.fromarray(sample_grid([colour, images_to_uint8(batch["images"][:6]), images[:6]])).save(out / f"grid_{done:05d}.png")
        gains = " · ".join(f"t={r['t']:.0f}: {r['loss_true_mask']:.3f} vs {r['loss_other_mask']:.3f}"
                           for r in mask_use(model, probe, (800, 950), mode="controlnet"))
        row = (str(done), loss, *cells, gains, f"{seconds:.0f}")
        print(row, flush=True)
        return row

    r2 = class_mean_r2(model, train)
    print(f"per-position class means explain {100 * r2:.1f} % of the training latents' variance", flush=True)
    rows = [evaluate(0, "", 0.0)]
    history: list[dict[str, Any]] = []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for stop in range(args.eval_every, args.steps + 1, args.eval_every):
            # continue the trained ControlNet as it is, resuming each segment from the last checkpoint
            cfg = stage_a_config(stop, args.lr, args.batch, checkpoint_every=args.eval_every, resume=True)
            history = train_generator(model, train, cfg, tmp).history
            tail = float(np.mean([h["loss"] for h in history[-100:]]))
            rows.append(evaluate(stop, f"{tail:.4f}", time.time() - start))
    if out:
        model.save_pretrained(out / "generator_stage_a")

    print(f"\n{len(masks)} val masks, DDIM {args.sample_steps} steps, lr {args.lr}, batch {args.batch}; "
          f"per-position class means explain {100 * r2:.1f} % of the latent variance")
    print_table(["more stage-A steps", "loss, last 100 steps", "mIoU / OA, scale 1", "mIoU / OA, scale 4",
                 "v-loss true vs other masks", "seconds"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
