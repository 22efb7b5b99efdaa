"""Real-only segmentation on a folder dataset through tisynth's mmseg adapter.

Trains on the ``train`` split, selects the checkpoint on ``val`` (best mIoU) and evaluates the
selected model once on ``test``; prints OA / mIoU / mAcc, per-class IoU and the wall-clock time.

The dataset folder holds ``images/<name>.<ext>``, ``masks/<name>.png`` (raw class ids),
``classes.csv`` (``id,name,r,g,b``; a row named "unlabeled" or flagged ``ignore`` is the ignore
id) and ``split.csv`` (``name,split``). Raw masks are converted to index space once, into
``<work-root>/index_masks``.

Example (GID-5 tiles, CPU)::

    nice python benchmarks/bench_segmentation.py --data-root /path/to/gid5 \
        --work-root data/09_benchmarks/gid5 --model unet --iterations 3000 --crop 128
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from tisynth.classes import ClassRegistry
from tisynth.io import read_raster, write_image
from tisynth.segmentation.pairs import Pair
from tisynth.segmentation.train import train_segmenter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def build_pairs(root: Path, registry: ClassRegistry, cache: Path) -> dict[str, list[Pair]]:
    """Pairs per split from split.csv; masks decoded to index space into ``cache``."""
    splits: dict[str, list[Pair]] = {}
    with (root / "split.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        name, split = row["name"], row["split"]
        image = next((root / "images" / f"{name}{s}" for s in IMAGE_SUFFIXES
                      if (root / "images" / f"{name}{s}").is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{root / 'images'}: no image for {name!r}")
        target = cache / f"{name}.png"
        if not target.is_file():
            raw = read_raster(root / "masks" / f"{name}.png")
            write_image(target, registry.decode(raw, where=str(root / "masks" / f"{name}.png")))
        splits.setdefault(split, []).append(Pair(str(image), str(target)))
    return splits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--work-root", required=True, type=Path)
    p.add_argument("--model", default="segformer", choices=["unet", "segformer", "pspnet_r50"])
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--num-stages", type=int, default=4)
    p.add_argument("--embed-dims", type=int, default=32)
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--val-interval", type=int, default=500)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--optimizer", default="AdamW", choices=["AdamW", "SGD", "Adam"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N train tiles")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    registry = ClassRegistry.from_csv(args.data_root / "classes.csv")
    t0 = time.time()
    splits = build_pairs(args.data_root, registry, args.work_root / "index_masks")
    train = splits["train"][: args.max_train] if args.max_train else splits["train"]
    config = {
        "model": {"type": args.model, "base_channels": args.base_channels, "num_stages": args.num_stages,
                  "embed_dims": args.embed_dims},
        "data": {"crop_size": args.crop},
        "train": {"iterations": args.iterations, "val_interval": args.val_interval,
                  "checkpoint_interval": args.val_interval, "batch_size": args.batch,
                  "log_interval": max(1, args.val_interval // 5), "seed": args.seed, "device": args.device,
                  "num_threads": args.threads, "num_workers": args.workers},
        "optimizer": {"type": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay,
                      "warmup_iters": args.warmup},
    }
    tag = f"{args.model}-c{args.crop}-b{args.batch}-i{args.iterations}-s{args.seed}"
    segmenter = train_segmenter(config, registry, train, splits["val"], args.work_root / tag, label=tag)
    t_train = time.time() - t0
    t1 = time.time()
    metrics = segmenter.evaluate(splits["test"])
    t_test = time.time() - t1
    info = segmenter.training_info
    print(f"\n{tag}: {len(train)} train / {len(splits['val'])} val / {len(splits['test'])} test tiles")
    print(f"selected: {info['selection']} at iter {info['best_iter']} (val mIoU {info['best_val_mIoU']:.4f})")
    print(f"test  OA {metrics.oa:.4f}  mIoU {metrics.miou:.4f}  mAcc {metrics.macc:.4f}")
    for row in metrics.per_class():
        print(f"  {row['class']:<12} IoU {row['IoU']:.4f}  Acc {row['Acc']:.4f}  ({row['truth_pixels']} px)")
    print(f"time: train+select {t_train / 60:.1f} min (this session), test {t_test:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "tag": tag, "config": config, "test": metrics.to_dict(),
            "confusion": metrics.confusion.tolist(), "best_iter": info["best_iter"],
            "best_val_mIoU": info["best_val_mIoU"], "val_history": info["val_history"],
            "minutes_train": t_train / 60, "seconds_test": t_test,
        }, indent=2, default=lambda o: None if isinstance(o, float) and np.isnan(o) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
