"""Sampling: DDIM with classifier-free guidance, seeded per item (METHOD §3).

Every image depends only on its (mask, Ref, prompt, seed) and, when given, the Ref-moment
transfer (:mod:`tisynth.generator.moments`): the initial noise and, for
``eta > 0``, the DDIM noise of every step are drawn per item from a CPU ``torch.Generator``
seeded with the item's seed, so outputs do not depend on the batch size, the order of items or
the device's RNG (up to float rounding: a CPU may pick other kernels for another batch size).

Classifier-free guidance (``guidance_scale`` ≠ 1): the unconditional branch uses the empty
prompt (``negative_prompt``) with the **same** mask and Ref; ε = ε_u + g·(ε_c − ε_u). Our path
runs both branches in one batched forward and computes only the ControlNet outputs AIA uses;
``reference_path=True`` does what the authors' code does (two separate passes, every ControlNet
output computed, fp16 autocast on GPU) for benchmarking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from tisynth.params import dataclass_from_mapping
from tisynth.errors import TisynthError
from tisynth.generator.data import images_to_uint8, uint8_to_images
from tisynth.generator.model import MODES, TISynthGenerator
from tisynth.generator.moments import MomentTransfer


class SamplingError(TisynthError, ValueError):
    """Sampling inputs or settings that cannot be used."""


@dataclass
class SampleConfig:
    """Sampling parameters (defaults: the authors' inference settings, METHOD §3).

    Attributes:
        steps: DDIM steps (50).
        eta: DDIM η (0 = deterministic given the initial noise).
        guidance_scale: classifier-free guidance scale (9 in the authors' code; 1 = no guidance).
        timestep_spacing, steps_offset, set_alpha_to_one: DDIM timestep schedule ("leading", 1,
            False reproduce the LDM sampler's 981, 961, …, 1 with ᾱ_prev(last) = ᾱ_0).
        batch_size: items per forward (memory only; results do not depend on it).
        precision: "auto" (bf16 autocast on CUDA when supported, else fp16; fp32 on CPU),
            "fp32", "bf16" or "fp16".
        mode: "tisynth" (mask + Ref through AIA), "controlnet" (stage-A model: mask only),
            "base" (text only).
        reference_path: the authors' execution (separate cond/uncond passes, all ControlNet
            outputs, fp16 autocast on GPU), for benchmarks.
        negative_prompt: prompt of the unconditional branch ("").
        uncond: what the unconditional branch drops: "prompt" (the paper: the empty prompt, the
            same mask and Ref) or "mask_prompt" (mask-first models trained with condition
            dropout: the empty prompt and the dropped mask; guidance then amplifies the mask).
        conditioning_scale: multiplies all ControlNet outputs (1.0).
        device: where to run: a torch device string, "auto" (CUDA if available, else CPU) or
            None (the model's device).
        progress: show a progress bar over batches.
    """

    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 9.0
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    batch_size: int = 8
    precision: str = "auto"
    mode: str = "tisynth"
    reference_path: bool = False
    negative_prompt: str = ""
    uncond: str = "prompt"
    conditioning_scale: float = 1.0
    device: str | None = None
    progress: bool = False

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | SampleConfig | None) -> SampleConfig:
        if isinstance(config, SampleConfig):
            return config
        cfg = dataclass_from_mapping(cls, config, SamplingError, "unknown sampling key(s)")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.steps < 1:
            raise SamplingError(f"steps must be at least 1, got {self.steps}")
        if self.eta < 0:
            raise SamplingError(f"eta must be non-negative, got {self.eta}")
        if self.batch_size < 1:
            raise SamplingError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise SamplingError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.mode not in MODES:
            raise SamplingError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.uncond not in ("prompt", "mask_prompt"):
            raise SamplingError(f"uncond must be 'prompt' or 'mask_prompt', got {self.uncond!r}")
        if self.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise SamplingError(f"timestep_spacing must be leading, trailing or linspace, got {self.timestep_spacing!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_scheduler(model: TISynthGenerator, cfg: SampleConfig) -> DDIMScheduler:
    """A DDIM scheduler from the model's training schedule and the sampling settings."""
    base = {k: v for k, v in model.scheduler_config.items() if not k.startswith("_")}
    base.update(
        timestep_spacing=cfg.timestep_spacing,
        steps_offset=cfg.steps_offset,
        set_alpha_to_one=cfg.set_alpha_to_one,
        clip_sample=False,
    )
    return DDIMScheduler.from_config(base)


def autocast_context(device: torch.device, precision: str, reference_path: bool = False) -> contextlib.AbstractContextManager[Any]:
    """Autocast for ``precision`` on ``device`` (no autocast for fp32 and, with "auto", on CPU)."""
    if reference_path:
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext()
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _item_noise(seeds: Sequence[int], shape: tuple[int, ...], streams: list[torch.Generator] | None = None) -> torch.Tensor:
    gens = streams if streams is not None else [torch.Generator().manual_seed(int(s)) for s in seeds]
    return torch.cat([torch.randn((1, *shape), generator=g) for g in gens])


@torch.no_grad()
def sample_latents(
    model: TISynthGenerator,
    control: torch.Tensor | None,
    ref_latents: torch.Tensor | None,
    prompts: Sequence[str],
    seeds: Sequence[int],
    config: Mapping[str, Any] | SampleConfig | None = None,
    latent_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Denoise one batch from per-item seeded noise; returns latents ``B×C×h×w`` (fp32, model device).

    ``control``/``ref_latents`` as required by ``config.mode``; ``latent_size`` is needed only
    when neither is given (mode ``base``).
    """
    cfg = SampleConfig.from_dict(config)
    device = model.device
    b = len(prompts)
    if len(seeds) != b:
        raise SamplingError(f"{len(seeds)} seeds for {b} prompts")
    if ref_latents is not None:
        h, w = ref_latents.shape[-2:]
    elif control is not None:
        h, w = control.shape[-2] // model.downsample_factor, control.shape[-1] // model.downsample_factor
    elif latent_size is not None:
        h, w = latent_size
    else:
        raise SamplingError("give control, ref_latents or latent_size")
    sched = make_scheduler(model, cfg)
    sched.set_timesteps(cfg.steps, device=device)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    latents = _item_noise(seeds, (model.latent_channels, h, w), gens).to(device) * sched.init_noise_sigma
    text_c = model.encode_prompts(list(prompts))
    guided = cfg.guidance_scale != 1.0
    text_u = model.encode_prompts([cfg.negative_prompt] * b) if guided else None
    with autocast_context(device, cfg.precision, cfg.reference_path):
        for t in sched.timesteps:
            eps = _guided_prediction(model, latents, t, text_c, text_u, control, ref_latents, cfg)
            noise = _item_noise(seeds, tuple(latents.shape[1:]), gens).to(device) if cfg.eta > 0 else None
            latents = sched.step(eps.float(), t, latents, eta=cfg.eta, variance_noise=noise).prev_sample
    model.clear_features()
    return latents.float()


def _guided_prediction(
    model: TISynthGenerator,
    x: torch.Tensor,
    t: torch.Tensor,
    text_c: torch.Tensor,
    text_u: torch.Tensor | None,
    control: torch.Tensor | None,
    ref: torch.Tensor | None,
    cfg: SampleConfig,
) -> torch.Tensor:
    def predict(xx: torch.Tensor, tt: torch.Tensor, c: torch.Tensor | None, r: torch.Tensor | None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        return model.predict_noise(
            xx, t, tt, c, r, mode=cfg.mode, reference_path=cfg.reference_path, conditioning_scale=cfg.conditioning_scale,
            cond_keep=keep,
        )

    if text_u is None:
        return predict(x, text_c, control, ref)
    g = cfg.guidance_scale
    b = x.shape[0]
    drop_mask = cfg.uncond == "mask_prompt" and model.mask_first
    ones = torch.ones(b, dtype=torch.bool, device=x.device)
    if cfg.reference_path:  # the authors' way: two separate passes
        eps_c = predict(x, text_c, control, ref)
        eps_u = predict(x, text_u, control, ref, ~ones if drop_mask else None)
    else:

        def twice(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else torch.cat([v, v])

        keep = torch.cat([~ones, ones]) if drop_mask else None
        eps_u, eps_c = predict(twice(x), torch.cat([text_u, text_c]), twice(control), twice(ref), keep).chunk(2)  # type: ignore[arg-type]
    return eps_u + g * (eps_c - eps_u)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def sample_images(
    model: TISynthGenerator,
    masks: np.ndarray | torch.Tensor | Sequence[np.ndarray] | None,
    refs: np.ndarray | torch.Tensor | Sequence[np.ndarray] | None,
    prompts: Sequence[str],
    seeds: Sequence[int],
    config: Mapping[str, Any] | SampleConfig | None = None,
    moments: MomentTransfer | None = None,
) -> np.ndarray:
    """Generate one image per (mask, Ref, prompt, seed); returns uint8 ``N×H×W×3``.

    Args:
        model: the generator (its device is used unless ``config.device`` is set).
        masks: index-space masks ``N×H×W`` (uint8), or a list of ``H×W`` arrays.
        refs: Ref images ``N×H×W×3`` uint8 (mode ``tisynth``; ``None`` otherwise).
        prompts: N prompts.
        seeds: N integer seeds.
        config: :class:`SampleConfig` or a dict of its fields.
        moments: Ref-set latent moments applied to each denoised latent before decoding
            (:mod:`tisynth.generator.moments`; ``None``: the paper's sampler).
    """
    cfg = SampleConfig.from_dict(config)
    if cfg.device == "auto":
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    elif cfg.device is not None:
        model.to(cfg.device)
    n = len(prompts)
    if isinstance(prompts, str):
        raise SamplingError("prompts must be a sequence of strings")
    if len(seeds) != n:
        raise SamplingError(f"got {len(seeds)} seeds for {n} prompts")
    mask_arr = None if masks is None else _stack(masks, "masks")
    ref_arr = None if refs is None else _stack(refs, "refs")
    if (cfg.mode != "base" or model.mask_first) and (mask_arr is None or len(mask_arr) != n):
        raise SamplingError(f"mode {cfg.mode!r} needs one mask per prompt ({n})")
    if cfg.mode == "tisynth" and (ref_arr is None or len(ref_arr) != n):
        raise SamplingError(f"mode 'tisynth' needs one Ref image per prompt ({n})")
    if mask_arr is not None and ref_arr is not None and mask_arr.shape[1:3] != ref_arr.shape[1:3]:
        raise SamplingError(f"masks {mask_arr.shape[1:3]} and Ref images {ref_arr.shape[1:3]} differ in size")
    size = (mask_arr if mask_arr is not None else ref_arr)
    if size is None:
        raise SamplingError("mode 'base' still needs masks or refs to know the image size")
    model.check_image_size(int(size.shape[1]), int(size.shape[2]))
    out = []
    batches = list(_batches(n, cfg.batch_size))
    for sl in tqdm(batches, desc="sampling", disable=not cfg.progress):
        wants_mask = cfg.mode != "base" or model.mask_first
        control = model.encode_control(mask_arr[sl]) if mask_arr is not None and wants_mask else None
        # only mode tisynth uses the Ref: in modes base and controlnet a style-first base sees the dropped Ref,
        # so they stay the mask-only control
        ref_lat = model.encode_images(uint8_to_images(ref_arr[sl])) if ref_arr is not None and cfg.mode == "tisynth" else None
        lat_size = (size.shape[1] // model.downsample_factor, size.shape[2] // model.downsample_factor)
        latents = sample_latents(model, control, ref_lat, list(prompts[sl]), list(seeds[sl]), cfg, latent_size=lat_size)
        if moments is not None:
            latents = moments.apply(latents, sl, n)
        out.append(images_to_uint8(model.decode_latents(latents)))
    return np.concatenate(out)


def _stack(arrays: np.ndarray | torch.Tensor | Sequence[np.ndarray], what: str) -> np.ndarray:
    if isinstance(arrays, torch.Tensor):
        arr = arrays.cpu().numpy()
    elif isinstance(arrays, np.ndarray):
        arr = arrays
    else:
        shapes = {np.asarray(a).shape for a in arrays}
        if len(shapes) > 1:
            raise SamplingError(f"{what} must share one size, got {sorted(shapes)}")
        arr = np.stack([np.asarray(a) for a in arrays])
    if arr.dtype != np.uint8:
        raise SamplingError(f"{what} must be uint8, got {arr.dtype}")
    return arr


def sample_grid(columns: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack image columns (each ``N×H×W×3`` uint8) into one ``N`` rows × ``len(columns)`` grid."""
    n, h, w, _ = columns[0].shape
    grid = np.full((n * h + (n + 1) * pad, len(columns) * w + (len(columns) + 1) * pad, 3), 255, np.uint8)
    for r in range(n):
        for c, col in enumerate(columns):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = col[r]
    return grid
