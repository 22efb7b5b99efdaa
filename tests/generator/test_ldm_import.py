"""Importing the authors' TISynth checkpoint layout (METHOD §2.9): every tensor placed, nothing
missing, the imported model computes what the generator the checkpoint was written from computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.generator.conftest import perturb_zero_inits
from tests.generator.ldm_layout import aia_to_ldm, authors_original_config, sd_single_file, tisynth_checkpoint
from tests.generator.sd15_fixture import fixture_original_config, write_sd15_fixture
from tisynth.classes import ClassRegistry
from tisynth.generator import TISynthGenerator, build_generator
from tisynth.generator.ldm_import import REPORT_FILE, CheckpointImportError, import_checkpoint, main
from tisynth.generator.model import GeneratorError
from tisynth.ingest.demo_scenes import DEMO_CLASSES


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("authors")
    folder = write_sd15_fixture(root / "sd15")
    registry = ClassRegistry.from_records(DEMO_CLASSES)
    # the hand-built reference: the paper's generator on the fixture base with the authors' hint
    # encoding, every zero-initialised tensor given values so that each weight shows in the output
    reference = build_generator({"preset": "sd15", "pretrained": str(folder), "image_size": 64,
                                 "control_encoding": "authors", "aia_heads": 8}, registry, seed=1)
    perturb_zero_inits(reference, std=0.05)
    with torch.no_grad():  # Ref and mask sub-layers must differ for a swap of the two to show
        for layer in reference.aia.values():
            layer.mask_attn.to_out[0].weight.mul_(-3.0)
    state = tisynth_checkpoint(reference)
    ckpt = root / "GID_model.ckpt"
    torch.save({"state_dict": state, "global_step": 1000, "epoch": 3}, ckpt)  # a Lightning checkpoint
    config = root / "cldm_ssl_v15_aia_v0_augmentation.yaml"
    import yaml

    config.write_text(yaml.safe_dump(authors_original_config(fixture_original_config())), encoding="utf-8")
    return {"root": root, "folder": folder, "registry": registry, "reference": reference, "state": state, "ckpt": ckpt,
            "config": config, "tokenizer": folder / "tokenizer"}


def _import(setup: dict, path: Path, out: Path | None = None) -> TISynthGenerator:
    return import_checkpoint(path, setup["registry"], out, original_config=setup["config"], tokenizer=setup["tokenizer"], image_size=64)


def _inputs(model: TISynthGenerator, registry: ClassRegistry) -> tuple:
    g = torch.Generator().manual_seed(7)
    x, ref = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    text = model.encode_prompts(["a satellite image of built-up forest water", ""])
    masks = torch.randint(0, registry.num_classes, (2, 64, 64), generator=g).to(torch.uint8)
    masks[:, :4] = 255
    return x, torch.tensor([50, 800]), text, model.encode_control(masks), ref


def test_the_layout_imports_completely_and_computes_the_reference(setup, tmp_path):
    assert sum(".attn00_ls_trainable." in k for k in setup["state"]) == 10 * 5  # 10 sites x (q, k, v, out w, out b)
    out = tmp_path / "imported"
    model = _import(setup, setup["ckpt"], out)  # raises on any unmapped, missing or mis-shaped tensor
    reference = setup["reference"]
    assert model.control_encoding == "authors" and model.control_channels == 3
    assert [s.name for s in model.sites] == [s.name for s in reference.sites]
    ref_state, got = reference.state_dict(), model.state_dict()
    assert got.keys() == ref_state.keys()
    assert [k for k in got if not torch.equal(got[k], ref_state[k])] == []
    assert model.ref_controlnet.controlnet_cond_embedding.blocks[1].stride == (1, 1)
    assert model.mask_controlnet.controlnet_cond_embedding.blocks[1].stride == (2, 2)
    inputs = _inputs(reference, setup["registry"])
    with torch.no_grad():
        want = reference.predict_noise(*inputs)
        have = model.predict_noise(*inputs)
    torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["tensors"] == len(setup["state"]) and len(report["aia_sites"]) == 10
    # the saved folder keeps the authors' encoding, and a load checks it against the hint channels
    loaded = TISynthGenerator.from_pretrained(out)
    assert loaded.control_encoding == "authors"
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_noise(*inputs), want, rtol=1e-5, atol=1e-5)
    meta = json.loads((out / "tisynth_generator.json").read_text())
    meta["config"]["control_encoding"] = "onehot"
    (out / "tisynth_generator.json").write_text(json.dumps(meta))
    with pytest.raises(GeneratorError, match="takes 3 control channels.*control_encoding 'onehot' needs 5"):
        TISynthGenerator.from_pretrained(out)


def _save(setup: dict, name: str, state: dict) -> Path:
    path = setup["root"] / name
    torch.save({"state_dict": state}, path)
    return path


def test_truncated_altered_and_foreign_checkpoints_are_refused_with_the_list(setup):
    state = setup["state"]
    cut = _save(setup, "cut.ckpt", {k: v for k, v in state.items() if not k.startswith("control_model.zero_convs.3.")})
    with pytest.raises(CheckpointImportError, match=r"cut\.ckpt: the ControlNet \(control_model\) weights.*missing 2:.*controlnet_down_blocks\.3\.weight"):
        _import(setup, cut)
    extra_key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn02_extra_trainable.to_q.weight"
    extra = _save(setup, "extra.ckpt", {**state, extra_key: torch.zeros(32, 32)})
    with pytest.raises(CheckpointImportError, match=rf"extra\.ckpt: the UNet .*not in the model 1: \['{extra_key} \(as up_blocks"):
        _import(setup, extra)
    bad_key = "model.diffusion_model.output_blocks.7.1.transformer_blocks.0.attn00_ls_trainable.to_k.weight"
    shape = _save(setup, "shape.ckpt", {**state, bad_key: state[bad_key][:, :16].clone()})
    with pytest.raises(CheckpointImportError, match=r"shape\.ckpt: the AIA layers.*shape mismatches 1:.*up_2_1\.ref_attn\.to_k\.weight"):
        _import(setup, shape)
    no_aia = _save(setup, "no_aia.ckpt", {k: v for k, v in state.items() if "_trainable." not in k})
    with pytest.raises(CheckpointImportError, match=r"no_aia\.ckpt: no AIA layers"):
        _import(setup, no_aia)
    mid_missing = _save(setup, "no_mid.ckpt", {k: v for k, v in state.items() if not k.startswith("model.diffusion_model.middle_block.1.transformer_blocks.0.norm01")})
    with pytest.raises(CheckpointImportError, match=r"missing 2: \['mid_0\.mask_norm\.weight', 'mid_0\.mask_norm\.bias'\]"):
        _import(setup, mid_missing)
    reference = setup["reference"]
    plain_sd = _save(setup, "v1-5-pruned.ckpt", sd_single_file(reference.unet, reference.autoencoder.vae, reference.text_encoder))
    with pytest.raises(CheckpointImportError, match=r"v1-5-pruned\.ckpt: no control_model\.\* tensors.*not a TISynth checkpoint"):
        _import(setup, plain_sd)
    betas = _save(setup, "other_schedule.ckpt", {**state, "betas": torch.linspace(1e-4, 0.02, 1000)})
    with pytest.raises(CheckpointImportError, match="betas buffer is not the schedule"):
        _import(setup, betas)
    rgb = dict(state)
    rgb["control_model.input_hint_block.0.weight"] = torch.zeros(16, 6, 3, 3)
    with pytest.raises(CheckpointImportError, match="takes 6 hint channels; the authors' encoding .* has 3"):
        _import(setup, _save(setup, "onehot_hint.ckpt", rgb))
    assert len(aia_to_ldm(reference)) == 10 * 14


def test_the_command_line_imports_and_reports_errors(setup, tmp_path, capsys):
    classes = tmp_path / "classes.csv"
    classes.write_text("id,name,r,g,b,ignore\n" + "".join(
        f"{c['id']},{c['name']},{c['color'][0]},{c['color'][1]},{c['color'][2]},{int(c['name'] == 'no-data')}\n" for c in DEMO_CLASSES))
    args = ["--classes", str(classes), "--original-config", str(setup["config"]), "--tokenizer", str(setup["tokenizer"]), "--image-size", "64"]
    assert main([str(setup["ckpt"]), str(tmp_path / "gen"), *args]) == 0
    assert "control_encoding authors" in capsys.readouterr().out
    assert TISynthGenerator.from_pretrained(tmp_path / "gen").control_encoding == "authors"
    assert main([str(tmp_path / "missing.ckpt"), str(tmp_path / "gen2"), *args]) == 2
    assert "missing.ckpt: checkpoint file not found" in capsys.readouterr().err
    # `python -m tisynth import-checkpoint` reaches this command, not `kedro run`
    done = subprocess.run([sys.executable, "-m", "tisynth", "import-checkpoint", "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "authors' TISynth checkpoint" in done.stdout
