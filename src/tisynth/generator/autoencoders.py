"""Image autoencoders that map images to the latent space the diffusion model works in.

All implementations share one small interface (:class:`LatentAutoencoder`):

* ``encode(images)``: images in ``[-1, 1]``, ``B×3×H×W`` -> latents ``B×C×H/f×W/f``, already
  scaled for diffusion (no further scaling factor to apply);
* ``decode(latents)``: the inverse, images in ``[-1, 1]``;
* ``latent_channels`` (C), ``downsample_factor`` (f);
* ``save_pretrained(folder)`` / :func:`load_autoencoder` ``(folder)``.

Implementations, chosen by the ``type`` key of an autoencoder config (see
:func:`build_autoencoder`):

* ``space_to_depth``: parameter-free and exactly invertible (PixelUnshuffle by ``factor``,
  optional fixed ``scale`` and ``shift``). What the tiny preset uses: a randomly initialised VAE
  cannot reconstruct anything, this can.
* ``kl``: diffusers ``AutoencoderKL`` from a config dict (random weights) or from a pretrained
  folder / hub id (subfolder ``vae``); scaling (and shift) factor from its config; posterior
  ``mode`` or ``sample``.
* ``taef2``: the tiny pretrained TAEF2 autoencoder (32 latent channels at 1/8), re-implemented
  here; its weights are read from files named in the config (``weights_dir`` or
  ``encoder_path`` + ``decoder_path``) with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from tisynth.errors import TisynthError
from tisynth.weights import read_safetensors

CONFIG_NAME = "autoencoder.json"


class AutoencoderError(TisynthError, ValueError):
    """An autoencoder config, weight file or input that cannot be used."""


class LatentAutoencoder(nn.Module, ABC):
    """Frozen image <-> latent codec used by the generator."""

    kind: ClassVar[str] = ""

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels of the latent."""

    @property
    @abstractmethod
    def downsample_factor(self) -> int:
        """Spatial factor between image and latent (image side / latent side)."""

    @abstractmethod
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] (B×3×H×W) -> scaled latents (B×C×H/f×W/f)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable config (with ``type``) that rebuilds this autoencoder's architecture."""

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the config (and weights, if any) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.get_config(), indent=2), encoding="utf-8")
        self._save_weights(folder)

    def _save_weights(self, folder: Path) -> None:  # noqa: B027 - optional hook
        """Write weights into ``folder`` (nothing for parameter-free codecs)."""

    def check_image_size(self, height: int, width: int) -> None:
        """Raise if an image of ``height × width`` cannot be encoded."""
        f = self.downsample_factor
        if height % f or width % f:
            raise AutoencoderError(
                f"image size {height}×{width} is not divisible by the autoencoder's downsampling factor {f} "
                f"({self.kind}); crop or resize tiles to a multiple of {f}"
            )

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise AutoencoderError(f"images must be B×3×H×W in [-1, 1], got shape {tuple(images.shape)}")
        self.check_image_size(images.shape[2], images.shape[3])

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise AutoencoderError(
                f"latents must be B×{self.latent_channels}×h×w for this {self.kind} autoencoder, "
                f"got shape {tuple(latents.shape)}"
            )


# ---------------------------------------------------------------------- space-to-depth
class SpaceToDepthAutoencoder(LatentAutoencoder):
    """Parameter-free, exactly invertible codec: ``latent = (pixel_unshuffle(x, f) - shift) * scale``.

    A 64×64 RGB image with ``factor=4`` becomes a 48×16×16 latent.
    """

    kind = "space_to_depth"

    def __init__(self, factor: int = 4, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise AutoencoderError(f"space_to_depth factor must be a positive integer, got {factor!r}")
        if scale == 0:
            raise AutoencoderError("space_to_depth scale must be non-zero")
        self.factor = int(factor)
        self.scale = float(scale)
        self.shift = float(shift)

    @property
    def latent_channels(self) -> int:
        return 3 * self.factor * self.factor

    @property
    def downsample_factor(self) -> int:
        return self.factor

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_images(images)
        return (F.pixel_unshuffle(images, self.factor) - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        return F.pixel_shuffle(latents / self.scale + self.shift, self.factor)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "factor": self.factor, "scale": self.scale, "shift": self.shift}


# ---------------------------------------------------------------------- diffusers AutoencoderKL
class KLAutoencoder(LatentAutoencoder):
    """diffusers ``AutoencoderKL`` with its scaling (and shift) factor applied.

    Args:
        vae: the model.
        posterior: ``mode`` (deterministic, default) or ``sample`` (what the authors' training
            does; uses ``generator`` when given).
    """

    kind = "kl"

    def __init__(self, vae: nn.Module, posterior: str = "mode"):
        super().__init__()
        if posterior not in ("mode", "sample"):
            raise AutoencoderError(f"kl autoencoder posterior must be 'mode' or 'sample', got {posterior!r}")
        self.vae = vae
        self.posterior = posterior
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        shift = getattr(cfg, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self._factor = 2 ** (len(cfg.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return self._factor

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_images(images)
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.mode() if self.posterior == "mode" else dist.sample(generator=generator)
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        z = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample.clamp(-1, 1)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "posterior": self.posterior}

    def _save_weights(self, folder: Path) -> None:
        self.vae.save_pretrained(folder / "vae")


# ---------------------------------------------------------------------- TAEF2
class _TAEBlock(nn.Module):
    """TAE residual block: ``ReLU(convs(x) + x)``, optionally preceded by ``x = x + pool(x)``."""

    def __init__(self, channels: int, with_pool: bool):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        if with_pool:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )
        else:
            self.pool = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + x)


class _TanhClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _taef2_encoder(width: int, latent: int) -> nn.Sequential:
    def conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)

    return nn.Sequential(
        conv(3, width), _TAEBlock(width, False),
        conv(width, width, 2, False), _TAEBlock(width, False), _TAEBlock(width, False), _TAEBlock(width, False),
        conv(width, width, 2, False), _TAEBlock(width, False), _TAEBlock(width, False), _TAEBlock(width, False),
        conv(width, width, 2, False), _TAEBlock(width, True), _TAEBlock(width, True), _TAEBlock(width, True),
        conv(width, latent),
    )  # fmt: skip


def _taef2_decoder(width: int, latent: int) -> nn.Sequential:
    def conv(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)

    def up() -> nn.Upsample:
        return nn.Upsample(scale_factor=2, mode="nearest")

    return nn.Sequential(
        _TanhClamp(), conv(latent, width), nn.ReLU(),
        _TAEBlock(width, True), _TAEBlock(width, True), _TAEBlock(width, True),
        up(), conv(width, width, False), _TAEBlock(width, False), _TAEBlock(width, False), _TAEBlock(width, False),
        up(), conv(width, width, False), _TAEBlock(width, False), _TAEBlock(width, False), _TAEBlock(width, False),
        up(), conv(width, width, False), _TAEBlock(width, False),
        conv(width, 3),
    )  # fmt: skip


class TAEF2Autoencoder(LatentAutoencoder):
    """TAEF2: a tiny pretrained autoencoder (32 latent channels at 1/8 resolution).

    Its own side works on images in [0, 1]; this wrapper converts from/to [-1, 1] and applies
    ``latent = (raw - shift) * scale``.
    """

    kind = "taef2"
    ENCODER_FILE = "taef2_encoder.pth"
    DECODER_FILE = "taef2_decoder.pth"
    WIDTH = 64
    LATENT = 32

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        if scale == 0:
            raise AutoencoderError("taef2 scale must be non-zero")
        self.encoder = _taef2_encoder(self.WIDTH, self.LATENT)
        self.decoder = _taef2_decoder(self.WIDTH, self.LATENT)
        self.scale = float(scale)
        self.shift = float(shift)

    @classmethod
    def from_weight_files(
        cls, encoder_path: str | Path, decoder_path: str | Path, scale: float = 1.0, shift: float = 0.0
    ) -> TAEF2Autoencoder:
        """Build and load the released ``.pth`` state dicts (strictly, ``weights_only=True``)."""
        model = cls(scale=scale, shift=shift)
        for part, path in (("encoder", encoder_path), ("decoder", decoder_path)):
            path = Path(path)
            if not path.is_file():
                raise AutoencoderError(f"taef2 {part} weights {path}: file not found")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - re-raised with the file named
                raise AutoencoderError(f"taef2 {part} weights {path}: cannot be loaded ({exc})") from exc
            _load_strict(getattr(model, part), {k: v.float() for k, v in state.items()}, f"taef2 {part} {path}")
        return model

    @property
    def latent_channels(self) -> int:
        return self.LATENT

    @property
    def downsample_factor(self) -> int:
        return 8

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_images(images)
        raw = self.encoder(((images + 1) / 2).to(self._dtype()))
        return (raw - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        raw = latents / self.scale + self.shift
        return (self.decoder(raw.to(self._dtype())).clamp(0, 1) * 2 - 1).to(latents.dtype)

    def _dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "scale": self.scale, "shift": self.shift}

    def _save_weights(self, folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.encoder.state_dict().items()}, str(folder / "encoder.safetensors"))
        save_file({k: v.contiguous() for k, v in self.decoder.state_dict().items()}, str(folder / "decoder.safetensors"))


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise AutoencoderError(
            f"{where}: weights do not match the architecture "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


# ---------------------------------------------------------------------- factory
AUTOENCODER_TYPES = ("space_to_depth", "kl", "taef2")


def build_autoencoder(config: Mapping[str, Any], pretrained_base: str | None = None, **load_kwargs: Any) -> LatentAutoencoder:
    """Build an autoencoder from a config dict.

    Keys by ``type``:

    * ``space_to_depth``: ``factor`` (4), ``scale`` (1.0), ``shift`` (0.0).
    * ``kl``: ``pretrained`` (folder or hub id holding ``vae/``; defaults to ``pretrained_base``)
      or ``config`` (an ``AutoencoderKL`` config dict, random weights); ``subfolder`` ("vae");
      ``posterior`` ("mode" or "sample").
    * ``taef2``: ``weights_dir`` (holding ``taef2_encoder.pth`` and ``taef2_decoder.pth``) or
      ``encoder_path`` + ``decoder_path``; ``scale`` (1.0), ``shift`` (0.0).

    ``load_kwargs`` go to ``from_pretrained`` (e.g. ``local_files_only``, ``revision``).
    """
    kind = config.get("type")
    if kind not in AUTOENCODER_TYPES:
        raise AutoencoderError(f"autoencoder type must be one of {AUTOENCODER_TYPES}, got {kind!r}")
    unknown = set(config) - _ALLOWED_KEYS[kind]
    if unknown:
        raise AutoencoderError(f"unknown key(s) {sorted(unknown)} for a {kind} autoencoder; allowed: {sorted(_ALLOWED_KEYS[kind])}")
    if kind == "space_to_depth":
        ae: LatentAutoencoder = SpaceToDepthAutoencoder(
            factor=config.get("factor", 4), scale=config.get("scale", 1.0), shift=config.get("shift", 0.0)
        )
    elif kind == "kl":
        from diffusers import AutoencoderKL

        source = config.get("pretrained") or (None if config.get("config") else pretrained_base)
        if source:
            vae = AutoencoderKL.from_pretrained(source, subfolder=config.get("subfolder", "vae"), **load_kwargs)
        elif config.get("config"):
            vae = AutoencoderKL.from_config(dict(config["config"]))
        else:
            raise AutoencoderError("kl autoencoder: give `pretrained` (folder or hub id) or `config` (AutoencoderKL config)")
        ae = KLAutoencoder(vae, posterior=config.get("posterior", "mode"))
    else:
        if config.get("weights_dir"):
            wd = Path(config["weights_dir"])
            enc, dec = wd / TAEF2Autoencoder.ENCODER_FILE, wd / TAEF2Autoencoder.DECODER_FILE
        elif config.get("encoder_path") and config.get("decoder_path"):
            enc, dec = Path(config["encoder_path"]), Path(config["decoder_path"])
        else:
            raise AutoencoderError("taef2 autoencoder: give `weights_dir` or both `encoder_path` and `decoder_path`")
        ae = TAEF2Autoencoder.from_weight_files(enc, dec, scale=config.get("scale", 1.0), shift=config.get("shift", 0.0))
    ae.requires_grad_(False)
    ae.eval()
    if ae.downsample_factor & (ae.downsample_factor - 1):
        raise AutoencoderError(f"autoencoder downsampling factor {ae.downsample_factor} must be a power of two")
    return ae


_ALLOWED_KEYS: dict[str, set[str]] = {
    "space_to_depth": {"type", "factor", "scale", "shift"},
    "kl": {"type", "pretrained", "config", "subfolder", "posterior"},
    "taef2": {"type", "weights_dir", "encoder_path", "decoder_path", "scale", "shift"},
}


def load_autoencoder(folder: str | Path) -> LatentAutoencoder:
    """Load an autoencoder written by :meth:`LatentAutoencoder.save_pretrained` (safetensors only)."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AutoencoderError(f"{folder}: no {CONFIG_NAME}; not a saved autoencoder")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    kind = cfg.get("type")
    if kind == "space_to_depth":
        ae: LatentAutoencoder = SpaceToDepthAutoencoder(cfg["factor"], cfg.get("scale", 1.0), cfg.get("shift", 0.0))
    elif kind == "kl":
        from diffusers import AutoencoderKL

        ae = KLAutoencoder(AutoencoderKL.from_pretrained(folder / "vae"), posterior=cfg.get("posterior", "mode"))
    elif kind == "taef2":
        ae = TAEF2Autoencoder(scale=cfg.get("scale", 1.0), shift=cfg.get("shift", 0.0))
        assert isinstance(ae, TAEF2Autoencoder)
        _load_strict(ae.encoder, read_safetensors(folder / "encoder.safetensors"), f"{folder} encoder")
        _load_strict(ae.decoder, read_safetensors(folder / "decoder.safetensors"), f"{folder} decoder")
    else:
        raise AutoencoderError(f"{path}: unknown autoencoder type {kind!r}")
    ae.requires_grad_(False)
    ae.eval()
    return ae


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB of two image batches with value range ``peak`` (2 for [-1, 1])."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(torch.tensor(peak**2) / mse)


__all__ = [
    "AutoencoderError",
    "KLAutoencoder",
    "LatentAutoencoder",
    "SpaceToDepthAutoencoder",
    "TAEF2Autoencoder",
    "build_autoencoder",
    "load_autoencoder",
    "psnr",
]
