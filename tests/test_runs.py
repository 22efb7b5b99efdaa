"""The resumable-run primitive: fingerprints, the three policies, completion markers, hashers."""

from __future__ import annotations

import json

import pytest
import torch

from tisynth.runs import MANIFEST, RunFolder, RunFolderError, settings_digest, weights_digest


def _fill(root, name="out", files=("a.png", "b.png")):
    (root / name).mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / name / f).write_bytes(f.encode())


def test_same_fingerprint_resumes_and_keeps_finished_work(tmp_path):
    first = RunFolder.open(tmp_path / "run", {"lr": 1e-3, "steps": 5})
    assert not first.resumed and json.loads((tmp_path / "run" / MANIFEST).read_text())["fingerprint"] == {"lr": 1e-3, "steps": 5}
    _fill(tmp_path / "run")
    again = RunFolder.open(tmp_path / "run", {"steps": 5, "lr": 1e-3})  # key order does not matter
    assert again.resumed and again.superseded is None
    assert sorted(p.name for p in (tmp_path / "run" / "out").iterdir()) == ["a.png", "b.png"]


def test_another_fingerprint_sets_the_old_output_aside_byte_for_byte(tmp_path):
    root = tmp_path / "run"
    RunFolder.open(root, "v1")
    _fill(root)
    (root / "notes.txt").write_text("someone else's file")
    opened = RunFolder.open(root, "v2", entries=["out"])
    assert not opened.resumed and not (root / "out").exists()
    assert (root / "notes.txt").read_text() == "someone else's file"  # not the run's: never moved
    assert opened.superseded.parent == root / "superseded"
    assert (opened.superseded / "out" / "a.png").read_bytes() == b"a.png"
    assert json.loads((opened.superseded / MANIFEST).read_text())["fingerprint"] == "v1"
    # going back to v1 and away again keeps both earlier sets
    _fill(root, files=("c.png",))
    RunFolder.open(root, "v1", entries=["out"])
    _fill(root, files=("d.png",))
    RunFolder.open(root, "v2", entries=["out"])
    assert len(list((root / "superseded").iterdir())) == 3


def test_output_without_a_manifest_is_set_aside_not_trusted(tmp_path):
    root = tmp_path / "run"
    _fill(root)
    opened = RunFolder.open(root, "v1")
    assert not opened.resumed and (opened.superseded / "out" / "b.png").is_file()
    assert json.loads((opened.superseded / MANIFEST).read_text()) == {"fingerprint": None}


def test_refuse_touches_nothing_and_clear_deletes_only_when_asked(tmp_path):
    root = tmp_path / "run"
    RunFolder.open(root, "v1")
    _fill(root)
    with pytest.raises(RunFolderError, match="another run's output"):
        RunFolder.open(root, "v2", policy="refuse")
    assert json.loads((root / MANIFEST).read_text())["fingerprint"] == "v1" and (root / "out" / "a.png").is_file()
    RunFolder.open(root, "v2", policy="clear")
    assert not (root / "out").exists() and not (root / "superseded").exists()
    with pytest.raises(RunFolderError, match="unknown run folder policy 'wipe'"):
        RunFolder.open(root, "v3", policy="wipe")


def test_an_empty_folder_is_not_another_runs_output(tmp_path):
    (tmp_path / "run" / "out").mkdir(parents=True)
    opened = RunFolder.open(tmp_path / "run", "v1", policy="refuse")
    assert not opened.resumed and opened.superseded is None


def test_a_legacy_manifest_with_the_same_fingerprint_is_adopted(tmp_path):
    root = tmp_path / "run"
    _fill(root)
    (root / "fingerprint.json").write_text(json.dumps({"fingerprint": "abc"}))
    assert RunFolder.open(root, "abc", legacy_manifest="fingerprint.json").resumed
    assert (root / "out" / "a.png").is_file() and json.loads((root / MANIFEST).read_text())["fingerprint"] == "abc"


def test_completion_marker_belongs_to_its_fingerprint(tmp_path):
    run = RunFolder.open(tmp_path / "run", "v1")
    assert run.done() is None
    run.mark_done({"checkpoint": "iter_10.pth"})
    assert RunFolder.open(tmp_path / "run", "v1").done()["checkpoint"] == "iter_10.pth"
    (tmp_path / "run" / "done.json").write_text("{torn")
    assert run.done() is None  # a torn marker is no marker


def test_hashers_are_stable_and_sensitive():
    assert settings_digest({"a": 1, "b": [1, 2]}) == settings_digest({"b": [1, 2], "a": 1})
    assert settings_digest({"a": 1}) != settings_digest({"a": 2})
    assert len(settings_digest("x", length=12)) == 12
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    d = weights_digest(net)
    copy = torch.nn.Linear(3, 2)
    assert weights_digest(copy) != d
    copy.load_state_dict(net.state_dict())
    assert d == weights_digest(net.state_dict()) == weights_digest(copy)
    assert weights_digest(net, extra={"scale": 1}) != d
    with torch.no_grad():
        net.bias[0] += 1e-3
    assert weights_digest(net) != d


def test_resuming_removes_temporaries_of_interrupted_writes_and_nothing_else(tmp_path):
    root = tmp_path / "run"
    RunFolder.open(root, "v1", entries=["out"])
    _fill(root)
    # a run killed inside atomic writes leaves hidden temporaries: in its output and of its manifest
    (root / "out" / "deep").mkdir()
    left = [root / "out" / ".a.0badc0de.tmp.png", root / "out" / "deep" / ".c.12345678.tmp.npy",
            root / ".run.0badc0de.tmp.json"]
    kept = [root / "out" / "notes.tmp.txt", root / ".other.0badc0de.tmp.png"]  # not hidden / not ours
    for p in left + kept:
        p.write_bytes(b"partial")
    again = RunFolder.open(root, "v1", entries=["out"])
    assert again.resumed
    assert [p for p in left if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in (root / "out").iterdir()) == ["a.png", "b.png", "deep", "notes.tmp.txt"]


def test_item_records_pending_adoption_and_changed_inputs(tmp_path):
    from tisynth.runs import ItemRecords

    records = ItemRecords(tmp_path)
    out = tmp_path / "images" / "a.png"
    assert not records.is_done("a", out, "d1")  # no output
    records.begin("a", out)
    assert records.read("a") == ItemRecords.PENDING
    out.parent.mkdir()
    out.write_bytes(b"made from d1")
    assert not records.is_done("a", out, "d1")  # killed before its record: made again
    records.finish("a", "d1")
    assert records.is_done("a", out, "d1") and not records.is_done("a", out, "d2")
    # inputs changed: the old output is set aside, untouched, before it is made again
    records.begin("a", out)
    assert not out.exists()
    assert (tmp_path / "superseded" / "changed-inputs" / "d1" / "images" / "a.png").read_bytes() == b"made from d1"
    # an output with no record (an earlier version kept none) is adopted and recorded
    other = tmp_path / "images" / "b.png"
    other.write_bytes(b"old")
    assert records.is_done("b", other, "d3") and records.read("b") == "d3"
