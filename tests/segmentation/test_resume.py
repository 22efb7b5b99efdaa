"""An interrupted training resumes from its last checkpoint instead of restarting."""

from __future__ import annotations

import json

import pytest
from mmengine.hooks import Hook

from .toydata import manifest_pairs, tiny_config
from tisynth.segmentation.checkpoint import load_checkpoint_file
from tisynth.segmentation.train import train_segmenter


class _Interrupted(RuntimeError):
    pass


class StopAt(Hook):
    """Simulates a crash after iteration ``n`` (runs after the checkpoint hook)."""

    def __init__(self, n: int):
        self.n = n

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.n:
            raise _Interrupted(f"stopped after iteration {self.n}")


class Record(Hook):
    """Records the iteration numbers that actually run."""

    def __init__(self):
        self.iters: list[int] = []
        self.first_lr: float | None = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.iters.append(runner.iter + 1)
        if self.first_lr is None:
            self.first_lr = float(runner.optim_wrapper.get_lr()["lr"][0])


def test_interrupted_training_resumes(tmp_path, toy_tiles, registry):
    tiles, manifest = toy_tiles
    train, val = manifest_pairs(tiles.root, manifest, "train"), manifest_pairs(tiles.root, manifest, "val")
    cfg = tiny_config(train={"iterations": 12, "val_interval": 4, "checkpoint_interval": 4, "log_interval": 4})
    work = tmp_path / "job"

    first = Record()
    with pytest.raises(_Interrupted):
        train_segmenter(cfg, registry, train, val, work, label="crash", hooks=[first, StopAt(6)])
    assert first.iters == [1, 2, 3, 4, 5, 6]
    assert not (work / "done.json").exists()
    ckpt = (work / "last_checkpoint").read_text().strip()
    assert ckpt.endswith("iter_4.pth")
    saved_state = load_checkpoint_file(ckpt)

    second = Record()
    seg = train_segmenter(cfg, registry, train, val, work, label="resume", hooks=[second])
    # continues after the checkpoint of iteration 4: iterations 5..12 run, 1..4 do not
    assert second.iters == list(range(5, 13))
    assert seg.training_info["resumed_from"] == 4
    assert seg.training_info["iterations"] == 12
    # the scheduler resumed too: the first lr after resuming is the poly value of iteration 4, not the base lr
    base_lr = cfg["optimizer"]["lr"]
    assert second.first_lr == pytest.approx(saved_state["optimizer"]["param_groups"][0]["lr"], rel=1e-6)
    assert second.first_lr < base_lr
    # validation history has one entry per validation, none lost with the crash
    assert [r["iter"] for r in seg.training_info["val_history"]] == [4, 8, 12]
    assert json.loads((work / "done.json").read_text())["iterations"] == 12
