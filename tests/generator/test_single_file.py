"""`generator.pretrained` as one Stable Diffusion file in the original LDM layout: offline, strict,
and the same model as the diffusers folder it was written from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tests.generator.ldm_layout import sd_single_file
from tests.generator.sd15_fixture import fixture_original_config, write_sd15_fixture
from tisynth.classes import ClassRegistry
from tisynth.generator import build_generator
from tisynth.generator.ldm import LdmError, clip_vit_l14_tokenizer, load_single_file, read_checkpoint
from tisynth.ingest.demo_scenes import DEMO_CLASSES


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("single_file")
    folder = write_sd15_fixture(root / "sd15")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    state = {k: v.contiguous() for k, v in sd_single_file(pipe.unet, pipe.vae, pipe.text_encoder).items()}
    single = root / "tiny-sd15.safetensors"
    save_file(state, str(single))
    single.with_suffix(".yaml").write_text(yaml.safe_dump(fixture_original_config()), encoding="utf-8")  # the sidecar convention
    ckpt = root / "tiny-sd15.ckpt"
    torch.save({"state_dict": state, "global_step": 1}, ckpt)
    config = root / "tiny-v1-inference.yaml"
    config.write_text(yaml.safe_dump(fixture_original_config()), encoding="utf-8")
    return {"folder": folder, "single": single, "ckpt": ckpt, "config": config, "tokenizer": folder / "tokenizer"}


@pytest.fixture(scope="module")
def registry() -> ClassRegistry:
    return ClassRegistry.from_records(DEMO_CLASSES)


def _inputs(model, registry):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(3)
    x, ref = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    text = model.encode_prompts(["a satellite image of forest water", ""])
    control = model.encode_control(torch.randint(0, registry.num_classes, (2, 64, 64), generator=g).to(torch.uint8))
    return x, torch.tensor([5, 700]), text, control, ref


def test_the_single_file_builds_the_same_generator_as_the_folder(files, registry):
    base = {"preset": "sd15", "image_size": 64}
    from_folder = build_generator({**base, "pretrained": str(files["folder"])}, registry)
    from_file = build_generator({**base, "pretrained": str(files["single"]),
                                 "pretrained_kwargs": {"tokenizer": str(files["tokenizer"])}}, registry)
    a, b = from_folder.state_dict(), from_file.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # every weight, ControlNets and AIA included
    assert from_file.scheduler_config == {k: from_folder.scheduler_config[k] for k in from_file.scheduler_config}
    assert from_file.tokenizer("a satellite image of water").input_ids == from_folder.tokenizer("a satellite image of water").input_ids
    inputs = _inputs(from_folder, registry)
    with torch.no_grad():
        x, t, text, control, ref = inputs
        unet_a, unet_b = from_folder.unet(x, t, text).sample, from_file.unet(x, t, text).sample
        full_a, full_b = from_folder.predict_noise(*inputs), from_file.predict_noise(*inputs)
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
        lat_a, lat_b = from_folder.encode_images(image), from_file.encode_images(image)
        prompts = ["a satellite image of built-up farmland", ""]
        text_a, text_b = from_folder.encode_prompts(prompts), from_file.encode_prompts(prompts)
    # equal weights; the outputs differ only by float rounding between differently allocated copies
    torch.testing.assert_close(unet_b, unet_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_b, full_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lat_b, lat_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_b, text_a, rtol=1e-5, atol=1e-5)


def test_a_pickled_ckpt_with_an_explicit_original_config_loads_weights_only(files):
    parts = load_single_file(files["ckpt"], original_config=files["config"], tokenizer=files["tokenizer"])
    reference = load_single_file(files["single"], tokenizer=files["tokenizer"])
    assert all(torch.equal(v, reference.unet.state_dict()[k]) for k, v in parts.unet.state_dict().items())
    assert parts.scheduler_config["beta_schedule"] == "scaled_linear" and parts.scheduler_config["steps_offset"] == 1


def test_broken_or_foreign_files_are_refused_with_what_is_wrong(files, tmp_path):
    state = read_checkpoint(files["single"])
    cfg = fixture_original_config()

    def write(name: str, s: dict) -> Path:
        path = tmp_path / name
        save_file({k: v.contiguous() for k, v in s.items()}, str(path))
        return path

    truncated = write("truncated.safetensors", {k: v for k, v in state.items() if "output_blocks.4.1.proj_out" not in k})
    with pytest.raises(LdmError, match=r"truncated\.safetensors.*UNet.*missing.*up_blocks\.1\.attentions\.1\.proj_out"):
        load_single_file(truncated, original_config=cfg, tokenizer=files["tokenizer"])
    foreign = write("with_controlnet.safetensors", {**state, "control_model.zero_convs.0.0.weight": torch.zeros(4, 4, 1, 1)})
    with pytest.raises(LdmError, match=r"with_controlnet\.safetensors: 1 tensors are not part.*control_model\.zero_convs\.0\.0\.weight"):
        load_single_file(foreign, original_config=cfg, tokenizer=files["tokenizer"])
    no_sidecar = write("no_sidecar.safetensors", state)
    with pytest.raises(LdmError, match=r"no_sidecar\.safetensors: the UNet.*shape mismatches"):  # SD 1.5's architecture by default
        load_single_file(no_sidecar, tokenizer=files["tokenizer"])
    with pytest.raises(LdmError, match="token embeddings but the tokenizer 49408"):  # the default CLIP tokenizer
        load_single_file(files["single"])
    pickled = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": Path("x")}, pickled)
    with pytest.raises(LdmError, match=r"objects\.ckpt: cannot be read as a weights-only checkpoint"):
        read_checkpoint(pickled)
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(LdmError, match="checkpoint file not found"):
        build_generator({"preset": "sd15", "image_size": 64, "pretrained": str(missing)}, ClassRegistry.from_records(DEMO_CLASSES))


def test_the_default_tokenizer_is_clip_vit_l14s_rebuilt_offline():
    tok = clip_vit_l14_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's published ids
    assert tok.pad_token_id == tok.eos_token_id == 49407
