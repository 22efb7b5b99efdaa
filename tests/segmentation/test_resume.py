"""An interrupted training resumes from its last checkpoint instead of restarting, wherever the project now lies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mmengine.hooks import Hook

from .toydata import manifest_pairs, tiny_config
from tisynth.io import DataError, read_raster, write_image
from tisynth.segmentation.checkpoint import load_checkpoint_file
from tisynth.segmentation.config import SegmenterConfig, fingerprint
from tisynth.segmentation.pairs import Pair
from tisynth.segmentation.train import job_spec, train_segmenter, work_dir_for


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


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_copied_project_resumes_its_segmenter_and_leaves_the_original_alone(tmp_path, toy_tiles, registry):
    tiles, manifest = toy_tiles
    # long enough for val mIoU to improve after the restart, so mmengine deletes the best it recorded
    cfg = tiny_config(train={"iterations": 40, "val_interval": 10, "checkpoint_interval": 10, "log_interval": 10})

    def pairs(root: Path) -> tuple[list, list]:
        return manifest_pairs(root, manifest, "train"), manifest_pairs(root, manifest, "val")

    old = tmp_path / "old"
    shutil.copytree(tiles.root, old / "tiles")
    train, val = pairs(old / "tiles")
    work = work_dir_for(old / "work", "real_only", SegmenterConfig.from_params(cfg), registry, train, val)
    # stopped after the checkpoint of iteration 20, which records the best so far by its path
    with pytest.raises(_Interrupted):
        train_segmenter(cfg, registry, train, val, work, label="crash", hooks=[StopAt(25)])
    (best,) = work.glob("best_mIoU_iter_*.pth")
    assert load_checkpoint_file(work / "iter_20.pth")["message_hub"]["runtime_info"]["best_ckpt"] == str(best)
    original = _snapshot(old)

    # the whole project is copied elsewhere (plain copy: new modification times too)
    new = tmp_path / "new"
    shutil.copytree(old, new, copy_function=shutil.copy)
    train2, val2 = pairs(new / "tiles")
    work2 = work_dir_for(new / "work", "real_only", SegmenterConfig.from_params(cfg), registry, train2, val2)
    assert work2.name == work.name  # the same job: the tiles hold the same bytes
    record = Record()
    seg = train_segmenter(cfg, registry, train2, val2, work2, label="copy", hooks=[record])
    assert record.iters == list(range(21, 41))  # resumed, not restarted
    assert Path(seg.training_info["checkpoint"]).name != best.name  # a better one replaced it in the copy
    assert Path(seg.training_info["checkpoint"]).parent == work2
    done = json.loads((work2 / "done.json").read_text())
    assert Path(done["checkpoint"]).parent == work2
    assert _snapshot(old) == original  # nothing of the original was read back into, moved or deleted

    # finished work found from a third place: loads the copy's own checkpoint
    third = tmp_path / "third"
    shutil.move(new, third)
    train3, val3 = pairs(third / "tiles")
    work3 = work_dir_for(third / "work", "real_only", SegmenterConfig.from_params(cfg), registry, train3, val3)
    again = train_segmenter(cfg, registry, train3, val3, work3, label="moved")
    assert again.training_info["reloaded"] and Path(again.training_info["checkpoint"]).parent == work3

    # a tile rewritten in place is another job, whatever its path
    mask = Path(train3[0].mask)
    array = read_raster(mask).copy()
    array[0, 0] = (int(array[0, 0]) + 1) % registry.num_classes
    write_image(mask, array)
    changed = work_dir_for(third / "work", "real_only", SegmenterConfig.from_params(cfg), registry, train3, val3)
    assert changed.name != work3.name


def test_a_job_whose_tile_is_missing_names_the_file(tmp_path, toy_tiles, registry):
    tiles, manifest = toy_tiles
    train = manifest_pairs(tiles.root, manifest, "train")
    gone = Pair(train[0].image, str(tmp_path / "nowhere.png"))
    with pytest.raises(DataError, match="nowhere.png"):
        work_dir_for(tmp_path, "real_only", SegmenterConfig.from_params(tiny_config()), registry, [gone], None)


def test_a_job_folder_named_by_tile_paths_is_adopted_not_retrained(tmp_path, trained, toy_tiles, registry):
    # earlier versions named a job by its tiles' paths; such a folder must not be trained again
    _, fixture_work = trained
    tiles, manifest = toy_tiles
    cfg = SegmenterConfig.from_params(tiny_config())
    train, val = manifest_pairs(tiles.root, manifest, "train"), manifest_pairs(tiles.root, manifest, "val")
    path_fp = fingerprint(job_spec(cfg, registry, train, val, None, None))
    legacy = tmp_path / f"real_only-{path_fp}"
    shutil.copytree(fixture_work, legacy)
    for name in ("run.json", "done.json"):
        record = json.loads((legacy / name).read_text())
        (legacy / name).write_text(json.dumps({**record, "fingerprint": path_fp}))
    files = sorted(p.name for p in legacy.iterdir())

    work = work_dir_for(tmp_path, "real_only", cfg, registry, train, val)
    assert work.name != legacy.name and not legacy.exists()
    assert sorted(p.name for p in work.iterdir()) == files
    seg = train_segmenter(cfg, registry, train, val, work, label="adopted")
    assert seg.training_info["reloaded"] and Path(seg.training_info["checkpoint"]).parent == work

    # a folder of another job under a path name is left where it is
    other = tmp_path / "other"
    shutil.copytree(fixture_work, other / f"real_only-{path_fp}")
    (other / f"real_only-{path_fp}" / "run.json").write_text(json.dumps({"fingerprint": "something else"}))
    fresh = work_dir_for(other, "real_only", cfg, registry, train, val)
    assert not fresh.exists() and (other / f"real_only-{path_fp}").is_dir()


def test_a_moved_unfinished_job_resumes_from_its_own_checkpoint_files(tmp_path):
    from tisynth.segmentation.train import _relocate_last_checkpoint

    work = tmp_path / "job"
    work.mkdir()
    (work / "iter_20.pth").write_bytes(b"x")
    (work / "last_checkpoint").write_text("/where/it/was/job/iter_20.pth")
    _relocate_last_checkpoint(work)
    assert (work / "last_checkpoint").read_text() == str(work / "iter_20.pth")
    _relocate_last_checkpoint(work)  # already local: unchanged
    assert (work / "last_checkpoint").read_text() == str(work / "iter_20.pth")
