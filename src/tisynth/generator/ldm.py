"""Stable Diffusion weights in the original LDM single-file layout -> diffusers parts, offline and strict.

Most Stable Diffusion 1.x copies are one file (``v1-5-pruned-emaonly.safetensors``, ``.ckpt``)
in the original latent-diffusion layout: ``model.diffusion_model.*`` (the UNet),
``first_stage_model.*`` (the VAE), ``cond_stage_model.transformer.*`` (the CLIP text model) and
the noise-schedule buffers. :func:`load_single_file` turns such a file into the diffusers
modules the generator uses, without any download:

* the architecture comes from an LDM *original config* (``v1-inference.yaml``'s layout): the one
  given, else a ``<file>.yaml`` beside the checkpoint (the usual convention of SD front ends),
  else SD 1.5's (:data:`SD15_ORIGINAL_CONFIG`, embedded here);
* the UNet and the VAE are converted with diffusers' single-file converters (the functions that
  ``from_single_file`` calls) and loaded **strictly**: a missing or surplus weight, or one of the
  wrong shape, is an error naming the file (``from_single_file`` itself keeps going with
  whatever it did not find);
* the text model's config is read off the weight shapes (CLIP heads are 64 wide), its weights
  are the file's ``cond_stage_model.transformer.*``;
* the tokenizer, which no single file holds: the one given (a folder or hub id), else CLIP
  ViT-L/14's (SD 1.x's), rebuilt from the BPE vocabulary file that the installed
  ``mmsegmentation`` package ships;
* the training noise schedule from the original config (``linear_start``/``linear_end``, LDM's
  "linear" = diffusers' ``scaled_linear``), checked against the file's ``betas`` buffer.

Every tensor of the file must be used or be a known non-weight (schedule buffers, CLIP's
``position_ids``, an EMA copy under ``model_ema.*``); anything else is refused with its name, so
that a file of another kind (a ControlNet, an SDXL model) never loads half-way.

:mod:`tisynth.generator.ldm_import` builds on the same pieces for the authors' TISynth
checkpoints. Pickled checkpoints are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tisynth.errors import TisynthError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
})  # fmt: skip
KNOWN_NON_WEIGHTS = SCHEDULE_BUFFERS | {f"{TEXT_PREFIX}text_model.embeddings.position_ids", f"{TEXT_PREFIX}embeddings.position_ids"}
EMA_PREFIX = "model_ema."
CLIP_HEAD_WIDTH = 64
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408

SD15_ORIGINAL_CONFIG: dict[str, Any] = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "image_size": 64,
            "channels": 4,
            "conditioning_key": "crossattn",
            "scale_factor": 0.18215,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_heads": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 768,
                    "legacy": False,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                },
            },
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
        },
    }
}
"""Stable Diffusion 1.x's ``v1-inference.yaml`` (the architecture and schedule keys)."""


class LdmError(TisynthError, ValueError):
    """An LDM-layout checkpoint or config that cannot be loaded as asked."""


# ---------------------------------------------------------------------- files
def is_single_file(source: str | Path | None) -> bool:
    """True if ``source`` names a checkpoint file (by its suffix) rather than a folder or hub id."""
    return bool(source) and Path(str(source)).suffix.lower() in CHECKPOINT_SUFFIXES


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a pickled checkpoint read with
    ``torch.load(weights_only=True)``; a Lightning ``{"state_dict": …}`` wrapper is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise LdmError(f"{path}: checkpoint file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise LdmError(
            f"{path}: cannot be read as a weights-only checkpoint ({type(exc).__name__}: {exc}); pickled files are "
            "read with torch.load(weights_only=True) only; convert the file to .safetensors with a tool you trust"
        ) from exc
    while isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise LdmError(f"{path}: holds a {type(state).__name__}, not a state dict")
    other = [k for k, v in state.items() if not torch.is_tensor(v)]
    if other:
        raise LdmError(f"{path}: entries that are not tensors: {sorted(other)[:10]}")
    return dict(state)


def read_original_config(config: str | Path | Mapping[str, Any] | None, checkpoint: str | Path | None = None,
                         default: Mapping[str, Any] = SD15_ORIGINAL_CONFIG) -> dict[str, Any]:
    """An LDM original config: the mapping given, a YAML file, ``<checkpoint>.yaml`` beside the
    checkpoint, else a copy of ``default`` (SD 1.5's)."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config) if config else None
    if path is None and checkpoint is not None:
        sidecar = Path(checkpoint).with_suffix(".yaml")
        path = sidecar if sidecar.is_file() else None
    if path is None:
        return copy.deepcopy(dict(default))
    if not path.is_file():
        raise LdmError(f"{path}: original config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LdmError(f"{path}: not valid YAML ({exc})") from exc
    try:
        data["model"]["params"]["unet_config"]["params"]
        data["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    except (KeyError, TypeError) as exc:
        raise LdmError(f"{path}: not an LDM original config (needs model.params.unet_config and first_stage_config)") from exc
    log.info("architecture from the original config %s", path)
    return data


# ---------------------------------------------------------------------- strict loading
class KeyLedger:
    """Which tensors of a source state dict were used, tracked by tensor identity so that it sees
    through the renaming converters; a reshaping view made by a converter (a 1×1 conv read as a
    linear layer) starts at its source's first element and is matched by that address."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self.state = state
        self._by_id = {id(t): k for k, t in state.items()}
        self._by_address = {(t.data_ptr(), t.dtype): k for k, t in state.items() if t.numel()}
        self.used: set[str] = set()

    def source_of(self, t: torch.Tensor | None) -> str | None:
        """The source key ``t`` (or the view ``t``) came from, if any."""
        if t is None:
            return None
        key = self._by_id.get(id(t))
        if key is None and t.numel():
            key = self._by_address.get((t.data_ptr(), t.dtype))
        return key

    def claim(self, tensors: Iterable[torch.Tensor | None]) -> None:
        for t in tensors:
            key = self.source_of(t)
            if key is not None:
                self.used.add(key)

    def claim_keys(self, keys: Iterable[str]) -> None:
        self.used.update(k for k in keys if k in self.state)

    def unused(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used)


def _listing(items: list[str], n: int = 12) -> str:
    return f"{len(items)}: {items[:n]}{' …' if len(items) > n else ''}"


def load_strict(model: nn.Module, converted: Mapping[str, torch.Tensor | None], what: str, where: str | Path,
                ledger: KeyLedger | None = None) -> None:
    """Load ``converted`` into ``model``; every parameter/buffer must be there with its shape.

    Surplus entries are named by their key in the file when ``ledger`` knows it."""
    expected = model.state_dict()
    missing = [k for k in expected if converted.get(k) is None]
    unexpected = [k for k in converted if k not in expected]
    if ledger is not None:
        unexpected = [f"{ledger.source_of(converted[k]) or '?'} (as {k})" for k in unexpected]
    shapes = [f"{k} {tuple(converted[k].shape)} != {tuple(expected[k].shape)}"  # type: ignore[union-attr]
              for k in expected if converted.get(k) is not None and tuple(converted[k].shape) != tuple(expected[k].shape)]  # type: ignore[union-attr]
    if missing or unexpected or shapes:
        parts = [f"missing {_listing(missing)}" if missing else "", f"not in the model {_listing(unexpected)}" if unexpected else "",
                 f"shape mismatches {_listing(shapes)}" if shapes else ""]
        raise LdmError(f"{where}: the {what} weights do not fit its architecture ({'; '.join(p for p in parts if p)}); "
                       "is the original config the checkpoint's?")
    # modules are built without weights (empty_init): the checkpoint's tensors become the parameters
    model.load_state_dict({k: converted[k].to(expected[k].dtype) for k in expected}, strict=True, assign=True)  # type: ignore[union-attr]


def empty_init() -> Any:
    """Build modules without allocating or drawing their weights (no RNG use): they are loaded next."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix``, with the prefix removed (the tensors themselves, not copies)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _require(state: Mapping[str, torch.Tensor], prefix: str, what: str, where: str | Path) -> None:
    if not any(k.startswith(prefix) for k in state):
        prefixes = sorted({k.split(".")[0] for k in state})
        raise LdmError(f"{where}: no {prefix}* weights ({what}); the file's top-level names are {prefixes[:12]}")


# ---------------------------------------------------------------------- parts
def unet_from_ldm(state: Mapping[str, torch.Tensor], original_config: Mapping[str, Any], ledger: KeyLedger,
                  where: str | Path, sample_size: int | None = None) -> UNet2DConditionModel:
    """The UNet from ``model.diffusion_model.*`` (only those keys of ``state`` are read)."""
    _require(state, UNET_PREFIX, "the UNet", where)
    unet_state = {k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    try:
        config = create_unet_diffusers_config_from_ldm(dict(original_config), unet_state)
        if sample_size is not None:
            config["sample_size"] = int(sample_size)
        converted = convert_ldm_unet_checkpoint(unet_state, config)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise LdmError(f"{where}: the UNet cannot be converted ({type(exc).__name__}: {exc})") from exc
    with empty_init():
        unet = UNet2DConditionModel.from_config(config)
    load_strict(unet, converted, "UNet (model.diffusion_model)", where, ledger)
    ledger.claim(converted.values())
    return unet


def vae_from_ldm(state: Mapping[str, torch.Tensor], original_config: Mapping[str, Any], ledger: KeyLedger,
                 where: str | Path) -> AutoencoderKL:
    """The VAE from ``first_stage_model.*``."""
    _require(state, VAE_PREFIX, "the VAE", where)
    vae_state = {k: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    try:
        config = create_vae_diffusers_config_from_ldm(dict(original_config), vae_state)
        converted = convert_ldm_vae_checkpoint(vae_state, config)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise LdmError(f"{where}: the VAE cannot be converted ({type(exc).__name__}: {exc})") from exc
    with empty_init():
        vae = AutoencoderKL.from_config(config)
    load_strict(vae, converted, "VAE (first_stage_model)", where, ledger)
    ledger.claim(converted.values())
    return vae


def text_encoder_from_ldm(state: Mapping[str, torch.Tensor], ledger: KeyLedger, where: str | Path,
                          tokenizer: Any | None = None) -> CLIPTextModel:
    """The CLIP text model from ``cond_stage_model.transformer.*``; its config from the shapes."""
    _require(state, TEXT_PREFIX, "the CLIP text encoder", where)
    sub = sub_state(state, TEXT_PREFIX)
    if not any(k.startswith("text_model.") for k in sub):  # the older layout without the text_model level
        sub = {f"text_model.{k}": v for k, v in sub.items()}
    sub.pop("text_model.embeddings.position_ids", None)
    try:
        tokens = sub["text_model.embeddings.token_embedding.weight"]
        positions = sub["text_model.embeddings.position_embedding.weight"]
        fc1 = sub["text_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise LdmError(f"{where}: the CLIP text encoder lacks {exc.args[0]!r}") from exc
    layers = 1 + max(int(k.split(".")[3]) for k in sub if k.startswith("text_model.encoder.layers."))
    width = int(tokens.shape[1])
    if width % CLIP_HEAD_WIDTH:
        raise LdmError(f"{where}: CLIP text width {width} is not a multiple of CLIP's head width {CLIP_HEAD_WIDTH}")
    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = CLIPTextConfig(vocab_size=int(tokens.shape[0]), hidden_size=width, intermediate_size=int(fc1.shape[0]),
                            num_hidden_layers=layers, num_attention_heads=width // CLIP_HEAD_WIDTH,
                            max_position_embeddings=int(positions.shape[0]), hidden_act="quick_gelu", projection_dim=width,
                            **{k: v for k, v in ids.items() if v is not None})
    with empty_init():
        model = CLIPTextModel(config)
    if not any(k.startswith("text_model.") for k in model.state_dict()):  # transformers >= 5 drops that level
        sub = {k.removeprefix("text_model."): v for k, v in sub.items()}
    load_strict(model, sub, "CLIP text encoder (cond_stage_model.transformer)", where, ledger)
    ledger.claim(sub.values())
    model.requires_grad_(False)
    model.eval()
    return model


def controlnet_from_ldm(state: Mapping[str, torch.Tensor], prefix: str, unet: UNet2DConditionModel, ledger: KeyLedger,
                        where: str | Path, hint_stride: int = 2) -> ControlNetModel:
    """A ControlNet in the original ``cldm`` layout under ``prefix`` (e.g. ``control_model.``).

    Its architecture mirrors ``unet``'s encoder; the hint encoder's channels are read off the
    weights (``input_hint_block.{0,2,…,14}``: a conv in, six convs, the zero conv out).
    ``hint_stride`` 1 makes its downsampling convs stride 1 (a hint that is already a latent).
    """
    _require(state, prefix, f"a ControlNet under {prefix}", where)
    sub = sub_state(state, prefix)
    hint = sorted({int(k.split(".")[1]) for k in sub if k.startswith("input_hint_block.")})
    if hint != list(range(0, 15, 2)):
        raise LdmError(f"{where}: the ControlNet {prefix}* has hint-encoder convs {hint}, expected 0, 2, …, 14 "
                       "(SD ControlNet's eight convs)")
    conv = [sub[f"input_hint_block.{i}.weight"] for i in hint]
    channels = (int(conv[0].shape[0]), *(int(conv[j].shape[0]) for j in (2, 4, 6)))
    with empty_init():
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels,
                                               load_weights_from_unet=False, conditioning_channels=int(conv[0].shape[1]))
    try:
        converted = convert_controlnet_checkpoint(sub, dict(controlnet.config))
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise LdmError(f"{where}: the ControlNet {prefix}* cannot be converted ({type(exc).__name__}: {exc})") from exc
    load_strict(controlnet, converted, f"ControlNet ({prefix.rstrip('.')})", where, ledger)
    ledger.claim(converted.values())
    if hint_stride != 2:
        for i, block in enumerate(controlnet.controlnet_cond_embedding.blocks):
            if i % 2 == 1:
                block.stride = (hint_stride, hint_stride)
    return controlnet


def scheduler_config_from_ldm(original_config: Mapping[str, Any]) -> dict[str, Any]:
    """The DDPM training schedule of an LDM config (its "linear" schedule is linear in sqrt β)."""
    params = original_config["model"]["params"]
    schedule = params.get("beta_schedule", "linear")
    if schedule != "linear":
        raise LdmError(f"LDM beta_schedule {schedule!r} is not supported (only 'linear', i.e. diffusers' scaled_linear)")
    return {
        "num_train_timesteps": int(params.get("timesteps", 1000)),
        "beta_start": float(params.get("linear_start", 0.00085)),
        "beta_end": float(params.get("linear_end", 0.012)),
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction" if params.get("parameterization") == "v" else "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def check_schedule(state: Mapping[str, torch.Tensor], scheduler_config: Mapping[str, Any], ledger: KeyLedger,
                   where: str | Path) -> None:
    """The file's ``betas`` (when present) must be the config's schedule; the schedule buffers
    and other known non-weights are then accounted for."""
    if "betas" in state:
        n = int(scheduler_config["num_train_timesteps"])
        want = torch.linspace(scheduler_config["beta_start"] ** 0.5, scheduler_config["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
        got = state["betas"].double().flatten()
        if got.numel() != n or not torch.allclose(got, want, rtol=1e-4, atol=1e-7):
            raise LdmError(f"{where}: its betas buffer is not the schedule of the original config "
                           f"(scaled_linear {scheduler_config['beta_start']}–{scheduler_config['beta_end']}, {n} steps)")
    ledger.claim_keys(k for k in state if k in KNOWN_NON_WEIGHTS)
    ema = [k for k in state if k.startswith(EMA_PREFIX)]
    if ema:
        log.info("%s: %d EMA tensors (model_ema.*) are not used; the UNet is read from model.diffusion_model.*", where, len(ema))
        ledger.claim_keys(ema)


def refuse_unused(ledger: KeyLedger, where: str | Path) -> None:
    """Raise if any tensor of the file was neither used nor a known non-weight."""
    left = ledger.unused()
    if left:
        groups = sorted({".".join(k.split(".")[:2]) for k in left})
        raise LdmError(f"{where}: {len(left)} tensors are not part of any converted model (under {groups[:12]}); "
                       f"first ones: {left[:12]}; refusing to load part of the file")


# ---------------------------------------------------------------------- the tokenizer
def _bpe_vocabulary_file() -> Path | None:
    spec = importlib.util.find_spec("mmseg")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "utils" / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    return None


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vit_l14_tokenizer(vocabulary: str | Path | None = None, max_length: int = 77) -> CLIPTokenizer:
    """CLIP ViT-L/14's tokenizer (SD 1.x's), rebuilt offline from CLIP's BPE vocabulary file
    (``bpe_simple_vocab_16e6.txt.gz``; by default the copy the installed mmsegmentation ships)."""
    path = Path(vocabulary) if vocabulary else _bpe_vocabulary_file()
    if path is None or not path.is_file():
        raise LdmError("no tokenizer given and CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz, shipped with "
                       "mmsegmentation) was not found; give the tokenizer folder of SD 1.5 (pretrained_kwargs.tokenizer)")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [CLIP_BOS, CLIP_EOS]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise LdmError(f"{path}: gives {len(vocab)} tokens, CLIP's vocabulary has {CLIP_VOCAB_SIZE}")
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=pairs, model_max_length=max_length)


def load_tokenizer(source: str | Path | None, **kwargs: Any) -> Any:
    """The tokenizer at ``source`` (folder or hub id), else CLIP ViT-L/14's (:func:`clip_vit_l14_tokenizer`)."""
    if source:
        return AutoTokenizer.from_pretrained(str(source), **kwargs)
    return clip_vit_l14_tokenizer()


# ---------------------------------------------------------------------- one SD file
@dataclass
class SingleFileParts:
    """What a Stable Diffusion single file gives the generator."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: Any
    scheduler_config: dict[str, Any]
    original_config: dict[str, Any]


SINGLE_FILE_OPTIONS = frozenset({"original_config", "tokenizer"})


def load_single_file(path: str | Path, original_config: str | Path | Mapping[str, Any] | None = None,
                     tokenizer: str | Path | None = None, sample_size: int | None = None,
                     **tokenizer_kwargs: Any) -> SingleFileParts:
    """Load a Stable Diffusion 1.x single file (see the module docstring); strict, offline."""
    path = Path(path)
    state = read_checkpoint(path)
    cfg = read_original_config(original_config, path)
    ledger = KeyLedger(state)
    tok = load_tokenizer(tokenizer, **tokenizer_kwargs)
    unet = unet_from_ldm(state, cfg, ledger, path, sample_size)
    vae = vae_from_ldm(state, cfg, ledger, path)
    text_encoder = text_encoder_from_ldm(state, ledger, path, tok)
    if text_encoder.config.vocab_size != len(tok):
        raise LdmError(f"{path}: the text encoder has {text_encoder.config.vocab_size} token embeddings but the tokenizer "
                       f"{len(tok)} tokens; give the tokenizer this text encoder was trained with (pretrained_kwargs.tokenizer)")
    scheduler_config = scheduler_config_from_ldm(cfg)
    check_schedule(state, scheduler_config, ledger, path)
    refuse_unused(ledger, path)
    for m in (unet, vae):
        m.requires_grad_(False)
        m.eval()
    return SingleFileParts(unet, vae, text_encoder, tok, scheduler_config, cfg)


__all__ = [
    "LdmError",
    "SD15_ORIGINAL_CONFIG",
    "SingleFileParts",
    "clip_vit_l14_tokenizer",
    "controlnet_from_ldm",
    "is_single_file",
    "load_single_file",
    "read_checkpoint",
    "read_original_config",
]
