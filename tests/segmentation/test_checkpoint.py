"""Checkpoints load under torch's weights-only unpickler, and only what is allowed loads."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from tisynth.segmentation.checkpoint import CheckpointError, load_checkpoint_file, register_safe_checkpoint_loader


class _Payload:
    """Unpickling this runs code (writes a marker file) — what a malicious checkpoint does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_mmengine_training_checkpoints_load_with_weights_only(trained):
    _, work = trained
    ckpts = sorted(work.glob("*.pth"))
    assert ckpts, "the fixture training wrote no checkpoint"
    for path in ckpts:
        ck = load_checkpoint_file(path, map_location="cpu")
        assert "state_dict" in ck and "message_hub" in ck
        assert ck["meta"]["iter"] > 0
    # the plain torch default (weights_only=True, no allowlist) refuses the same file
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpts[0], map_location="cpu", weights_only=True)


def test_mmengine_uses_the_safe_loader_for_local_paths():
    from mmengine.runner.checkpoint import CheckpointLoader

    register_safe_checkpoint_loader()
    assert CheckpointLoader._get_checkpoint_loader("/some/where/iter_10.pth").__name__ == "load_from_tisynth_local"


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_getattr_is_restricted_to_history_buffer_statistics(tmp_path):
    # mmengine checkpoints need getattr(HistoryBuffer, "<statistics method>"); any other
    # attribute of an allowed class (a step towards code execution) is refused
    from mmengine.logging.history_buffer import HistoryBuffer

    class _Reach:
        def __init__(self, name: str):
            self.name = name

        def __reduce__(self):
            return (getattr, (HistoryBuffer, self.name))

    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save({"x": _Reach("mean")}, good)
    assert load_checkpoint_file(good)["x"] is HistoryBuffer.mean
    torch.save({"x": _Reach("__init__")}, bad)
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint_file(bad)


def test_plain_state_dict_loads(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2, 3)}, path)
    assert torch.equal(load_checkpoint_file(path)["w"], torch.ones(2, 3))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint_file(tmp_path / "nope.pth")
