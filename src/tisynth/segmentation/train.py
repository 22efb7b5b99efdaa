"""Training segmenters with mmengine's runner, resumably, with model selection on val.

:func:`train_segmenter` is the one entry point: it writes the pair lists and the generated
config into a work folder, runs (or resumes) ``mmengine.Runner``, and returns a
:class:`~tisynth.segmentation.segmenter.Segmenter` holding the checkpoint with the best **val**
mIoU (the last one when no val pairs are given). The test split never enters training.

Work folders are resumable and safe to re-run:

* ``run.json`` fingerprints the job (settings, classes, pair lists, mixing; :mod:`tisynth.runs`);
  a folder holding a different job is refused rather than silently resumed;
* an interrupted job resumes from its latest checkpoint (iteration, optimiser, scheduler,
  message hub and best score included) instead of restarting;
* ``done.json`` marks a finished job; running it again loads the selected checkpoint without
  training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from tisynth.classes import ClassRegistry
from tisynth.io import DataError, write_json_atomic, write_text_atomic
from tisynth.runs import MANIFEST, RunFolder, RunFolderError, done_file, file_digest
from tisynth.segmentation.config import (
    ConfigError,
    MixConfig,
    SegmenterConfig,
    build_model_config,
    build_runner_config,
    fingerprint,
)
from tisynth.segmentation.checkpoint import local_checkpoint
from tisynth.segmentation.pairs import Pair, check_pairs, write_pairs
from tisynth.segmentation.segmenter import Segmenter, build_model, quiet_warnings, resolve_device, torch_threads

log = logging.getLogger("tisynth.segmentation")

LEGACY_JOB_FILE = "job.json"  # the manifest name before run.json


def job_spec(
    config: SegmenterConfig,
    registry: ClassRegistry,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair] | None,
    synthetic_pairs: Sequence[Pair] | None,
    mix: MixConfig | None,
) -> dict[str, Any]:
    """Everything that determines a training job (its fingerprint names the work folder)."""
    return {
        "segmenter": config.to_dict(),
        "classes": registry.to_dict()["classes"],
        "train_pairs": [list(p) for p in train_pairs],
        "val_pairs": [list(p) for p in val_pairs] if val_pairs else None,
        "synthetic_pairs": [list(p) for p in synthetic_pairs] if synthetic_pairs else None,
        "mix": None if not synthetic_pairs else vars(mix or MixConfig()),
    }


def content_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with every pair's paths replaced by the digests of the two files' bytes.

    The job is what the files hold, not where they are: a moved or copied project finds its
    finished segmenters, and a tile rewritten in place is a new job.
    """
    out = dict(spec)
    for key in ("train_pairs", "val_pairs", "synthetic_pairs"):
        if out.get(key):
            out[key] = [[file_digest(image), file_digest(mask)] for image, mask in out[key]]
    return out


def job_fingerprint(*args: Any, **kwargs: Any) -> str:
    """Fingerprint of :func:`job_spec` (same arguments), with the pairs identified by content."""
    return fingerprint(content_spec(job_spec(*args, **kwargs)))


def _relocate_last_checkpoint(work_dir: Path) -> None:
    """Point mmengine's ``last_checkpoint`` at this folder's copy of the file it names."""
    marker = work_dir / "last_checkpoint"
    if marker.is_file():
        recorded = marker.read_text(encoding="utf-8").strip()
        local = local_checkpoint(work_dir, recorded) if recorded else recorded
        if local != recorded:
            write_text_atomic(marker, local)


@contextlib.contextmanager
def _device_scope(device: torch.device) -> Iterator[None]:
    """Keep mmengine on ``device`` (mmengine itself always picks CUDA when it exists)."""
    if device.type == "cpu" and torch.cuda.is_available():
        with mock.patch("mmengine.runner.runner.get_device", return_value="cpu"):
            yield
    else:
        yield


# mmengine / mmseg messages that say nothing about this job
_NOISE = (
    "The prefix is not set in metric class",
    '"FileClient" will be deprecated',
    '"HardDiskBackend" is the alias',
)


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in _NOISE)


def _quiet(logger: logging.Logger) -> None:
    """Drop known harmless mmengine warnings from a runner's logger."""
    if not any(isinstance(f, _NoiseFilter) for f in logger.filters):
        logger.addFilter(_NoiseFilter())


def _load_selected(work_dir: Path, checkpoint: str, model_config: dict[str, Any]) -> torch.nn.Module:
    from tisynth.segmentation.checkpoint import load_checkpoint_file

    model = build_model(model_config)
    ckpt = load_checkpoint_file(checkpoint, map_location="cpu")
    state = ckpt.get("state_dict", ckpt)
    model.load_state_dict(state, strict=True)
    return model


def _read_history(work_dir: Path) -> list[dict[str, float]]:
    path = work_dir / "val_history.jsonl"
    if not path.is_file():
        return []
    by_iter: dict[int, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            by_iter[int(rec["iter"])] = rec  # a repeated validation after a resume replaces the old one
    return [by_iter[k] for k in sorted(by_iter)]


def train_segmenter(
    config: SegmenterConfig | dict[str, Any],
    registry: ClassRegistry,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair] | None,
    work_dir: str | Path,
    synthetic_pairs: Sequence[Pair] | None = None,
    mix: MixConfig | dict[str, Any] | None = None,
    label: str = "segmenter",
    hooks: Sequence[Any] = (),
) -> Segmenter:
    """Train (or resume, or reload) a segmenter and return the val-selected model.

    Args:
        config: segmenter settings (a :class:`SegmenterConfig` or its parameters block).
        registry: classes (K, names, palette; masks are index space).
        train_pairs: real training pairs.
        val_pairs: validation pairs for model selection (best mIoU), or None / empty to keep
            the last checkpoint.
        work_dir: the job's folder (checkpoints, logs, generated config).
        synthetic_pairs: synthetic (filtered) pairs mixed into training per ``mix``, or None.
        mix: how real and synthetic pairs are mixed (see :class:`MixConfig`).
        label: name used in progress lines.
        hooks: extra mmengine hook objects (e.g. for monitoring).

    Raises:
        ConfigError: ``work_dir`` holds a different job.
        DataError: missing files, empty training set.
    """
    import tisynth.segmentation.mm  # noqa: F401  (registrations)
    from mmengine.config import Config
    from mmengine.runner import Runner

    config = SegmenterConfig.from_params(config)
    synthetic_requested = synthetic_pairs is not None
    mix_cfg = MixConfig.from_params(mix) if synthetic_pairs else None
    if not train_pairs:
        raise DataError(f"{label}: no training pairs")
    synthetic_pairs = list(synthetic_pairs or [])
    val_pairs = list(val_pairs or [])
    check_pairs(train_pairs, f"{label}: training pairs")
    check_pairs(val_pairs, f"{label}: validation pairs")
    check_pairs(synthetic_pairs, f"{label}: synthetic pairs")

    work_dir = Path(work_dir).resolve()
    spec = job_spec(config, registry, train_pairs, val_pairs, synthetic_pairs or None, mix_cfg)
    fp = fingerprint(content_spec(spec))
    try:
        run = RunFolder.open(work_dir, fp, policy="refuse", legacy_manifest=LEGACY_JOB_FILE, description=spec)
    except RunFolderError as err:
        raise ConfigError(f"{err} (another training job, this one has fingerprint {fp})") from None

    iterations = mix_cfg.iterations(config.train.iterations) if mix_cfg else config.train.iterations
    model_config = build_model_config(config, registry)
    device = resolve_device(config.train.device)
    done = run.done()
    if done is not None:
        log.info("[%s] already trained in %s; loading %s", label, work_dir, Path(done["checkpoint"]).name)
        checkpoint = local_checkpoint(work_dir, done["checkpoint"])
        model = _load_selected(work_dir, checkpoint, model_config)
        info = {**done, "work_dir": str(work_dir), "checkpoint": checkpoint, "reloaded": True}
        return Segmenter(model, model_config, registry, config, info, device)

    files = {
        "real": str(write_pairs(work_dir / "pairs_train_real.json", train_pairs)),
        "val": str(write_pairs(work_dir / "pairs_val.json", val_pairs)) if val_pairs else None,
        "synthetic": str(write_pairs(work_dir / "pairs_train_synthetic.json", synthetic_pairs))
        if synthetic_pairs else None,
    }
    if synthetic_requested and not synthetic_pairs:
        log.warning("[%s] no synthetic pairs: training on real pairs only", label)
    cfg = build_runner_config(config, registry, str(work_dir), files["real"], files["val"], files["synthetic"],
                              mix_cfg, iterations, label)
    # resume only when there is something to resume (mmengine prints a notice otherwise)
    _relocate_last_checkpoint(work_dir)
    cfg["resume"] = (work_dir / "last_checkpoint").is_file()
    # a unique name: mmengine keys its logger and visualizer instances by it
    cfg["experiment_name"] = f"{label}-{uuid.uuid4().hex[:8]}"
    Config(cfg).dump(str(work_dir / "mmseg_config.py"))

    t0 = time.time()
    with _device_scope(device), torch_threads(config.train.num_threads), quiet_warnings():
        runner = Runner.from_cfg(Config(cfg))
        _quiet(runner.logger)
        for hook in hooks:
            runner.register_hook(hook, priority="LOWEST")
        resumed_from = 0
        runner.train()
        progress = [h for h in runner.hooks if type(h).__name__ == "TisynthProgressHook"]
        if progress:
            resumed_from = progress[0].start_iter
        best = runner.message_hub.get_info("best_ckpt") if val_pairs else None
        last = (work_dir / "last_checkpoint").read_text(encoding="utf-8").strip()
    checkpoint = local_checkpoint(work_dir, str(best or last))
    history = _read_history(work_dir)
    best_rec = max(history, key=lambda r: r.get("mIoU", float("-inf"))) if history else None
    info = {
        "label": label,
        "work_dir": str(work_dir),
        "fingerprint": fp,
        "checkpoint": checkpoint,
        "selection": "best val mIoU" if best else "last iteration",
        "iterations": iterations,
        "best_iter": int(best_rec["iter"]) if (best and best_rec) else iterations,
        "best_val_mIoU": float(best_rec["mIoU"]) if best_rec else None,
        "val_history": history,
        "resumed_from": resumed_from,
        "seconds_last_session": round(time.time() - t0, 1),
        "n_train_real": len(train_pairs),
        "n_train_synthetic": len(synthetic_pairs),
        "n_val": len(val_pairs),
        "mix": vars(mix_cfg) if mix_cfg else None,
        "device": str(device),
        "reloaded": False,
    }
    run.mark_done(info)
    model = _load_selected(work_dir, checkpoint, model_config)
    log.info("[%s] done: %s (iter %s, val mIoU %s)", label, info["selection"], info["best_iter"],
             None if info["best_val_mIoU"] is None else f"{info['best_val_mIoU']:.4f}")
    return Segmenter(model, model_config, registry, config, info, device)


def load_segmenter_checkpoint(checkpoint: str | Path, config: SegmenterConfig | dict[str, Any],
                              registry: ClassRegistry) -> Segmenter:
    """A :class:`Segmenter` from one checkpoint file of a training job (e.g. not the selected one)."""
    config = SegmenterConfig.from_params(config)
    model_config = build_model_config(config, registry)
    model = _load_selected(Path(checkpoint).parent, str(checkpoint), model_config)
    return Segmenter(model, model_config, registry, config, {"checkpoint": str(checkpoint)},
                     resolve_device(config.train.device))


def segmenter_finished(work_dir: str | Path) -> bool:
    """Whether the training job of ``work_dir`` (a :func:`work_dir_for` folder) has finished."""
    return done_file(work_dir).is_file()


def work_dir_for(root: str | Path, name: str, config: SegmenterConfig, registry: ClassRegistry,
                 train_pairs: Sequence[Pair], val_pairs: Sequence[Pair] | None,
                 synthetic_pairs: Sequence[Pair] | None = None, mix: MixConfig | None = None) -> Path:
    """``root/<name>-<fingerprint>``: one folder per distinct job, so changed settings never resume old work.

    A folder of the same job named by the path-based fingerprint of earlier versions is renamed
    to this name first (:func:`_adopt_path_named`), so its finished or begun training is kept.
    """
    spec = job_spec(config, registry, train_pairs, list(val_pairs or []), synthetic_pairs or None,
                    MixConfig.from_params(mix) if synthetic_pairs else None)
    work_dir = Path(root) / f"{name}-{fingerprint(content_spec(spec))}"
    _adopt_path_named(work_dir, fingerprint(spec))
    return work_dir


def _adopt_path_named(work_dir: Path, path_fingerprint: str) -> None:
    """Rename ``<name>-<path_fingerprint>`` to ``work_dir`` when it holds this very job.

    Earlier versions named a job by the paths of its tiles. Such a folder is this job when its
    manifest holds that path fingerprint; its manifest and completion marker are given the new
    fingerprint before the folder is renamed, so an interruption in between leaves a folder that
    the next call still recognises.
    """
    if work_dir.exists():
        return
    stem, sep, _ = work_dir.name.rpartition("-")
    old = work_dir.with_name(f"{stem}-{path_fingerprint}")
    if not sep or old == work_dir or not old.is_dir():
        return
    new_fp = work_dir.name.rpartition("-")[2]
    try:
        manifest = json.loads((old / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(manifest, dict) or manifest.get("fingerprint") not in (path_fingerprint, new_fp):
        return
    write_json_atomic(old / MANIFEST, {**manifest, "fingerprint": new_fp})
    done = done_file(old)
    if done.is_file():
        try:
            record = json.loads(done.read_text(encoding="utf-8"))
        except ValueError as err:
            raise DataError(f"{done}: not a completion record ({err})") from None
        if record.get("fingerprint") == path_fingerprint:
            write_json_atomic(done, {**record, "fingerprint": new_fp})
    try:
        old.rename(work_dir)
    except OSError:
        if not work_dir.is_dir():  # another process of the same experiment renamed it first
            raise
    log.info("%s: the job's folder of an earlier version (named by tile paths) renamed to %s", old.name, work_dir.name)
