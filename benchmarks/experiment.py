"""Does TISynth-style synthetic data help? The paper's experiment at small scale on real data.

Runs the project's own pipelines (``kedro run --pipeline=synthesize`` in the ``folder``
environment) on a real dataset in a workspace folder, then adds what the paper's comparison
needs on top of their outputs:

(a) real only, (b) real + filtered TISynth synthetic, (c) real + filtered synthetic from the
mask ControlNet alone (the stage-A model: no Ref, no AIA; the ablation), (d) real + unfiltered
TISynth synthetic; equal iteration budgets, checkpoints selected on val, the test split (and a
target domain's test tiles) touched once per model, several seeds. Image-quality proxy: a
real-only segmenter's mIoU on synthetic images against the masks they were made for.

    python benchmarks/experiment.py --data ../shared/data/gid5 --workspace benchmarks/out/gid5 \\
        --taef2 ../shared/data/weights/taef2
    # cross-domain (Rural -> Urban analogue): masks from some scene groups, Refs + test from others
    python benchmarks/experiment.py --data ../shared/data/gid5 --workspace benchmarks/out/gid5_cross \\
        --taef2 ../shared/data/weights/taef2 --source-groups "farmland forest meadow water" \\
        --target-groups builtup

Every step resumes: generator checkpoints, synthetic images, filtered masks and segmenter work
folders are reused by a rerun with the same settings. Results go to ``<workspace>/results``
(CSV, Markdown, figures); ``--smoke`` shrinks every budget to check the wiring in minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("experiment")

VARIANTS = {
    "real": "(a) real only",
    "tisynth": "(b) real + TISynth (filtered)",
    "controlnet": "(c) real + mask ControlNet only (filtered)",
    "tisynth_unfiltered": "(d) real + TISynth (unfiltered)",
}


def kedro_params(args: argparse.Namespace) -> dict[str, Any]:
    """Parameters of the synthesize run (on top of conf/base + conf/folder)."""
    s = 0.02 if args.smoke else 1.0

    def steps(n: int) -> int:
        return max(2, int(n * s))

    generator: dict[str, Any] = {"preset": "small"}
    if args.taef2:
        generator["autoencoder"] = {"type": "taef2", "weights_dir": str(Path(args.taef2).resolve()), "scale": 1.25}
    params: dict[str, Any] = {
        "dataset": {"root": str(Path(args.data).resolve())},
        "generator": generator,
        "train_generator": {
            "common": {"batch_size": 8, "checkpoint_every": 50, "log_every": 10},
            "base": {"steps": steps(args.base_steps), "learning_rate": 1e-3},
            "A": {"steps": steps(args.a_steps), "learning_rate": 5e-4},
            "B": {"steps": steps(args.b_steps), "learning_rate": 5e-4},
            "report": {"tiles": 6, "sample": {"steps": args.sample_steps, "guidance_scale": args.guidance}},
        },
        "references": {"seeds_per_pair": 1, "pairing": {"refs_per_mask": 1},
                       "masks": {"limit": 24 if args.smoke else args.mask_limit}},
        "sample": {"sampler": {"steps": 2 if args.smoke else args.sample_steps, "guidance_scale": args.guidance,
                               "batch_size": 16}},
        "segmenter": {
            "data": {"crop_size": 128, "resize_ratio": [0.5, 2.0]},
            "train": {"iterations": steps(args.seg_iterations), "val_interval": steps(args.seg_iterations // 4),
                      "checkpoint_interval": steps(args.seg_iterations // 4), "log_interval": 100,
                      "num_threads": args.threads},
            "optimizer": {"lr": 0.001},
        },
    }
    if args.source_groups:
        params["dataset"]["groups"] = args.source_groups
    if args.target_groups:
        params["target"] = {"root": str(Path(args.data).resolve()), "groups": args.target_groups,
                            "require_masks": True}
    return params


def prepare_workspace(workspace: Path) -> None:
    """A project folder whose data/ and mlflow.db belong to this experiment."""
    workspace.mkdir(parents=True, exist_ok=True)
    for name in ("conf",):
        if (workspace / name).exists():
            shutil.rmtree(workspace / name)
        shutil.copytree(ROOT / name, workspace / name, ignore=shutil.ignore_patterns("local"))
    (workspace / "conf" / "local").mkdir(exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, workspace / name)
    (workspace / "src").mkdir(exist_ok=True)  # the package is installed; Kedro only checks the folder


@contextmanager
def session(workspace: Path, params: dict[str, Any]) -> Iterator[Any]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    os.chdir(workspace)
    bootstrap_project(workspace)
    with KedroSession.create(project_path=workspace, env="folder", runtime_params=params) as s:
        yield s


def run_pipelines(workspace: Path, params: dict[str, Any], pipelines: list[str]) -> float:
    import mlflow

    start = time.time()
    with session(workspace, params) as s:
        s.run(pipeline_names=pipelines)
    while mlflow.active_run():
        mlflow.end_run()
    return time.time() - start


def sample_and_filter_controlnet(catalog: Any, out: Path, params: dict[str, Any], registry: Any) -> pd.DataFrame:
    """(c): the same plan sampled by the stage-A model (mask only), filtered like (b)."""
    from tisynth import filtering
    from tisynth.generator import synthesis
    from tisynth.io import TileSet

    plan = catalog.load("synthesis_plan")
    tiles = catalog.load("tiles")
    target = catalog.load("target_tiles")
    model = catalog.load("generator_stage_a")
    sampler = {**params["sample"]["sampler"], "mode": "controlnet"}
    settings = synthesis.SynthesisSettings(sample=sampler, chunk=32)
    folder = out / "synthetic_controlnet"
    synthesis.write_synthetic_images(folder, model, plan, {"source": tiles, "target": target}, settings,
                                     synthesis.generator_version(model) + "-controlnet")
    manifest = synthesis.index_synthetic(TileSet(folder), plan, "png")
    segmenter = catalog.load("real_segmenter")
    mu = filtering.class_losses_array(catalog.load("class_losses"), registry.num_classes)
    items = filtering.synthetic_items(manifest, TileSet(folder), tiles)
    filtering.filter_synthetic_set(segmenter, items, mu, out / "filtered_controlnet", 1.25, 16)
    hard = filtering.select_hard_classes(catalog.load("hard_classes"), registry)
    kept, _, summary = filtering.resample_filtered_set(manifest, items, out / "filtered_controlnet", registry, hard, 0.8)
    log.info("ControlNet-only synthetic: %s", summary)
    return kept


def quality_proxy(segmenter: Any, pairs: list[tuple[np.ndarray, np.ndarray]], k: int) -> dict[str, float]:
    """A real-only segmenter's scores on (image, mask) pairs: how well images follow masks."""
    from tisynth.segmentation.metrics import ConfusionAccumulator

    acc = ConfusionAccumulator(k)
    for img, mask in pairs:
        acc.update(mask, segmenter.predict(img)[0])
    m = acc.result()
    return {"OA": m.oa, "mIoU": m.miou, "mAcc": m.macc}


def style_distance(images: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Distance between the mean colour histograms (per channel, 32 bins) of two image sets."""
    def hist(imgs: list[np.ndarray]) -> np.ndarray:
        h = np.zeros((3, 32))
        for im in imgs:
            for c in range(3):
                h[c] += np.histogram(im[..., c], bins=32, range=(0, 256))[0]
        return h / h.sum(axis=1, keepdims=True)

    a, b = hist(images), hist(reference)
    return float(0.5 * np.abs(a - b).sum(axis=1).mean())  # total variation, 0..1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder (images/, masks/, classes.csv, split.csv)")
    p.add_argument("--workspace", required=True, help="folder for this experiment's data, models and results")
    p.add_argument("--taef2", help="folder with the TAEF2 weights (latent diffusion in its 32x28x28 space)")
    p.add_argument("--source-groups", help="scene groups of the labelled source (split file's scene column)")
    p.add_argument("--target-groups", help="scene groups of the target domain (Refs + evaluation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--base-steps", type=int, default=1200)
    p.add_argument("--a-steps", type=int, default=600)
    p.add_argument("--b-steps", type=int, default=400)
    p.add_argument("--sample-steps", type=int, default=12)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--mask-limit", type=int, default=None, help="synthesise for at most this many masks")
    p.add_argument("--seg-iterations", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the segmenters (null: default)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--smoke", action="store_true", help="tiny budgets: check the wiring")
    p.add_argument("--reuse-synthetic", action="store_true",
                   help="do not run `synthesize`: use the workspace's generator and synthetic data as they are "
                        "(to add seeds or variants after the code changed)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workspace = Path(args.workspace).resolve()
    out = workspace / "results"
    prepare_workspace(workspace)
    out.mkdir(parents=True, exist_ok=True)
    params = kedro_params(args)
    (out / "params.json").write_text(json.dumps({**vars(args), "kedro_params": params}, indent=2, default=str))

    timings: dict[str, float] = {}
    if args.reuse_synthetic:
        missing = [d for d in ("data/06_models/generator", "data/07_model_output/filtered_manifest.parquet")
                   if not (workspace / d).exists()]
        if missing:
            raise SystemExit(f"--reuse-synthetic: {workspace} has no {', '.join(missing)}; run without it first")
        log.info("reusing the generator and synthetic data in %s", workspace)
    else:
        timings["synthesize"] = run_pipelines(workspace, params, ["synthesize"])
        log.info("synthesize took %.0f s", timings["synthesize"])

    from tisynth.segmentation.experiment import AUGMENTED, BASELINE, run_comparison
    from tisynth.segmentation.pairs import Pair, pairs_from_manifest, synthetic_pairs_from_manifest

    with session(workspace, params) as s:
        catalog = s.load_context().catalog
        registry = catalog.load("class_registry")
        tiles, manifest = catalog.load("tiles"), catalog.load("tile_manifest")
        target_tiles, target_manifest = catalog.load("target_tiles"), catalog.load("target_manifest")
        syn_images, syn_manifest = catalog.load("synthetic_images"), catalog.load("synthetic_manifest")
        filtered, filtered_manifest = catalog.load("filtered_synthetic"), catalog.load("filtered_manifest")
        real_segmenter = catalog.load("real_segmenter")
        synthetic_sets: dict[str, list[Pair]] = {
            "tisynth": synthetic_pairs_from_manifest(filtered_manifest, syn_images, filtered),
            "tisynth_unfiltered": [Pair(str(syn_images.path(i)), str(tiles.path(m)))
                                   for i, m in zip(syn_manifest["image"], syn_manifest["mask"])],
        }
        if "controlnet" in args.variants:
            t0 = time.time()
            kept = sample_and_filter_controlnet(catalog, out / "work", params, registry)
            timings["controlnet_sample_filter"] = time.time() - t0
            from tisynth.io import TileSet

            synthetic_sets["controlnet"] = synthetic_pairs_from_manifest(
                kept, TileSet(out / "work" / "synthetic_controlnet"), TileSet(out / "work" / "filtered_controlnet"))

        # image-quality proxy: the real-only segmenter on synthetic images vs their masks
        k = registry.num_classes
        proxy = {"real val tiles": quality_proxy(real_segmenter, [
            (tiles.read_image(i), tiles.read_mask(m)) for i, m in
            zip(*manifest.loc[manifest["split"] == "val", ["image", "mask"]].T.values)], k)}
        sub = syn_manifest.head(300)
        proxy["TISynth synthetic"] = quality_proxy(real_segmenter, [
            (syn_images.read_image(i), tiles.read_mask(m)) for i, m in zip(sub["image"], sub["mask"])], k)
        if "controlnet" in synthetic_sets:
            cn_root = out / "work" / "synthetic_controlnet"
            from tisynth.io import read_image

            proxy["ControlNet-only synthetic"] = quality_proxy(real_segmenter, [
                (read_image(cn_root / "images" / f"{n}.png"), tiles.read_mask(m))
                for n, m in zip(sub["name"], sub["mask"])], k)
        # style proxy: colour-histogram distance of synthetic images to the Ref domain and to the source
        ref_root = target_tiles if len(target_manifest) else tiles
        ref_imgs = [ref_root.read_image(r) for r in syn_manifest["ref"].drop_duplicates().head(200)]
        src_imgs = [tiles.read_image(i) for i in manifest.loc[manifest["split"] == "train", "image"].head(200)]
        syn_imgs = [syn_images.read_image(i) for i in sub["image"].head(200)]
        style = {"synthetic vs Ref domain": style_distance(syn_imgs, ref_imgs),
                 "synthetic vs source train": style_distance(syn_imgs, src_imgs),
                 "Ref domain vs source train": style_distance(ref_imgs, src_imgs)}

        train = pairs_from_manifest(manifest, tiles, "train")
        val = pairs_from_manifest(manifest, tiles, "val")
        eval_sets = {"test": pairs_from_manifest(manifest, tiles, "test")}
        if len(target_manifest) and target_manifest["mask"].notna().any():
            eval_sets["target"] = pairs_from_manifest(target_manifest, target_tiles, "test")
        seg_params = s.load_context().params["segmenter"]
        work_root = workspace / "data" / "06_models" / "segmentation_work"
        rows = []
        t0 = time.time()
        baseline = run_comparison(seg_params, registry, train, val, [], eval_sets, work_root, None, args.seeds,
                                  variants=(BASELINE,), track=False)
        rows.append(baseline.results.assign(variant="real"))
        for name in [v for v in args.variants if v != "real"]:
            res = run_comparison(seg_params, registry, train, val, synthetic_sets[name], eval_sets, work_root,
                                 {"mode": "equal_budget"}, args.seeds, variants=(AUGMENTED,), track=False)
            rows.append(res.results.assign(variant=name))
        timings["segmentation"] = time.time() - t0

    results = pd.concat(rows, ignore_index=True)
    results.to_csv(out / "results_long.csv", index=False)
    counts = {n: len(v) for n, v in synthetic_sets.items()}
    write_summary(out, results, proxy, style, counts, timings, len(train), args)
    log.info("results in %s", out)
    return 0


def write_summary(out: Path, results: pd.DataFrame, proxy: dict[str, dict[str, float]], style: dict[str, float],
                  counts: dict[str, int], timings: dict[str, float], n_train: int, args: argparse.Namespace) -> None:
    from tisynth.plots import plt

    main_metrics = results[results["metric"].isin(["OA", "mIoU", "mAcc"])]
    table = (main_metrics.groupby(["eval_set", "variant", "metric"])["value"]
             .agg(["mean", "std", "count"]).reset_index())
    table.to_csv(out / "summary.csv", index=False)
    lines = ["# Results", ""]
    for eval_set in table["eval_set"].unique():
        lines += [f"## {eval_set} (mean ± std over {int(table['count'].max())} seeds, percent)", "",
                  "| variant | OA | mIoU | mAcc |", "|---|---|---|---|"]
        part = table[table["eval_set"] == eval_set]
        base = part[part["variant"] == "real"].set_index("metric")["mean"]
        for variant in [v for v in VARIANTS if v in set(part["variant"])]:
            row = part[part["variant"] == variant].set_index("metric")
            cells = []
            for metric in ("OA", "mIoU", "mAcc"):
                mean, std = 100 * row.loc[metric, "mean"], 100 * row.loc[metric, "std"]
                gain = "" if variant == "real" else f" ({100 * (row.loc[metric, 'mean'] - base[metric]):+.2f})"
                cells.append(f"{mean:.2f} ± {std:.2f}{gain}")
            lines.append(f"| {VARIANTS[variant]} | " + " | ".join(cells) + " |")
        lines.append("")
        per_class = results[(results["eval_set"] == eval_set) & (results["metric"] == "IoU")]
        if len(per_class):
            pc = per_class.groupby(["class", "variant"])["value"].mean().unstack("variant") * 100
            lines += ["Per-class IoU (mean over seeds):", "", "| class | " + " | ".join(pc.columns) + " |",
                      "|---" * (len(pc.columns) + 1) + "|"]
            for cls, r in pc.iterrows():
                lines.append(f"| {cls} | " + " | ".join(f"{v:.2f}" for v in r.values) + " |")
            lines.append("")
            fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
            pc.plot.bar(ax=ax)
            ax.set_ylabel("IoU (%)")
            ax.set_title(f"per-class IoU on {eval_set}")
            fig.savefig(out / f"per_class_iou_{eval_set}.png", dpi=110)
            plt.close(fig)
    lines += ["## Image-quality proxy (real-only segmenter on images vs their masks, percent)", "",
              "| images | OA | mIoU | mAcc |", "|---|---|---|---|"]
    for name, m in proxy.items():
        lines.append(f"| {name} | {100 * m['OA']:.2f} | {100 * m['mIoU']:.2f} | {100 * m['mAcc']:.2f} |")
    lines += ["", "## Style proxy (colour-histogram total variation, 0 = same colours)", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in style.items()]
    lines += ["", f"Real training tiles: {n_train}; synthetic pairs used: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
              "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    (out / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
