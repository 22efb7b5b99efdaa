"""The :class:`Segmenter`: a trained mmseg model behind tisynth's conventions.

Inputs are RGB uint8 tiles (arrays ``B×H×W×3`` or image paths of any format
:func:`tisynth.io.read_image` reads); outputs are logits ``B×K×H×W`` or index-space label maps.
A segmenter saves itself as a folder (``segmenter.json`` + ``model.safetensors``) and loads
from it without pickle.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tisynth.classes import ClassRegistry
from tisynth.io import DataError, read_image, write_json_atomic
from tisynth.segmentation.config import SIZE_DIVISOR, SegmenterConfig
from tisynth.segmentation.metrics import ConfusionAccumulator, SegmentationMetrics
from tisynth.segmentation.pairs import Pair, read_index_mask

log = logging.getLogger("tisynth.segmentation")

FORMAT_VERSION = 1
CONFIG_FILE = "segmenter.json"
WEIGHTS_FILE = "model.safetensors"

ImagesLike = np.ndarray | Sequence[np.ndarray] | Sequence[str | os.PathLike[str]] | str | os.PathLike[str]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(str(device))


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence deprecation chatter of mmseg's builders (not our users' concern)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*build_loss.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*avg_non_ignore.*", category=UserWarning)
        yield


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads (None: leave the setting alone)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build_model(model_config: dict[str, Any]) -> torch.nn.Module:
    """Build an mmseg model from its config dict (registers tisynth's components first)."""
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    import tisynth.segmentation.mm  # noqa: F401  (registrations)

    scope = DefaultScope.get_current_instance()
    if scope is None or scope.scope_name != "mmseg":
        DefaultScope.get_instance(f"tisynth-mmseg-{os.getpid()}", scope_name="mmseg")
    with quiet_warnings():
        return MODELS.build(ConfigDict(copy.deepcopy(model_config)))


class Segmenter:
    """A segmentation network with its classes, settings and training record.

    Args:
        model: an mmseg ``EncoderDecoder`` (weights loaded).
        model_config: the mmseg dict it was built from (saved with it).
        registry: the class registry (names, colours, K).
        config: the tisynth settings it was trained with.
        training_info: what training recorded (iterations, best val mIoU, ...).
        device: ``auto``, ``cpu``, ``cuda`` or a torch device.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        model_config: dict[str, Any],
        registry: ClassRegistry,
        config: SegmenterConfig,
        training_info: dict[str, Any] | None = None,
        device: str | torch.device | None = "auto",
    ):
        self.model = model
        self.model_config = model_config
        self.registry = registry
        self.config = config
        self.training_info = dict(training_info or {})
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self._mean = torch.tensor(config.data.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(config.data.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return (f"Segmenter({self.config.model.type}, classes={self.registry.names}, device={self.device}, "
                f"best_val_mIoU={self.training_info.get('best_val_mIoU')})")

    @property
    def num_classes(self) -> int:
        return self.registry.num_classes

    def to(self, device: str | torch.device) -> Segmenter:
        self.device = resolve_device(device)
        self.model.to(self.device)
        return self

    # ------------------------------------------------------------------ inference
    @staticmethod
    def _as_arrays(images: ImagesLike) -> list[np.ndarray]:
        if isinstance(images, (str, os.PathLike)):
            return [read_image(images)]
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise DataError(f"Segmenter: expected images B×H×W×3 (or H×W×3), got shape {images.shape}")
            arrays = list(images)
        else:
            arrays = [read_image(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x) for x in images]
        for i, a in enumerate(arrays):
            if a.ndim != 3 or a.shape[2] != 3:
                raise DataError(f"Segmenter: image {i} has shape {a.shape}; need H×W×3 RGB")
            if a.dtype != np.uint8:
                raise DataError(f"Segmenter: image {i} has dtype {a.dtype}; need uint8 RGB")
        return arrays

    @torch.no_grad()
    def _logits_batch(self, batch: np.ndarray) -> torch.Tensor:
        """Logits (b, K, H, W) of an uint8 batch (b, H, W, 3), on CPU."""
        b, h, w, _ = batch.shape
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
        x = ((x - self._mean) / self._std).to(self.device)
        ph = (-h) % SIZE_DIVISOR
        pw = (-w) % SIZE_DIVISOR
        if ph or pw:  # pad like the data preprocessor (0 in normalised space), crop after
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), value=0.0)
        hp, wp = h + ph, w + pw
        metas = [{"img_shape": (hp, wp), "ori_shape": (h, w), "pad_shape": (hp, wp),
                  "padding_size": [0, pw, 0, ph]} for _ in range(b)]
        logits = self.model.inference(x, metas)
        return logits[:, :, :h, :w].float().cpu()

    def predict_logits(self, images: ImagesLike, batch_size: int | None = None) -> np.ndarray:
        """Class logits ``float32 B×K×H×W`` for RGB uint8 tiles of one size (arrays or paths)."""
        arrays = self._as_arrays(images)
        if not arrays:
            return np.zeros((0, self.num_classes, 0, 0), dtype=np.float32)
        shape = arrays[0].shape
        if any(a.shape != shape for a in arrays):
            raise DataError(
                "Segmenter.predict_logits: images of different sizes "
                f"{sorted({a.shape for a in arrays})}; call it per size (or per image)"
            )
        bs = batch_size or self.config.inference.batch_size
        self.model.eval()
        out = np.empty((len(arrays), self.num_classes, shape[0], shape[1]), dtype=np.float32)
        with torch_threads(self.config.train.num_threads if self.device.type == "cpu" else None):
            for start in range(0, len(arrays), bs):
                chunk = np.stack(arrays[start:start + bs])
                out[start:start + len(chunk)] = self._logits_batch(chunk).numpy()
        return out

    def predict(self, images: ImagesLike, batch_size: int | None = None) -> np.ndarray:
        """Index-space label maps ``uint8 B×H×W`` (argmax of the logits)."""
        return self.predict_logits(images, batch_size).argmax(axis=1).astype(np.uint8)

    def iter_pairs(
        self, pairs: Sequence[Pair], batch_size: int | None = None
    ) -> Iterator[tuple[Pair, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(pair, image, mask, logits)`` for labelled pairs (images batched by size)."""
        bs = batch_size or self.config.inference.batch_size
        pending: list[tuple[Pair, np.ndarray, np.ndarray]] = []

        def flush() -> Iterator[tuple[Pair, np.ndarray, np.ndarray, np.ndarray]]:
            logits = self.predict_logits(np.stack([p[1] for p in pending]), bs)
            for (pair, img, mask), lg in zip(pending, logits):
                yield pair, img, mask, lg
            pending.clear()

        for pair in pairs:
            pair = Pair(*pair)  # plain (image, mask) tuples are fine too
            img = read_image(pair.image)
            mask = read_index_mask(pair.mask, self.num_classes)
            if mask.shape != img.shape[:2]:
                raise DataError(f"{pair.mask}: mask size {mask.shape} differs from image {pair.image} {img.shape[:2]}")
            if pending and (img.shape != pending[0][1].shape or len(pending) >= bs):
                yield from flush()
            pending.append((pair, img, mask))
        if pending:
            yield from flush()

    def evaluate(self, pairs: Sequence[Pair], batch_size: int | None = None) -> SegmentationMetrics:
        """OA, mIoU, mAcc, per-class IoU / accuracy and the confusion matrix over ``pairs``."""
        acc = ConfusionAccumulator(self.num_classes, self.registry.names)
        for _, _, mask, logits in self.iter_pairs(pairs, batch_size):
            acc.update(mask, logits.argmax(axis=0))
        return acc.result()

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``segmenter.json`` (configs, classes, training record) and ``model.safetensors``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tmp = folder / f".{WEIGHTS_FILE}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "tisynth_format_version": str(FORMAT_VERSION)})
        os.replace(tmp, folder / WEIGHTS_FILE)
        write_json_atomic(folder / CONFIG_FILE, {
            "format_version": FORMAT_VERSION,
            "segmenter_config": self.config.to_dict(),
            "model_config": self.model_config,
            "registry": self.registry.to_dict(),
            "training_info": _jsonable(self.training_info),
        })

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = "auto") -> Segmenter:
        """Load a folder written by :meth:`save_pretrained` (no pickle involved)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights.is_file():
            raise DataError(f"{folder}: not a saved Segmenter (need {CONFIG_FILE} and {WEIGHTS_FILE})")
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{cfg_path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
        model = build_model(meta["model_config"])
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise DataError(f"{weights}: weights do not fit the saved model config "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return cls(model, meta["model_config"], ClassRegistry.from_dict(meta["registry"]),
                   SegmenterConfig.from_params(meta["segmenter_config"]), meta.get("training_info"), device)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
