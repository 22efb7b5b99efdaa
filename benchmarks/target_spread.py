"""Where does the seed spread of the target reading come from? Real-only segmenters of an
experiment workspace, read per tile, per checkpoint rule and on more target tiles.

For each seed, the real-only segmenter of ``benchmarks/experiment.py`` (the same job and work
folder, so finished ones are reused; ``--train`` trains the missing ones) is read with two
checkpoint rules (``selected``: best source-val mIoU, what the experiment reports; ``last``:
the final moving average) on each evaluation set: source test, target test, and, as a
diagnosis only, the target's train and val tiles (in the synthetic sensor-shift setting their
masks exist; they are the Ref pool, so a result table must not use them). Every reading keeps
its per-tile confusion matrices, so its tile-sampling error (bootstrap over tiles) stands
beside the spread over seeds (:mod:`tisynth.segmentation.spread`).

    python benchmarks/target_spread.py --workspace <ws3> --seeds 0 1 2 3 4
    # a candidate protocol: the sensor-style augmentation of the segmenter
    python benchmarks/target_spread.py --workspace <ws3> --seeds 0 1 2 3 4 --train \\
        --segmenter-set data.style_augment=0.5 --label "style augment 0.5"

Rows append to ``<workspace>/spread/readings.csv`` (one per seed, checkpoint, eval set and
protocol; a rerun replaces its own rows); the table of every protocol so far is printed and
written to ``<workspace>/spread/spread.md``, the readings per seed drawn in
``<workspace>/spread/spread_<rule>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

log = logging.getLogger("target_spread")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", required=True, help="a benchmarks/experiment.py workspace (its settings are reused)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--segmenter-set", dest="segmenter_overrides", action="append", default=[],
                   help="dotted.key=YAML below `segmenter`: a candidate protocol (as experiment.py's option)")
    p.add_argument("--label", default=None, help="the protocol's name in the table (default: the overrides)")
    p.add_argument("--train", action="store_true", help="train the missing real-only segmenters (else skip them)")
    p.add_argument("--eval-sets", nargs="+", default=["source test", "target test", "target val", "target train"],
                   help="of: source test, source val, target test, target val, target train")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the tiles")
    p.add_argument("--baseline", default=None,
                   help="protocol label the others are compared with, seed by seed (default: the first in the table)")
    p.add_argument("--report-only", action="store_true",
                   help="read nothing: rebuild the tables and figures from <workspace>/spread/readings.csv")
    return p


def read_models(args: argparse.Namespace, workspace: Path, params: dict, overrides: dict, label: str) -> list[dict]:
    """Train what is missing (with ``--train``) and read every seed's model per checkpoint rule and eval set."""
    import experiment as ex

    from tisynth.params import deep_merge
    from tisynth.segmentation.config import SegmenterConfig
    from tisynth.segmentation.experiment import REAL_ONLY_JOB
    from tisynth.segmentation.pairs import pairs_from_manifest
    from tisynth.segmentation.spread import bootstrap_miou, last_checkpoint, miou, tile_confusions
    from tisynth.segmentation.train import (load_segmenter_checkpoint, segmenter_finished, train_segmenter,
                                            work_dir_for)

    rows: list[dict] = []
    with ex.session(workspace, params) as s:
        ctx = s.load_context()
        catalog = ctx.catalog
        registry = catalog.load("class_registry")
        tiles, manifest = catalog.load("tiles"), catalog.load("tile_manifest")
        target_tiles, target_manifest = catalog.load("target_tiles"), catalog.load("target_manifest")
        ex.check_segmenter(ctx.params["segmenter"], overrides)
        config = SegmenterConfig.from_params(deep_merge(ctx.params["segmenter"], overrides))
        work_root = workspace / ctx.params["segmenter_work_root"]
        train = pairs_from_manifest(manifest, tiles, "train")
        val = pairs_from_manifest(manifest, tiles, "val")
        sets = {}
        for name in args.eval_sets:
            domain, _, split = name.partition(" ")
            if domain not in ("source", "target") or not split:
                raise SystemExit(f"--eval-sets {name!r}: use '<source|target> <split>'")
            m, t = (manifest, tiles) if domain == "source" else (target_manifest, target_tiles)
            pairs = pairs_from_manifest(m, t, split) if len(m) else []
            if pairs:
                sets[name] = pairs
            else:
                log.info("%s: no labelled tiles; left out", name)
        if not sets:
            raise SystemExit(f"--eval-sets {args.eval_sets}: none has labelled tiles in this workspace")
        for seed in args.seeds:
            cfg = config.replace(train={"seed": int(seed)})
            work_dir = work_dir_for(work_root, REAL_ONLY_JOB, cfg, registry, train, val)
            if not segmenter_finished(work_dir):
                if not args.train:
                    log.info("seed %d: not trained yet (%s); skipped (--train trains it)", seed, work_dir.name)
                    continue
                train_segmenter(cfg, registry, train, val, work_dir, label=f"real-seed{seed}")
            done = json.loads((work_dir / "done.json").read_text())
            checkpoints = {"selected": Path(work_dir) / Path(done["checkpoint"]).name}
            last = last_checkpoint(work_dir)
            if last is not None:
                checkpoints["last"] = last
            for rule, path in checkpoints.items():
                seg = load_segmenter_checkpoint(path, cfg, registry)
                for name, pairs in sets.items():
                    conf = tile_confusions(seg, pairs)
                    boot = bootstrap_miou(conf, args.boot, seed=int(seed))
                    rows.append({"protocol": label, "checkpoint": rule, "eval_set": name, "seed": int(seed),
                                 "tiles": len(pairs), "iteration": path.stem, "mIoU": miou(conf.sum(axis=0)),
                                 "boot_se": float(boot.std(ddof=1))})
                    log.info("seed %d %s (%s) %s: mIoU %.2f ± %.2f (tiles)", seed, rule, path.name, name,
                             100 * rows[-1]["mIoU"], 100 * rows[-1]["boot_se"])
    return rows


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import experiment as ex

    from tisynth.segmentation.spread import (differences_markdown, protocol_differences, spread_figure,
                                             spread_markdown, spread_table)

    workspace = Path(args.workspace).resolve()
    settings = workspace / "results" / "params.json"
    if not settings.is_file():
        raise SystemExit(f"{settings}: not found; run benchmarks/experiment.py in this workspace first")
    params = json.loads(settings.read_text())["kedro_params"]
    overrides = ex.segmenter_protocol(args.segmenter_overrides)
    label = args.label or (", ".join(args.segmenter_overrides) or "experiment's segmenter")
    out = workspace / "spread"
    out.mkdir(exist_ok=True)
    rows = [] if args.report_only else read_models(args, workspace, params, overrides, label)
    readings_file = out / "readings.csv"
    new = pd.DataFrame(rows)
    if readings_file.is_file():
        old = pd.read_csv(readings_file)
        if not new.empty:
            key = ["protocol", "checkpoint", "eval_set", "seed"]
            old = old.merge(new[key], on=key, how="left", indicator=True)
            old = old[old["_merge"] == "left_only"].drop(columns="_merge")
        new = pd.concat([old, new], ignore_index=True)
    if new.empty:
        raise SystemExit("no finished real-only segmenter for these seeds (use --train)")
    tmp = readings_file.with_suffix(".tmp")
    new.to_csv(tmp, index=False)
    tmp.replace(readings_file)
    baseline = args.baseline or str(new["protocol"].iloc[0])
    if baseline not in set(new["protocol"]):
        raise SystemExit(f"--baseline {baseline!r}: not a protocol of {readings_file} ({sorted(set(new['protocol']))})")
    text = spread_markdown(spread_table(new))
    differences = protocol_differences(new, baseline)
    if len(differences):
        text += "\n\n" + differences_markdown(differences)
    (out / "spread.md").write_text(text + "\n")
    for rule in dict.fromkeys(new["checkpoint"]):
        spread_figure(new, rule).savefig(out / f"spread_{rule}.png", dpi=110)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
