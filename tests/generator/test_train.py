"""Training: which parameters each stage trains, checkpoints and exact resumption, callbacks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tisynth.generator.model import GeneratorError
from tisynth.generator import TileDataset, build_generator, latest_checkpoint, train_generator
from tisynth.generator.train import TrainingError
from tisynth.io import TileSet, write_image

from .conftest import PAPER_PATH, perturb_zero_inits

FAST = {"batch_size": 4, "learning_rate": 1e-3, "progress": False, "checkpoint_every": 0, "weight_decay": 0.0}

# the tiny layout: ControlNet outputs 0..5 (0 conv_in, 1 d0.resnet, 2 d0.down, 3 d1.resnet,
# 4 d1.down, 5 d2.resnet); decoder AIA sites consume 0..3, the middle site the middle output
TINY_UNUSED_WITH_MID = ("controlnet_down_blocks.4.", "controlnet_down_blocks.5.")
TINY_UNUSED_WITHOUT_MID = TINY_UNUSED_WITH_MID + (
    "down_blocks.1.downsamplers.", "down_blocks.2.", "mid_block.", "controlnet_mid_block.",
)  # fmt: skip


def _expected(model, stage, unused=()):
    names = [n for n, _ in model.named_parameters()]
    if stage == "A":
        return {n for n in names if n.startswith("mask_controlnet.")}
    if stage == "base":
        return {n for n in names if n.startswith("unet.")}
    ref = {
        n for n in names if n.startswith("ref_controlnet.") and not any(n.startswith("ref_controlnet." + u) for u in unused)
    }
    return ref | {n for n in names if n.startswith("aia.")}


@pytest.mark.parametrize(
    ("stage", "train_mid", "unused"),
    [("A", True, ()), ("B", True, TINY_UNUSED_WITH_MID), ("B", False, TINY_UNUSED_WITHOUT_MID), ("base", True, ())],
)
def test_one_step_changes_exactly_the_stage_parameters(registry, tiles, tmp_path, stage, train_mid, unused):
    model = build_generator({"preset": "tiny", **PAPER_PATH, "train_mid_aia": train_mid}, registry)
    names = set(model.trainable_parameter_names(stage))
    assert names == _expected(model, stage, unused)
    if stage == "B":
        assert any(n.startswith("aia.mid_0.") for n in names) == train_mid
        assert not any(n.startswith("mask_controlnet.") for n in names)
    # zero inits (zero convs, AIA to_out) block some gradients at the very first step; give them
    # small values so that every trainable tensor receives a gradient, as in a trained model
    perturb_zero_inits(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = {**FAST, "stage": stage, "steps": 1, "hflip": 0.5, "ref_augment": {"p": 0.5}}
    train_generator(model, tiles, cfg, tmp_path / "ckpt")
    after = dict(model.named_parameters())
    unchanged = sorted(n for n in names if torch.equal(after[n], before[n]))
    changed_frozen = sorted(n for n in before if n not in names and not torch.equal(after[n], before[n]))
    assert unchanged == [], unchanged[:10]
    assert changed_frozen == [], changed_frozen[:10]
    assert not any(p.requires_grad for p in model.parameters())  # frozen again afterwards


def _run(registry, tiles, tmp_path, steps, callback=None, **extra):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry, seed=0)
    perturb_zero_inits(model.mask_controlnet)  # as after stage A
    cfg = {
        **FAST,
        "stage": "B",
        "steps": steps,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "checkpoint_every": 3,
        "hflip": 0.5,
        "ref_augment": {"p": 0.5},
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
        "max_grad_norm": 1.0,
        "weight_decay": 0.01,
        **extra,
    }
    return model, train_generator(model, tiles, cfg, tmp_path, callback=callback)


def test_interrupted_run_resumes_to_the_same_losses(registry, tiles, tmp_path):
    steps = 8
    model_a, (_, reference) = _run(registry, tiles, tmp_path / "a", steps)
    assert [h["step"] for h in reference] == list(range(1, steps + 1))

    class Interrupt(Exception):
        pass

    def crash(event):
        if event["event"] == "step" and event["step"] == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(registry, tiles, tmp_path / "b", steps, callback=crash, log_every=1)
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt is not None and ckpt.name == "step-00000003"
    assert not list((tmp_path / "b").glob(".tmp-*"))  # only complete checkpoints are visible
    model_b, (_, resumed) = _run(registry, tiles, tmp_path / "b", steps)  # a fresh process would rebuild the model
    assert [h["loss"] for h in resumed] == [h["loss"] for h in reference]
    assert [h["lr"] for h in resumed] == [h["lr"] for h in reference]
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    # a finished run resumes to "nothing left to do"
    _, (_, again) = _run(registry, tiles, tmp_path / "b", steps)
    assert again == reference
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["step-00000006", "step-00000008"]  # keep 2


def test_checkpoint_of_another_stage_is_refused(registry, tiles, tmp_path):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
    train_generator(model, tiles, {**FAST, "stage": "A", "steps": 1}, tmp_path)
    with pytest.raises(TrainingError, match="stage A"):
        train_generator(model, tiles, {**FAST, "stage": "B", "steps": 2}, tmp_path)


def test_callback_receives_metrics_and_sample_grids(registry, tiles, tmp_path):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
    events = []
    cfg = {**FAST, "stage": "A", "steps": 2, "log_every": 1, "sample_every": 2, "sample_items": 2, "sample": {"steps": 2}}
    _, history = train_generator(model, tiles, cfg, tmp_path, callback=events.append)
    kinds = [e["event"] for e in events]
    assert kinds == ["step", "step", "samples", "checkpoint"]
    step = events[0]
    assert step["effective_batch_size"] == 4 and step["lr"] == 1e-3 and np.isfinite(step["loss"])
    assert step["loss"] == history[0]["loss"]
    grid = events[2]["grid"]
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 3 * 64  # 2 rows, mask | Ref | sample


def test_tile_dataset_reads_a_manifest_split(registry, tiles, tmp_path):
    rows = []
    for i, t in enumerate(tiles[:4]):
        write_image(tmp_path / "images" / f"t{i}.png", t["image"])
        write_image(tmp_path / "masks" / f"t{i}.png", t["mask"])
        rows.append({"name": f"t{i}", "split": "train" if i < 3 else "val", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png", "prompt": t["prompt"]})
    rows.append({"name": "u", "split": "train", "image": "images/t0.png", "mask": None, "prompt": ""})
    ds = TileDataset(TileSet(tmp_path), pd.DataFrame(rows), split="train")
    assert len(ds) == 3
    item = ds[1]
    assert np.array_equal(item["image"], tiles[1]["image"]) and np.array_equal(item["mask"], tiles[1]["mask"])
    assert item["prompt"] == tiles[1]["prompt"]
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
    _, history = train_generator(model, ds, {**FAST, "stage": "A", "steps": 1}, tmp_path / "ckpt")
    assert len(history) == 1


def test_bad_training_settings_are_named(registry, tiles, tmp_path):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
    with pytest.raises(TrainingError, match="unknown training key"):
        train_generator(model, tiles, {"stage": "B", "lr": 1}, tmp_path)
    with pytest.raises(TrainingError, match="stage"):
        train_generator(model, tiles, {"stage": "C"}, tmp_path)
    bad = [dict(tiles[0], image=tiles[0]["image"][:60])]
    with pytest.raises(Exception, match="mask shape|not divisible"):
        train_generator(model, bad, {**FAST, "stage": "A", "steps": 1}, tmp_path)


@pytest.mark.parametrize("stage", ["A", "B"])
def test_train_unet_decoder_option_adds_exactly_the_decoder(registry, stage):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
    plain = set(model.trainable_parameter_names(stage))
    more = set(model.trainable_parameter_names(stage, train_unet_decoder=True))
    added = more - plain
    prefixes = ("unet.mid_block.", "unet.up_blocks.", "unet.conv_norm_out.", "unet.conv_out.")
    assert plain < more and all(n.startswith(prefixes) for n in added)
    assert {n for n, _ in model.named_parameters() if n.startswith(prefixes)} == added
    with pytest.raises(GeneratorError, match="stages A and B"):
        model.trainable_parameter_names("base", train_unet_decoder=True)


def test_gradient_checkpointing_gives_the_same_step(registry, tiles, tmp_path):
    results = []
    for ckpt in (False, True):
        model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
        perturb_zero_inits(model)
        cfg = {**FAST, "stage": "B", "steps": 2, "gradient_checkpointing": ckpt, "log_every": 1}
        seen = []
        blocks = (model.unet.up_blocks[1], model.ref_controlnet.down_blocks[0])
        _, history = train_generator(model, tiles, cfg, tmp_path / str(ckpt), callback=lambda e: seen.append([b.gradient_checkpointing for b in blocks]))
        assert seen[0] == [ckpt, ckpt]  # really on (or off) during training
        assert [b.gradient_checkpointing for b in blocks] == [False, False]  # and off afterwards
        results.append(([h["loss"] for h in history], {n: p.detach().clone() for n, p in model.aia.named_parameters()}))
    (la, pa), (lb, pb) = results
    assert np.allclose(la, lb, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(pa[n], pb[n], atol=1e-6) for n in pa)


def test_bf16_mixed_precision_keeps_trainable_weights_fp32(registry, tiles, tmp_path):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
    perturb_zero_inits(model.mask_controlnet)
    _, history = train_generator(model, tiles, {**FAST, "stage": "B", "steps": 2, "mixed_precision": "bf16"}, tmp_path)
    assert all(np.isfinite(h["loss"]) for h in history)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # a later fp32 run in the same process works (accelerate state is re-created)
    train_generator(model, tiles, {**FAST, "stage": "B", "steps": 1}, tmp_path / "fp32")


def test_mlflow_callback_logs_only_inside_a_run(monkeypatch):
    import mlflow

    from tisynth.generator import MlflowCallback

    calls = []
    monkeypatch.setattr(mlflow, "log_metrics", lambda metrics, step: calls.append(("metrics", metrics, step)))
    monkeypatch.setattr(mlflow, "log_image", lambda image, path: calls.append(("image", image.shape, path)))
    cb = MlflowCallback(prefix="gen_B/")
    event = {"event": "step", "step": 3, "loss": 0.5, "lr": 1e-4, "effective_batch_size": 8, "samples_per_second": 2.0}
    monkeypatch.setattr(mlflow, "active_run", lambda: None)
    cb(event)
    assert calls == []
    monkeypatch.setattr(mlflow, "active_run", lambda: object())
    cb(event)
    cb({"event": "samples", "step": 4, "grid": np.zeros((8, 8, 3), np.uint8)})
    assert calls[0] == ("metrics", {"gen_B/loss": 0.5, "gen_B/lr": 1e-4, "gen_B/effective_batch_size": 8.0, "gen_B/samples_per_second": 2.0}, 3)
    assert calls[1] == ("image", (8, 8, 3), "gen_B/samples/step_00000004.png")


@pytest.mark.parametrize("from_unet", [True, False])
def test_stage_a_starts_from_the_base_as_trained(registry, tiles, tmp_path, from_unet):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry)
    train_generator(model, tiles, {**FAST, "stage": "base", "steps": 2}, tmp_path / "base")
    cn, unet = model.mask_controlnet.down_blocks.state_dict(), model.unet.down_blocks.state_dict()
    assert max(float((cn[k] - unet[k]).abs().max()) for k in unet) > 1e-4  # the build-time copy is stale
    # a vanishing learning rate: after one step the ControlNet is (to 1e-9) where stage A started it
    cfg = {**FAST, "stage": "A", "steps": 1, "learning_rate": 1e-12, "controlnet_from_unet": from_unet}
    train_generator(model, tiles, cfg, tmp_path / "A")
    cn = model.mask_controlnet.down_blocks.state_dict()
    gap = max(float((cn[k] - unet[k]).abs().max()) for k in unet)
    assert (gap < 1e-9) == from_unet, gap


def test_a_truncated_generator_checkpoint_stops_the_resume(registry, tiles, tmp_path):
    from tisynth.weights import WeightsFileError

    cfg = {"stage": "base", "steps": 2, "batch_size": 2, "learning_rate": 1e-3, "progress": False,
           "checkpoint_every": 2, "seed": 0}
    train_generator(build_generator({"preset": "tiny"}, registry, seed=0), tiles, cfg, tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    weights = ckpt / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # a damaged copy
    with pytest.raises(WeightsFileError, match="trainable.safetensors: cannot be read"):
        train_generator(build_generator({"preset": "tiny"}, registry, seed=0), tiles, {**cfg, "steps": 4}, tmp_path)
