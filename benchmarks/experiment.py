"""Does TISynth-style synthetic data help? The paper's comparison on real data, one setting per workspace.

Runs the project's own ``synthesize`` pipeline (``folder`` environment: the mask-first
generator, the real-only segmenter of the filter step, the FreeMask filter) in a workspace
folder, then trains the segmenters the comparison needs, on equal iteration budgets, with
checkpoints selected on val and every evaluation set touched once per model:

(a) ``real``: real tiles only; (b) ``tisynth``: + the filtered TISynth set; (c) ``maskonly``:
+ the same plan sampled by the generator before its Ref stage (mask and text only: no Ref, no
AIA), filtered by the same rule; (d) ``tisynth_unfiltered``: + every TISynth image with its
mask as it is; (e) ``fda`` and (f) ``histmatch``: + the plan's source tiles restyled without a
generator (:mod:`tisynth.restyle`: Fourier Domain Adaptation, β ``--fda-beta``, or per-band
histogram matching), each towards its plan row's Ref, with its mask unchanged (the image's
content is the real tile, so no pixel is filtered out). By default (``--restyle-pairs kept``)
they take exactly the plan rows whose TISynth image (b)'s filter kept: the same masks, Refs and
number of pairs as (b), mixed as (b), so only the way the image is made differs (the filter must
have run: the synthesize phase); ``--restyle-pairs all`` takes every plan row instead, as many
pairs as (d). (g) ``tisynth_fda``: + (b)'s pairs and (e)'s together. Seeds are paired: variant (x) and (a) of one seed share the seed, the model's
initialisation and the crop stream's seed; the report gives each gain over (a) per seed, its
mean, and the 95 % paired-t interval of that mean over seeds.

The settings of docs/results.md §4c are parameter overrides (``--set dotted.key=YAML``):

    # label-scarce in-domain: 25 % of the train tiles keep masks, Refs from the other 75 %
    python benchmarks/experiment.py --data <gid5> --taef2 <taef2> --workspace <ws> --seeds 0 1 2 3 4 \\
        --set dataset.labelled_fraction=0.25 --set 'references.pool.splits=[unlabeled]'
    # full labels in-domain
    python benchmarks/experiment.py --data <gid5> --taef2 <taef2> --workspace <ws2> --variants real tisynth
    # sensor shift: source tiles labelled, Refs and a second evaluation from the shifted target
    python -m tisynth sensor-shift <gid5> <shift> --config conf/sensor_shift.yml
    python benchmarks/experiment.py --data <shift>/source --taef2 <taef2> --workspace <ws3> \\
        --set target.root=<shift>/target --variants real tisynth
    # the restyling baselines on the plan rows (b)'s filter kept (after the run above; with
    # --restyle-pairs all, on every plan row, which needs no generator)
    python benchmarks/experiment.py --data <shift>/source --taef2 <taef2> --workspace <ws3> \\
        --set target.root=<shift>/target --variants real fda histmatch --phases restyle segment report

Everything resumes and nothing is redone: generator checkpoints, synthetic images, filtered
masks and segmenter work folders are reused by a rerun with the same settings, so the work can
be made in chunks (``--variants`` / ``--seeds`` name what to add; ``--phases`` skips phases).
Each run rewrites ``<workspace>/results`` (or ``--results``: one folder per segmenter protocol,
``--segmenter-set``) from every finished segmenter of the workspace's settings: ``results_long.csv``, ``summary.md``, ``gains.csv`` and figures.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("experiment")

VARIANTS = {
    "real": "(a) real only",
    "tisynth": "(b) + TISynth, filtered",
    "maskonly": "(c) + mask-only generator (no Ref, no AIA), filtered",
    "tisynth_unfiltered": "(d) + TISynth, unfiltered",
    "fda": "(e) + source tiles restyled by FDA, the rows (b)'s filter kept",
    "histmatch": "(f) + source tiles histogram-matched, the rows (b)'s filter kept",
    "tisynth_fda": "(g) + TISynth, filtered, and the FDA-restyled tiles of (e) beside it",
}
RESTYLED = ("fda", "histmatch")
"""Variants made without a generator (:mod:`tisynth.restyle`): from the synthesis plan's rows, by
default the rows (b)'s filter kept (``--restyle-pairs``, :data:`RESTYLE_PAIRS`)."""
COMBINED = {"tisynth_fda": ("tisynth", "fda")}
"""Variants whose extra pairs are the union of two others' (each made as it is on its own). With
``segment.mix.real_fraction: null`` (uniform over real + synthetic) a union of two sets also
lowers the real share of each batch: (g) − (b) is "FDA pairs added", fewer real crops included."""
HEAD_TO_HEAD = ("maskonly", "fda", "histmatch", "tisynth_fda")
"""What (b) is compared with directly: (b) − (x) per seed, its mean and 95 % paired interval."""
RESTYLE_PAIRS = ("kept", "all")
"""Which plan rows the restyled variants use: ``kept``, the rows whose TISynth image the filter
kept (as many pairs as (b)); ``all``, every plan row (as many as (d))."""


def restyled_labels(pairs: str) -> dict[str, str]:
    """The report's names of (e) and (f) for ``--restyle-pairs`` ``pairs``."""
    rows = "the rows (b)'s filter kept" if pairs == "kept" else "every plan row"
    return {"fda": f"(e) + source tiles restyled by FDA, {rows}",
            "histmatch": f"(f) + source tiles histogram-matched, {rows}"}
PHASES = ("synthesize", "maskonly", "restyle", "segment", "report")
MAIN_METRICS = ("OA", "mIoU", "mAcc")


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """``params[a][b][c] = value`` for ``key`` ``a.b.c`` (intermediate blocks are created)."""
    node = params
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def base_params(data: str, taef2: str | None, overrides: list[str]) -> dict[str, Any]:
    """Runtime parameters on top of conf/base + conf/folder: the dataset, the autoencoder, ``--set`` items."""
    params: dict[str, Any] = {"dataset": {"root": str(Path(data).resolve())}, "generator": {"preset": "small"}}
    if taef2:
        params["generator"]["autoencoder"] = {"type": "taef2", "weights_dir": str(Path(taef2).resolve()), "scale": 1.25}
    set_items(params, overrides, "--set")
    return params


def set_items(params: dict[str, Any], items: list[str], flag: str) -> None:
    """Apply ``dotted.key=YAML`` items of the option ``flag`` to ``params`` (refused by name when malformed)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected dotted.key=value")
        set_dotted(params, key, yaml.safe_load(value))


def segmenter_protocol(items: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--segmenter-set`` items (``dotted.key=YAML`` below ``segmenter``) as a nested override,
    checked merged into ``base`` (:func:`check_segmenter`; the built-in defaults when None)."""
    out: dict[str, Any] = {}
    set_items(out, items, "--segmenter-set")
    check_segmenter(base or {}, out)
    return out


def check_segmenter(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Stop the command, naming the key, when ``overrides`` merged into the ``segmenter`` block
    ``base`` is not a usable segmenter."""
    from tisynth.errors import TisynthError
    from tisynth.params import deep_merge
    from tisynth.segmentation.config import SegmenterConfig

    try:
        SegmenterConfig.from_params(deep_merge(base, overrides))
    except (TisynthError, TypeError, ValueError) as exc:
        raise SystemExit(f"--segmenter-set: {exc}") from None


def check_protocol(workspace: Path, params: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Check the protocol against the run's own segmenter block (conf + --set), before any work."""
    with session(workspace, params) as s:
        base = s.load_context().params["segmenter"]
    check_segmenter(base, overrides)


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


def mask_only_set(catalog: Any, ctx_params: dict[str, Any], folder: Path) -> pd.DataFrame:
    """(c): the synthesis plan sampled by the generator before its Ref stage, filtered like (b).

    The model is ``generator_stage_a``: for a mask-first base (SPADE / concat) that is the base
    after its own training, sampled in mode ``base`` (mask + text); for the ControlNet recipe the
    stage-A mask ControlNet, mode ``controlnet``. Sampler and filter settings are the run's own.
    Returns the filtered manifest (column ``kept``).
    """
    from tisynth import filtering
    from tisynth.generator import synthesis
    from tisynth.io import TileSet

    plan, tiles, target = catalog.load("synthesis_plan"), catalog.load("tiles"), catalog.load("target_tiles")
    registry = catalog.load("class_registry")
    model = catalog.load("generator_stage_a")
    mode = "base" if getattr(model, "mask_first", False) else "controlnet"
    settings = synthesis.SynthesisSettings.from_params(ctx_params["sample"])
    settings = synthesis.SynthesisSettings(**{**vars(settings), "sample": {**settings.sample, "mode": mode}, "ref_moments": {}})
    images = folder / "synthetic"
    synthesis.write_synthetic_images(images, model, plan, {"source": tiles, "target": target}, settings,
                                     synthesis.generator_version(model) + f"-{mode}")
    manifest = synthesis.index_synthetic(TileSet(images), plan, settings.image_format)
    fcfg = filtering.FilterSettings.from_params(ctx_params["filter"])
    segmenter = catalog.load("real_segmenter")
    mu = filtering.class_losses_array(catalog.load("class_losses"), registry.num_classes)
    items = filtering.synthetic_items(manifest, TileSet(images), tiles)
    filtering.filter_synthetic_set(segmenter, items, mu, folder / "filtered", fcfg.tolerance, fcfg.batch_size)
    hard = filtering.select_hard_classes(catalog.load("hard_classes"), registry)
    kept, _, summary = filtering.resample_filtered_set(manifest, items, folder / "filtered", registry, hard,
                                                       fcfg.min_kept_fraction)
    log.info("mask-only synthetic (mode %s): kept %d of %d pairs", mode, int(summary["kept_pairs"]),
             int(summary["synthetic_pairs"]))
    return kept


def restyled_folder(workspace: Path, method: str, beta: float) -> Path:
    """Where variant ``method`` keeps its restyled images (one folder per FDA β)."""
    name = f"fda-beta{beta:g}" if method == "fda" else method
    return workspace / "data" / "07_model_output" / "restyle" / name


def kept_plan_rows(plan: pd.DataFrame, filtered_manifest: pd.DataFrame) -> pd.DataFrame:
    """The synthesis-plan rows whose TISynth image the filter kept, in the filtered manifest's order.

    These are the rows of (b)'s pairs (:func:`tisynth.segmentation.pairs.synthetic_pairs_from_manifest`):
    the same masks, Refs and count. A kept row the plan lacks, or one whose mask or Ref differs
    from the plan's, means the filter ran on another plan: refused.
    """
    for what, frame, need in (("filtered_manifest", filtered_manifest, ("name", "kept")),
                              ("synthesis_plan", plan, ("name",))):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise SystemExit(f"{what}: missing column(s) {missing}")
    kept = filtered_manifest[filtered_manifest["kept"].astype(bool)]
    if kept.empty:
        raise SystemExit("filtered_manifest: the filter kept no pairs, so the restyled variants have no rows "
                         "(--restyle-pairs all takes every plan row)")
    by_name = plan.set_index(plan["name"].astype(str), drop=False)
    names = kept["name"].astype(str).tolist()
    absent = [n for n in names if n not in by_name.index]
    if absent:
        raise SystemExit(f"filtered_manifest: {len(absent)} kept row(s) not in the synthesis plan (e.g. {absent[:3]}); "
                         "the filter ran on another plan: run the synthesize phase again")
    rows = by_name.loc[names].reset_index(drop=True)
    for col in ("mask", "ref"):
        if col in kept.columns and col in rows.columns:
            differ = kept[col].astype(str).to_numpy() != rows[col].astype(str).to_numpy()
            if differ.any():
                raise SystemExit(f"filtered_manifest: {int(differ.sum())} kept row(s) with another {col} than the "
                                 "synthesis plan's; the filter ran on another plan: run the synthesize phase again")
    return rows


def restyled_set(catalog: Any, method: str, folder: Path, beta: float,
                 pairs: str = "kept") -> tuple[list[Any], pd.DataFrame]:
    """(e) / (f): synthesis-plan rows' source tiles restyled towards each row's own Ref.

    ``pairs`` ``kept`` (default): the rows whose TISynth image the filter kept
    (:func:`kept_plan_rows` of ``filtered_manifest``), so the same masks, Refs and count as (b);
    ``all``: every plan row, as (d). Images are made by :func:`tisynth.restyle.restyle_plan`
    (resumable in ``folder``; one image per plan row, so both choices share the folder), each
    paired with its tile mask as it is: the image's content is the real tile, so no pixel is
    filtered out. Returns the pairs and the manifest (``image`` relative to ``folder``, ``mask``
    relative to the tiles).
    """
    from tisynth.restyle import restyle_plan
    from tisynth.segmentation.pairs import Pair

    if pairs not in RESTYLE_PAIRS:
        raise SystemExit(f"--restyle-pairs: {pairs!r}, expected one of {RESTYLE_PAIRS}")
    plan, tiles, target = catalog.load("synthesis_plan"), catalog.load("tiles"), catalog.load("target_tiles")
    if pairs == "kept":
        if not catalog.exists("filtered_manifest"):
            raise SystemExit(f"{method}: --restyle-pairs kept takes the plan rows that TISynth's filter kept, and "
                             "the filtered manifest does not exist yet (the filter has not run): run the synthesize "
                             "phase first (e.g. --variants tisynth --phases synthesize), or use --restyle-pairs all")
        plan = kept_plan_rows(plan, catalog.load("filtered_manifest"))
    made = restyle_plan(plan, tiles, {"source": tiles, "target": target}, folder, method, beta)
    out = [Pair(str(folder / i), str(tiles.path(m))) for i, m in zip(made["image"], made["mask"])]
    log.info("%s: %d restyled source tiles (%s plan rows) in %s", method, len(out), pairs, folder)
    return out, made


def reading(segmenter: Any, images: list[np.ndarray], masks: list[np.ndarray], k: int) -> dict[str, float]:
    """A real-only segmenter's reading of images against the masks they were made for."""
    from tisynth.generator.reading import mask_following

    return mask_following([segmenter.predict(img)[0] for img in images], masks, k)


def gains_table(results: pd.DataFrame, baseline: str = "real") -> pd.DataFrame:
    """Per eval set, variant and metric: mean ± std over seeds, and the paired gain over ``baseline``.

    Each variant is compared with ``baseline`` by :func:`tisynth.segmentation.report.comparison_table`
    (gain per seed on the seeds both have, its mean, and the 95 % paired-t interval of that mean).
    """
    from tisynth.segmentation.report import comparison_table

    main = results[results["metric"].isin(MAIN_METRICS)]
    rows = []
    for variant in [v for v in VARIANTS if v in set(main["variant"])]:
        pair = main[main["variant"].isin({baseline, variant})]
        table = comparison_table(pair, baseline=baseline, augmented=variant)
        wide = pair.pivot_table(index=["eval_set", "metric", "seed"], columns="variant", values="value")
        for _, t in table.iterrows():
            part = wide.loc[(t["eval_set"], t["metric"])]
            row = {"eval_set": t["eval_set"], "metric": t["metric"], "variant": variant,
                   "seeds": int(part[variant].notna().sum()), "mean": t[f"{variant}_mean"], "std": t[f"{variant}_std"]}
            if variant != baseline and "delta_mean" in t and baseline in part:
                diff = (part[variant] - part[baseline]).dropna()
                row.update(paired_seeds=len(diff), gain=t["delta_mean"], gain_std=t["delta_std"],
                           ci_low=t["delta_ci_low"], ci_high=t["delta_ci_high"],
                           per_seed=" ".join(f"{100 * d:+.2f}" for d in diff))
            rows.append(row)
    return pd.DataFrame(rows)


def needed_variants(variants: list[str]) -> list[str]:
    """``variants`` and the variants their pairs are made of (:data:`COMBINED`), in order, once each."""
    return list(dict.fromkeys(v for name in variants for v in (name, *COMBINED.get(name, ()))))


def add_combined(synthetic_sets: dict[str, list[Any]], variants: list[str]) -> None:
    """Add each requested combined variant's pairs (its parts' pairs together) once its parts are there
    (a part not made yet is logged and the variant left out, as a missing restyled set is)."""
    for name, parts in COMBINED.items():
        if name not in variants:
            continue
        missing = [p for p in parts if p not in synthetic_sets]
        if missing:
            log.warning("%s: %s not made yet (run the phase that makes it); %s left out", name, ", ".join(missing), name)
            continue
        synthetic_sets[name] = [pair for p in parts for pair in synthetic_sets[p]]


def head_to_head(results: pd.DataFrame, first: str = "tisynth", others: tuple[str, ...] = HEAD_TO_HEAD) -> pd.DataFrame:
    """Per eval set and main metric: ``first`` − each of ``others`` on the seeds both have (mean,
    std, 95 % paired-t interval, per-seed values); the rows of :func:`gains_table` with ``others``
    as the baseline."""
    cols = ["eval_set", "metric", "variant", "baseline", "paired_seeds", "gain", "gain_std", "ci_low", "ci_high",
            "per_seed"]
    rows = []
    present = set(results["variant"])
    for other in [o for o in others if o in present and first in present]:
        table = gains_table(results[results["variant"].isin({first, other})], baseline=other)
        for _, r in table[(table["variant"] == first) & table.get("gain", pd.Series(dtype=float)).notna()].iterrows():
            rows.append({**{c: r.get(c) for c in cols}, "baseline": other})
    return pd.DataFrame(rows, columns=cols)


def _pct(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"


def summary_markdown(results: pd.DataFrame, gains: pd.DataFrame, extras: list[str],
                     duels: pd.DataFrame | None = None) -> str:
    lines = ["# Results", ""]
    for eval_set in gains["eval_set"].unique():
        part = gains[gains["eval_set"] == eval_set]
        seeds = int(part["seeds"].max())
        lines += [f"## {eval_set} (percent; mean ± std over seeds; gain = variant − (a) per seed, mean "
                  f"[95 % paired-t interval])", "",
                  "| variant | seeds | OA | mIoU | mAcc | gain OA | gain mIoU | gain mAcc |", "|---|---|---|---|---|---|---|---|"]
        for variant in [v for v in VARIANTS if v in set(part["variant"])]:
            rows = part[part["variant"] == variant].set_index("metric")
            cells = [f"{_pct(rows.loc[m, 'mean'])} ± {_pct(rows.loc[m, 'std'])}" for m in MAIN_METRICS]
            gains_cells = []
            for m in MAIN_METRICS:
                r = rows.loc[m]
                if variant == "real" or "gain" not in r or not np.isfinite(r.get("gain", np.nan)):
                    gains_cells.append("")
                else:
                    gains_cells.append(f"{100 * r['gain']:+.2f} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]")
            lines.append(f"| {VARIANTS[variant]} | {int(rows['seeds'].max())} | " + " | ".join(cells + gains_cells) + " |")
        lines += ["", f"Per-seed mIoU gain over (a) (seeds {seeds} at most):", ""]
        for variant in [v for v in VARIANTS if v != "real" and v in set(part["variant"])]:
            r = part[(part["variant"] == variant) & (part["metric"] == "mIoU")].iloc[0]
            if isinstance(r.get("per_seed"), str):
                excl = "excludes 0" if r["ci_low"] > 0 or r["ci_high"] < 0 else "includes 0"
                lines.append(f"- {VARIANTS[variant]}: {r['per_seed']} (interval {excl})")
        per_class = results[(results["eval_set"] == eval_set) & (results["metric"] == "IoU")]
        if len(per_class):
            pc = per_class.groupby(["class", "variant"])["value"].mean().unstack("variant") * 100
            pc = pc[[v for v in VARIANTS if v in pc.columns]]
            lines += ["", "Per-class IoU (mean over seeds):", "", "| class | " + " | ".join(pc.columns) + " |",
                      "|---" * (len(pc.columns) + 1) + "|"]
            lines += [f"| {cls} | " + " | ".join(f"{v:.2f}" for v in r.values) + " |" for cls, r in pc.iterrows()]
        duel = duels[(duels["eval_set"] == eval_set) & (duels["metric"] == "mIoU")] if duels is not None and len(duels) else None
        if duel is not None and len(duel):
            lines += ["", "(b) against the others, mIoU (per seed, paired):", "",
                      "| comparison | seeds | difference [95 % paired interval] | per seed |", "|---|---|---|---|"]
            for _, r in duel.iterrows():
                lines.append(f"| (b) − {VARIANTS[r['baseline']].split(' ', 1)[0]} {r['baseline']} | {int(r['paired_seeds'])} | "
                             f"{100 * r['gain']:+.2f} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] | {r['per_seed']} |")
        lines.append("")
    return "\n".join(lines + extras)


def plot_gains(gains: pd.DataFrame, path: Path) -> None:
    """Per-seed-paired mIoU gain over (a) with its 95 % interval, one panel per eval set."""
    from tisynth.plots import plt

    g = gains[(gains["metric"] == "mIoU") & gains["gain"].notna()] if "gain" in gains else gains.iloc[:0]
    if g.empty:
        return
    sets = list(g["eval_set"].unique())
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 2.8), squeeze=False, layout="constrained")
    for ax, eval_set in zip(axes[0], sets):
        part = g[g["eval_set"] == eval_set]
        y = np.arange(len(part))
        ax.errorbar(100 * part["gain"], y, xerr=[100 * (part["gain"] - part["ci_low"]), 100 * (part["ci_high"] - part["gain"])],
                    fmt="o", capsize=4)
        for yy, seeds in zip(y, part["per_seed"]):
            ax.scatter([float(s) for s in seeds.split()], [yy] * len(seeds.split()), s=10, alpha=0.5, color="grey")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [VARIANTS[v].split(" ", 1)[0] for v in part["variant"]])
        ax.set_xlabel("mIoU gain over (a), points")
        ax.set_title(eval_set)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder (images/, masks/, classes.csv, split.csv)")
    p.add_argument("--workspace", required=True, help="folder for this experiment's data, models and results")
    p.add_argument("--taef2", help="folder with the TAEF2 weights (latent diffusion in its 32x28x28 space)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=YAML value (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES,
                   help="synthesize: the Kedro pipeline (resumes); maskonly: sample + filter (c); restyle: the "
                        "restyled tiles of (e) / (f) (resumes); segment: train the missing segmenters; report: "
                        "gather every finished one")
    p.add_argument("--fda-beta", type=float, default=0.01, help="FDA's low band for (e) (default: the paper's 0.01)")
    p.add_argument("--restyle-pairs", choices=RESTYLE_PAIRS, default="kept",
                   help="plan rows of (e) / (f): kept, those whose TISynth image the filter kept (as (b); needs "
                        "the synthesize phase's filter); all, every plan row (as (d)) (default %(default)s)")
    p.add_argument("--reading-items", type=int, default=48, help="synthetic images per set read by the real-only segmenter")
    p.add_argument("--segmenter-set", dest="segmenter_overrides", action="append", default=[],
                   help="dotted.key=YAML below `segmenter`, for the compared segmenters only (a segmenter protocol, "
                        "e.g. data.style_augment=0.5); the pipeline's own (the filter's) segmenter keeps the run's "
                        "settings, so the synthetic sets stay the same (repeatable)")
    p.add_argument("--results", default="results",
                   help="folder of the workspace for this report (default %(default)s); give each segmenter "
                        "protocol its own")
    return p


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    VARIANTS.update(restyled_labels(args.restyle_pairs))
    workspace = Path(args.workspace).resolve()
    out = workspace / args.results
    params = base_params(args.data, args.taef2, args.overrides)
    segmenter_overrides = segmenter_protocol(args.segmenter_overrides)
    # the workspace's settings live in results/params.json whatever --results says; each report
    # folder also records its segmenter protocol, so two protocols never share one report
    settings_file, report_file = workspace / "results" / "params.json", out / "params.json"
    for file in dict.fromkeys([settings_file, report_file]):
        if file.is_file():
            before = json.loads(file.read_text()).get("kedro_params")
            if before is not None and before != params:
                raise SystemExit(f"{workspace}: made with other settings ({file}); use a new workspace, "
                                 "or the same --data/--taef2/--set as before")
    if report_file.is_file():
        record = json.loads(report_file.read_text())
        before = record.get("segmenter_protocol")
        if before is None:  # records written before the key existed
            before = segmenter_protocol(record.get("args", {}).get("segmenter_overrides") or [])
        if before != segmenter_overrides:
            what = json.dumps(before) if before else "the run's own segmenter"
            raise SystemExit(f"{out}: the report of another segmenter protocol ({what}); "
                             "give this one its own --results folder")
    prepare_workspace(workspace)
    if segmenter_overrides:
        check_protocol(workspace, params, segmenter_overrides)
    out.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "kedro_params": params, "segmenter_protocol": segmenter_overrides}
    report_file.write_text(json.dumps(record, indent=2, default=str))
    if not settings_file.is_file():
        settings_file.parent.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(json.dumps({"args": vars(args), "kedro_params": params}, indent=2, default=str))
    timings_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}

    needed = needed_variants(args.variants)
    generative = [v for v in needed if v not in ("real", *RESTYLED, *COMBINED)]
    restyled = set(needed) & set(RESTYLED)
    # real needs the tiles only, restyling every plan row the plan, restyling the kept rows the filter
    if "synthesize" in args.phases:
        if generative or (restyled and args.restyle_pairs == "kept"):
            pipelines = ["synthesize"]
        else:
            pipelines = ["ingest", "references"] if restyled else ["ingest"]
        key = "+".join(pipelines)
        timings[key] = timings.get(key, 0.0) + run_pipelines(workspace, params, pipelines)

    from tisynth.io import TileSet
    from tisynth.params import deep_merge
    from tisynth.segmentation.experiment import AUGMENTED, BASELINE, run_comparison
    from tisynth.segmentation.pairs import Pair, pairs_from_manifest, synthetic_pairs_from_manifest

    with session(workspace, params) as s:
        ctx = s.load_context()
        catalog, ctx_params = ctx.catalog, ctx.params
        registry = catalog.load("class_registry")
        tiles, manifest = catalog.load("tiles"), catalog.load("tile_manifest")
        target_tiles, target_manifest = catalog.load("target_tiles"), catalog.load("target_manifest")
        synthetic_sets: dict[str, list[Pair]] = {}
        generators: dict[str, tuple[TileSet, pd.DataFrame]] = {}
        if set(generative) & {"tisynth", "tisynth_unfiltered"}:
            syn_images, syn_manifest = catalog.load("synthetic_images"), catalog.load("synthetic_manifest")
            filtered, filtered_manifest = catalog.load("filtered_synthetic"), catalog.load("filtered_manifest")
            synthetic_sets["tisynth"] = synthetic_pairs_from_manifest(filtered_manifest, syn_images, filtered)
            synthetic_sets["tisynth_unfiltered"] = [Pair(str(syn_images.path(i)), str(tiles.path(m)))
                                                    for i, m in zip(syn_manifest["image"], syn_manifest["mask"])]
            generators["tisynth"] = (syn_images, syn_manifest)
        mask_only_folder = workspace / "data" / "07_model_output" / "ablation_mask_only"
        if "maskonly" in args.variants and ("maskonly" in args.phases or (mask_only_folder / "filtered").is_dir()):
            t0 = time.time()
            kept = mask_only_set(catalog, ctx_params, mask_only_folder)
            if "maskonly" in args.phases:
                timings["maskonly"] = timings.get("maskonly", 0.0) + time.time() - t0
            synthetic_sets["maskonly"] = synthetic_pairs_from_manifest(
                kept, TileSet(mask_only_folder / "synthetic"), TileSet(mask_only_folder / "filtered"))
            generators["maskonly"] = (TileSet(mask_only_folder / "synthetic"), kept)
        for method in [v for v in needed if v in RESTYLED]:
            folder = restyled_folder(workspace, method, args.fda_beta)
            if "restyle" in args.phases or folder.is_dir():
                t0 = time.time()
                synthetic_sets[method], made = restyled_set(catalog, method, folder, args.fda_beta,
                                                            args.restyle_pairs)
                generators[method] = (TileSet(folder), made)
                if "restyle" in args.phases:
                    timings[f"restyle {method}"] = timings.get(f"restyle {method}", 0.0) + time.time() - t0
        add_combined(synthetic_sets, args.variants)
        k = registry.num_classes
        train = pairs_from_manifest(manifest, tiles, "train")
        val = pairs_from_manifest(manifest, tiles, "val")
        eval_sets = {"test": pairs_from_manifest(manifest, tiles, "test")}
        if len(target_manifest) and target_manifest["mask"].notna().any():
            eval_sets["target test"] = pairs_from_manifest(target_manifest, target_tiles, "test")
        seg_params = deep_merge(ctx_params["segmenter"], segmenter_overrides)
        if args.segmenter_overrides:
            log.info("compared segmenters: %s", ", ".join(args.segmenter_overrides))
        work_root = workspace / ctx_params["segmenter_work_root"]
        mix = ctx_params["segment"]["mix"]
        rows = []
        first_real = None
        t0 = time.time()
        todo = [v for v in args.variants if v in synthetic_sets or v == "real"]
        if "segment" not in args.phases and "report" not in args.phases:
            todo = []
        for name in todo:
            synthetic = synthetic_sets.get(name, [])
            res = run_comparison(seg_params, registry, train, val, synthetic, eval_sets, work_root,
                                 mix if name != "real" else None, args.seeds,
                                 variants=(BASELINE,) if name == "real" else (AUGMENTED,), track=False,
                                 train_missing="segment" in args.phases)
            if res.results.empty:
                continue
            rows.append(res.results.assign(variant=name))
            if name == "real" and res.segmenters:
                first_real = res.segmenters[BASELINE]
        if "segment" in args.phases:
            timings["segment"] = timings.get("segment", 0.0) + time.time() - t0
        timings_file.write_text(json.dumps(timings, indent=2))
        if "report" not in args.phases or not rows:
            return 0

        # what the synthetic sets are: the real-only segmenter's reading of them, and their size
        # the reading uses the first seed's real-only segmenter (the filter's own when that seed is 0)
        # (with --segmenter-set, the filter's own, so that every protocol's report reads the sets alike)
        real_segmenter = (first_real if first_real is not None and not args.segmenter_overrides
                          else catalog.load("real_segmenter"))
        extras = ["## The synthetic sets", "",
                  f"Real training tiles with masks: {len(train)}; val {len(val)}; "
                  + ", ".join(f"{n} {len(v)}" for n, v in eval_sets.items()), "",
                  "| set | pairs used | read by the real-only segmenter: mIoU | OA | main class |", "|---|---|---|---|---|"]
        val_rows = manifest[(manifest["split"] == "val") & manifest["mask"].notna()].head(args.reading_items)
        r = reading(real_segmenter, [tiles.read_image(i) for i in val_rows["image"]],
                    [tiles.read_mask(m) for m in val_rows["mask"]], k)
        extras.append(f"| real val tiles ({len(val_rows)}) | – | {_pct(r['mIoU'])} | {_pct(r['OA'])} | {_pct(r['dominant_acc'])} |")
        for name, (images_set, made) in generators.items():
            sub = made.head(args.reading_items)  # every image made, before filtering, against its own mask
            r = reading(real_segmenter, [images_set.read_image(i) for i in sub["image"]],
                        [tiles.read_mask(m) for m in sub["mask"]], k)
            extras.append(f"| images of {name} ({len(sub)} of {len(made)}) | {len(synthetic_sets[name])} kept | "
                          f"{_pct(r['mIoU'])} | {_pct(r['OA'])} | {_pct(r['dominant_acc'])} |")
        if set(generators) & set(RESTYLED):
            extras += ["", f"Restyled sets ({', '.join(v for v in RESTYLED if v in generators)}): "
                       + ("the plan rows whose TISynth image the filter kept (--restyle-pairs kept)"
                          if args.restyle_pairs == "kept" else "every plan row (--restyle-pairs all)")
                       + ", masks unchanged."]
        extras += ["", "Timings (min): " + ", ".join(f"{n} {v / 60:.1f}" for n, v in timings.items()), ""]

    results = pd.concat(rows, ignore_index=True)
    results.to_csv(out / "results_long.csv", index=False)
    gains = gains_table(results)
    gains.to_csv(out / "gains.csv", index=False)
    duels = head_to_head(results)
    duels.to_csv(out / "head_to_head.csv", index=False)
    text = summary_markdown(results, gains, extras, duels)
    (out / "summary.md").write_text(text)
    plot_gains(gains, out / "gains_miou.png")
    print(text)
    log.info("results in %s", out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
