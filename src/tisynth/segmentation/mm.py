"""tisynth components registered in mmseg's registries.

Importing this module registers:

* ``TisynthPairDataset``: an mmseg dataset over a JSON list of (image, mask) pairs;
* ``LoadTisynthPair``: the loading transform (images through :func:`tisynth.io.read_image`,
  index-space masks checked against the class count);
* ``RandomRescale``: random rescaling relative to each tile's own size;
* ``MixedSourceSampler``: an infinite sampler over ``ConcatDataset([real, synthetic])`` whose
  every batch holds a fixed number of real and synthetic samples;
* ``TisynthIoUMetric``: validation metric computed with :mod:`tisynth.segmentation.metrics`;
* ``TisynthProgressHook``: short progress lines (python logging, a ``progress.log`` in the
  work folder and, when an MLflow run is active, MLflow metrics);
* ``EfficientNetLite`` (model registry): the ImageNet-pretrained encoder of
  :mod:`tisynth.segmentation.backbones`;

and replaces mmengine's local checkpoint loader by :func:`tisynth.segmentation.checkpoint.load_checkpoint_file`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.dataset import ConcatDataset
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATA_SAMPLERS, DATASETS, HOOKS, METRICS, TRANSFORMS
from torch.utils.data import Sampler

import tisynth.segmentation.backbones  # noqa: F401  (registers EfficientNetLite)
from tisynth.classes import IGNORE_INDEX
from tisynth.io import DataError, read_image
from tisynth.segmentation import tracking
from tisynth.segmentation.checkpoint import local_checkpoint, register_safe_checkpoint_loader
from tisynth.segmentation.metrics import confusion_matrix, metrics_from_confusion
from tisynth.segmentation.pairs import read_index_mask, read_pairs

log = logging.getLogger("tisynth.segmentation")

register_safe_checkpoint_loader()


@DATASETS.register_module(force=True)
class TisynthPairDataset(BaseSegDataset):
    """Segmentation dataset over a JSON file of ``[image, mask]`` absolute paths.

    Args:
        pairs_file: JSON written by :func:`tisynth.segmentation.pairs.write_pairs`.
        source: a tag packed into every sample's metainfo (``real`` or ``synthetic``).
        **kwargs: :class:`mmseg.datasets.BaseSegDataset` arguments (metainfo, pipeline, ...).
    """

    METAINFO: dict = {}

    def __init__(self, pairs_file: str, source: str = "real", **kwargs: Any):
        self.pairs_file = pairs_file
        self.source = source
        kwargs.setdefault("ignore_index", IGNORE_INDEX)
        kwargs.setdefault("reduce_zero_label", False)
        super().__init__(data_root="", img_suffix="", seg_map_suffix="", **kwargs)

    def load_data_list(self) -> list[dict]:
        pairs = read_pairs(self.pairs_file)
        if not pairs:
            raise DataError(f"{self.pairs_file}: no (image, mask) pairs; a {self.source} dataset cannot be empty")
        return [
            {
                "img_path": p.image,
                "seg_map_path": p.mask,
                "label_map": None,
                "reduce_zero_label": False,
                "seg_fields": [],
                "source": self.source,
            }
            for p in pairs
        ]


@TRANSFORMS.register_module(force=True)
class LoadTisynthPair(BaseTransform):
    """Load an RGB image (``tisynth.io.read_image``) and its index-space mask.

    Args:
        num_classes: K; mask values must be ``0..K-1`` or 255.
        cache: keep decoded arrays in memory (per process) for the next epochs.
    """

    def __init__(self, num_classes: int, cache: bool = False):
        self.num_classes = int(num_classes)
        self.cache = bool(cache)
        self._store: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def _read(self, img_path: str, mask_path: str) -> tuple[np.ndarray, np.ndarray]:
        key = (img_path, mask_path)
        if key in self._store:
            return self._store[key]
        img = read_image(img_path)
        mask = read_index_mask(mask_path, self.num_classes)
        if mask.shape != img.shape[:2]:
            raise DataError(f"{mask_path}: mask size {mask.shape} differs from image {img_path} size {img.shape[:2]}")
        if self.cache:
            self._store[key] = (img, mask)
        return img, mask

    def transform(self, results: dict) -> dict:
        img, mask = self._read(results["img_path"], results["seg_map_path"])
        results["img"] = img.copy()
        results["gt_seg_map"] = mask.copy()
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        results.setdefault("seg_fields", [])
        if "gt_seg_map" not in results["seg_fields"]:
            results["seg_fields"].append("gt_seg_map")
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, cache={self.cache})"


@TRANSFORMS.register_module(force=True)
class RandomSensorStyle(BaseTransform):
    """Render the image, with probability ``prob``, in a random sensor style (the mask is untouched).

    The style is drawn from :class:`tisynth.styles.StyleFamily` (``family``: its ranges, empty =
    the defaults) with a seed from numpy's global generator, which mmengine seeds per run and
    per data-loading worker, so a seeded training run sees the same styles again (an
    uninterrupted one: a resumed run restarts numpy's stream, as it does for the crops).

    Args:
        prob: probability of restyling a training crop.
        family: ranges of the style family (keys of ``StyleFamily``).
    """

    def __init__(self, prob: float = 0.5, family: dict | None = None):
        from tisynth.styles import StyleFamily

        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"RandomSensorStyle: prob {prob} must lie in [0, 1]")
        self.prob = float(prob)
        self.family = StyleFamily.from_dict(family or {}, "segmenter.data.style_family")

    def transform(self, results: dict) -> dict:
        from tisynth.styles import apply_style

        if self.prob <= 0 or np.random.rand() >= self.prob:
            return results
        style = self.family.draw(int(np.random.randint(0, 2**31 - 1)))
        results["img"] = apply_style(np.ascontiguousarray(results["img"]), style, str(results.get("img_path", "")))
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob}, family={self.family.to_dict()})"


@TRANSFORMS.register_module(force=True)
class RandomRescale(BaseTransform):
    """Rescale image and mask by a random factor of their *own* size (bilinear / nearest).

    Unlike mmcv's ``RandomResize`` (whose ratio multiplies a fixed target scale), the ratio here
    is relative to each tile, so tiles of any size keep their ground sampling distance on
    average and training sees the scale that inference sees.

    Args:
        ratio_range: ``(lo, hi)``; the factor is drawn uniformly from it.
    """

    def __init__(self, ratio_range: Sequence[float] = (0.5, 2.0)):
        lo, hi = (float(v) for v in ratio_range)
        if not 0 < lo <= hi:
            raise ValueError(f"RandomRescale: ratio_range {ratio_range} must satisfy 0 < lo <= hi")
        self.ratio_range = (lo, hi)

    def transform(self, results: dict) -> dict:
        import mmcv

        ratio = float(np.random.uniform(*self.ratio_range))
        h, w = results["img"].shape[:2]
        size = (max(1, int(round(w * ratio))), max(1, int(round(h * ratio))))  # (w, h) for mmcv
        if size != (w, h):
            results["img"] = mmcv.imresize(results["img"], size, interpolation="bilinear")
            for key in results.get("seg_fields", []):
                results[key] = mmcv.imresize(results[key], size, interpolation="nearest")
        results["img_shape"] = results["img"].shape[:2]
        results["scale_factor"] = (size[0] / w, size[1] / h)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio_range={self.ratio_range})"


@DATA_SAMPLERS.register_module(force=True)
class MixedSourceSampler(Sampler):
    """Infinite sampler over ``ConcatDataset([real, synthetic])`` with a fixed batch composition.

    Every consecutive run of ``batch_size`` indices holds exactly
    ``round(real_fraction * batch_size)`` real samples (at least 1 and at most
    ``batch_size - 1``) and synthetic samples for the rest, in shuffled order. Each source is
    traversed in reshuffled epochs of its own, so no sample repeats before its source is
    exhausted. Deterministic for a seed (resuming re-creates the same stream).
    """

    def __init__(self, dataset: ConcatDataset, batch_size: int, real_fraction: float, seed: int | None = None):
        if not isinstance(dataset, ConcatDataset) or len(dataset.datasets) != 2:
            raise ValueError("MixedSourceSampler needs ConcatDataset([real, synthetic])")
        self.n_real = len(dataset.datasets[0])
        self.n_synthetic = len(dataset.datasets[1])
        if self.n_real == 0 or self.n_synthetic == 0:
            raise ValueError(f"MixedSourceSampler: empty source (real {self.n_real}, synthetic {self.n_synthetic})")
        self.batch_size = int(batch_size)
        if self.batch_size < 2:
            raise ValueError("MixedSourceSampler: a real:synthetic ratio needs batch_size >= 2")
        self.real_per_batch = min(self.batch_size - 1, max(1, int(round(real_fraction * self.batch_size))))
        self.seed = 0 if seed is None else int(seed)

    @staticmethod
    def _stream(n: int, offset: int, gen: torch.Generator) -> Iterator[int]:
        while True:
            yield from (offset + int(i) for i in torch.randperm(n, generator=gen))

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        real = self._stream(self.n_real, 0, gen)
        synthetic = self._stream(self.n_synthetic, self.n_real, gen)
        while True:
            batch = [next(real) for _ in range(self.real_per_batch)]
            batch += [next(synthetic) for _ in range(self.batch_size - self.real_per_batch)]
            order = torch.randperm(self.batch_size, generator=gen).tolist()
            yield from (batch[i] for i in order)

    def __len__(self) -> int:
        return self.n_real + self.n_synthetic

    def set_epoch(self, epoch: int) -> None:  # infinite: nothing to do
        pass


@METRICS.register_module(force=True)
class TisynthIoUMetric(BaseMetric):
    """Validation metric: OA, mIoU, mAcc (fractions) from :mod:`tisynth.segmentation.metrics`."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 collect_device: str = "cpu", prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0).cpu().numpy()
            truth = sample["gt_sem_seg"]["data"].squeeze(0).cpu().numpy()
            self.results.append(confusion_matrix(truth, pred, self.num_classes))

    def compute_metrics(self, results: list) -> dict[str, float]:
        total = np.sum(results, axis=0) if results else np.zeros((self.num_classes,) * 2, dtype=np.int64)
        m = metrics_from_confusion(total, self.class_names)
        out = m.summary()
        out.update({f"IoU.{n}": float(v) for n, v in zip(m.class_names, m.iou)})
        if not math.isfinite(out["mIoU"]):
            out["mIoU"] = -1.0  # checkpoint selection compares with '>': an undefined score never wins
        return out


@HOOKS.register_module(force=True)
class TisynthLocalCheckpointHook(Hook):
    """Keep a resumed run's best checkpoint inside its own work folder.

    mmengine records the best checkpoint by its absolute path and, on finding a better one,
    deletes the file at that path. When a work folder was moved or copied, the path restored on
    resume names the old location; this hook points it at the same name in this folder before
    the checkpoint hook reads it (it runs first: priority ``LOW`` before ``VERY_LOW``).
    """

    priority = "LOW"

    def before_train(self, runner: Any) -> None:
        hub = runner.message_hub
        recorded = hub.get_info("best_ckpt")
        if not recorded:
            return
        here = local_checkpoint(runner.work_dir, recorded)
        if recorded != here:  # a path into the folder this one was copied from: never touched
            hub.update_info("best_ckpt", here)


@HOOKS.register_module(force=True)
class TisynthProgressHook(Hook):
    """Readable progress: loss / lr / speed every ``interval`` iterations and every validation.

    Lines go to the ``tisynth.segmentation`` logger and to ``<work_dir>/progress.log``;
    validation results are appended to ``<work_dir>/val_history.jsonl`` (kept across resumes).
    When an MLflow run is active, ``train.loss``, ``train.lr`` and ``val.*`` are logged to it.
    """

    priority = "LOW"

    def __init__(self, interval: int = 50, label: str = "segmenter"):
        self.interval = max(1, int(interval))
        self.label = label
        self.start_iter = 0
        self.iters_run = 0
        self._t0 = 0.0

    def _write(self, runner: Any, line: str) -> None:
        log.info(line)
        with open(Path(runner.work_dir) / "progress.log", "a", encoding="utf-8") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")

    def before_train(self, runner: Any) -> None:
        self.start_iter = runner.iter
        self.iters_run = 0
        self._t0 = time.time()
        total = runner.max_iters
        if self.start_iter > 0:
            self._write(runner, f"[{self.label}] resumed at iteration {self.start_iter}/{total}")
        else:
            self._write(runner, f"[{self.label}] training {total} iterations")

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self.iters_run += 1
        it = runner.iter + 1
        if it % self.interval and it != runner.max_iters:
            return
        value = outputs.get("loss") if outputs else None
        loss = float(value.detach()) if torch.is_tensor(value) else float("nan") if value is None else float(value)
        lrs = runner.optim_wrapper.get_lr()
        lr = float(next(iter(lrs.values()))[0]) if lrs else float("nan")
        elapsed = time.time() - self._t0
        rate = self.iters_run / elapsed if elapsed > 0 else float("nan")
        eta = (runner.max_iters - it) / rate if rate and rate > 0 else float("nan")
        self._write(runner, f"[{self.label}] iter {it}/{runner.max_iters} loss {loss:.4f} lr {lr:.2e} "
                            f"({rate:.2f} it/s, eta {eta / 60:.1f} min)")
        tracking.log_metrics({"train.loss": loss, "train.lr": lr}, step=it)

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        if not metrics:
            return
        it = runner.iter
        record = {"iter": it, **{k: float(v) for k, v in metrics.items()}}
        with open(Path(runner.work_dir) / "val_history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        summary = " ".join(f"{k} {metrics[k]:.4f}" for k in ("mIoU", "OA", "mAcc") if k in metrics)
        self._write(runner, f"[{self.label}] val @ iter {it}: {summary}")
        tracking.log_metrics({f"val.{k}": float(v) for k, v in metrics.items()}, step=it)
