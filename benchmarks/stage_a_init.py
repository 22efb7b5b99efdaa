"""How the mask ControlNet's initialisation changes how fast stage A learns to follow masks.

Starts from the generator of a finished ``benchmarks/experiment.py`` workspace (its stage-A
model: the base UNet as trained, decoder included), replaces the mask ControlNet by a fresh one
initialised in each of these ways, trains stage A again for ``--steps`` and scores the result
with the workspace's real-only segmenter on images sampled for val masks (mIoU / OA of its
predictions against the masks, at ControlNet conditioning scales 1 and 4):

* ``random_zero``: a copy of a randomly initialised UNet, zero last hint conv (what the build
  gave before stage A restarted the ControlNet from the trained UNet);
* ``random_nonzero``: the same with a default-initialised last hint conv;
* ``copy_zero``: a copy of the trained UNet's encoder, zero last hint conv (ControlNet's rule);
* ``copy_nonzero``: a copy of the trained UNet, default last hint conv (the from-scratch presets);
* ``copy_nonzero_high_t``: as ``copy_nonzero``, trained on timesteps 400-999 only.

``--as-trained`` also scores the workspace's stage-A model as it is. Prints a table.

    python benchmarks/stage_a_init.py --workspace <experiment workspace> --steps 250 --as-trained
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from experiment import quality_proxy, session
from tisynth.generator import TileDataset, collate_items, sample_images, train_generator
from tisynth.generator.data import images_to_uint8

TRIALS = {  # name: (copy the trained UNet, non-zero last hint conv, timesteps)
    "random_zero": (False, False, None),
    "random_nonzero": (False, True, None),
    "copy_zero": (True, False, None),
    "copy_nonzero": (True, True, None),
    "copy_nonzero_high_t": (True, True, list(range(400, 1000))),
}


def load_workspace(workspace: Path) -> dict[str, Any]:
    """Registry, tiles, manifest, real-only segmenter and stage-A model of a finished workspace."""
    params = json.loads((workspace / "results" / "params.json").read_text())["kedro_params"]
    with session(workspace, params) as s:
        cat = s.load_context().catalog
        return {name: cat.load(name) for name in
                ("class_registry", "tiles", "tile_manifest", "real_segmenter", "generator_stage_a")}


def val_batch(tiles: Any, manifest: Any, items: int) -> dict[str, Any]:
    """Every 4th labelled val tile, at most ``items`` of them, collated."""
    data = TileDataset(tiles, manifest[(manifest["split"] == "val") & manifest["mask"].notna()].iloc[::4].head(items), split=None)
    return collate_items([data[i] for i in range(len(data))])


def stage_a_config(steps: int, lr: float, batch: int, **overrides: Any) -> dict[str, Any]:
    """The workspace's stage-A recipe (decoder trained), without touching the ControlNet's start."""
    return {"stage": "A", "steps": steps, "learning_rate": lr, "batch_size": batch, "train_unet_decoder": True,
            "controlnet_from_unet": False, **overrides}


def score(segmenter: Any, registry: Any, images: np.ndarray, masks: np.ndarray) -> str:
    """``mIoU / OA`` (percent) of the segmenter's reading of ``images`` against ``masks``."""
    r = quality_proxy(segmenter, list(zip(images, masks)), registry.num_classes)
    return f"{100 * r['mIoU']:.1f} / {100 * r['OA']:.1f}"


def sample_stage_a(model: Any, batch: dict[str, Any], sample_steps: int, scale: float) -> np.ndarray:
    """Stage-A (mask ControlNet only) images for the batch's masks, seeds 0..N-1, no guidance."""
    masks = batch["masks"].numpy()
    cfg = {"steps": sample_steps, "guidance_scale": 1.0, "mode": "controlnet", "batch_size": 16, "conditioning_scale": scale}
    return sample_images(model, masks, None, batch["prompts"], list(range(len(masks))), cfg)


def print_table(header: list[str], rows: list[tuple[str, ...]]) -> None:
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, help="a finished benchmarks/experiment.py workspace")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--items", type=int, default=48, help="val masks to sample for (every 4th val tile)")
    p.add_argument("--sample-steps", type=int, default=12)
    p.add_argument("--trials", nargs="+", default=list(TRIALS), choices=list(TRIALS))
    p.add_argument("--as-trained", action="store_true", help="also score the workspace's stage-A model as it is")
    args = p.parse_args()

    loaded = load_workspace(Path(args.workspace).resolve())
    registry, tiles, manifest = loaded["class_registry"], loaded["tiles"], loaded["tile_manifest"]
    segmenter, model = loaded["real_segmenter"], loaded["generator_stage_a"]
    batch = val_batch(tiles, manifest, args.items)
    masks = batch["masks"].numpy()
    train = TileDataset(tiles, manifest[manifest["split"] == "train"], split=None)
    unet_state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    cn_kwargs = {
        "conditioning_channels": model.mask_controlnet.config.conditioning_channels,
        "conditioning_embedding_out_channels": tuple(model.mask_controlnet.config.conditioning_embedding_out_channels),
    }

    def evaluate() -> list[str]:
        return [score(segmenter, registry, sample_stage_a(model, batch, args.sample_steps, scale), masks) for scale in (1.0, 4.0)]

    rows = [("real val tiles", "", score(segmenter, registry, images_to_uint8(batch["images"]), masks), "")]
    if args.as_trained:
        rows.append(("workspace stage A as trained", "", *evaluate()))
    for name in args.trials:
        copy, nonzero, timesteps = TRIALS[name]
        model.unet.load_state_dict(unet_state)
        torch.manual_seed(0)
        source = model.unet if copy else UNet2DConditionModel(**{k: v for k, v in model.unet.config.items() if not k.startswith("_")})
        model.mask_controlnet = ControlNetModel.from_unet(source, **cn_kwargs)
        if nonzero:
            model.mask_controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
        cfg = stage_a_config(args.steps, args.lr, args.batch, checkpoint_every=0, resume=False)  # the init under test is set above
        if timesteps:
            cfg["timesteps"] = timesteps
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            history = train_generator(model, train, cfg, tmp).history
        tail = float(np.mean([h["loss"] for h in history[-50:]]))
        rows.append((f"{name}, {args.steps} steps", f"{tail:.4f} ({time.time() - start:.0f} s)", *evaluate()))
        print(rows[-1], flush=True)

    print_table(["mask ControlNet", "stage-A loss, last 50 steps", "mIoU / OA, scale 1", "mIoU / OA, scale 4"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
