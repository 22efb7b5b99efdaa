"""Damaged files are refused with their path: weight files cut short, checkpoints, manifest paths."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tisynth.io import DataError, TileSet
from tisynth.segmentation.checkpoint import CheckpointError, load_checkpoint_file
from tisynth.weights import WeightsFileError, read_safetensors, read_torch


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_safetensors_and_torch_files_are_refused_with_their_path(tmp_path):
    state = {"w": torch.randn(64, 64)}
    save_file(state, tmp_path / "a.safetensors")
    torch.save(state, tmp_path / "b.pt")
    assert torch.equal(read_safetensors(tmp_path / "a.safetensors")["w"], state["w"])
    assert torch.equal(read_torch(tmp_path / "b.pt")["w"], state["w"])
    _cut(tmp_path / "a.safetensors")
    _cut(tmp_path / "b.pt")
    with pytest.raises(WeightsFileError, match=r"a\.safetensors: cannot be read as safetensors, truncated or corrupt"):
        read_safetensors(tmp_path / "a.safetensors")
    with pytest.raises(WeightsFileError, match=r"b\.pt: cannot be read with torch.load.*truncated or corrupt"):
        read_torch(tmp_path / "b.pt")
    with pytest.raises(WeightsFileError, match="not found"):
        read_safetensors(tmp_path / "missing.safetensors")


def test_a_truncated_segmenter_checkpoint_is_refused(tmp_path):
    path = tmp_path / "iter_4.pth"
    torch.save({"state_dict": {"w": torch.randn(32, 32)}, "meta": {"iter": 4}}, path)
    assert load_checkpoint_file(path)["meta"]["iter"] == 4
    _cut(path)
    with pytest.raises(CheckpointError, match="iter_4.pth: cannot be read as a checkpoint, truncated or corrupt"):
        load_checkpoint_file(path)


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "images/../../x.png"])
def test_manifest_paths_cannot_leave_the_tile_folder(tmp_path, bad):
    tiles = TileSet(tmp_path)
    assert tiles.path("images/a.png") == tmp_path / "images" / "a.png"
    assert tiles.path(tmp_path / "images" / "a.png") == tmp_path / "images" / "a.png"  # absolute, inside
    with pytest.raises(DataError, match="leaves the tile folder"):
        tiles.read_image(bad)
