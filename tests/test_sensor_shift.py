"""The sensor-shift target domain: a seeded transform of a disjoint share of the tiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.test_ingest import make_folder, run_ingest
from tisynth.ingest.sensor_shift import SensorShift, SensorShiftError, main, make_sensor_shift_datasets
from tisynth.io import read_image


def test_the_transform_is_seeded_coarser_and_shifts_the_colours():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    shift = SensorShift()
    a, b, c = shift.apply(img, 1), shift.apply(img, 1), shift.apply(img, 2)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # the noise follows the seed
    hf = lambda x: np.abs(np.diff(x.astype(float), axis=1)).mean()  # noqa: E731 - high-frequency energy
    assert hf(a) < 0.5 * hf(img)  # a coarser ground resolution
    quiet = SensorShift(noise_std=0.0, resolution_factor=1.0, haze=0.0, gamma=1.0)
    grey = np.full((8, 8, 3), 100, np.uint8)
    assert quiet.apply(grey, 0)[0, 0].tolist() == [91, 95, 110]  # gain x + offset per band
    with pytest.raises(SensorShiftError, match="H×W×3 uint8"):
        shift.apply(img[..., 0], 0)


@pytest.mark.parametrize(("block", "message"), [
    ({"gian": [1, 1, 1]}, "gian: did you mean gain"),
    ({"gain": [1, 1]}, "needs 3 values"),
    ({"target_fraction": 1.0}, "target_fraction"),
    ({"resolution_factor": 0.5}, "resolution_factor"),
])
def test_bad_settings_are_refused(block, message):
    with pytest.raises(SensorShiftError, match=message):
        SensorShift.from_params(block)


def test_source_and_target_are_disjoint_folder_datasets_and_reruns_resume(tmp_path):
    root = make_folder(tmp_path / "ds", n=30)
    out = tmp_path / "shifted"
    shift = SensorShift.from_params({"target_fraction": 0.3, "seed": 5})
    counts = make_sensor_shift_datasets(root, out, shift, preview_tiles=3)
    split = pd.read_csv(root / "split.csv")
    src, tgt = pd.read_csv(out / "source" / "split.csv"), pd.read_csv(out / "target" / "split.csv")
    assert counts == {"source": len(src), "target": len(tgt)}
    assert set(src["name"]).isdisjoint(tgt["name"]) and set(src["name"]) | set(tgt["name"]) == set(split["name"])
    for name, group in split.groupby("split"):  # the same share of every split
        assert (tgt["split"] == name).sum() == round(0.3 * len(group))
    for name in tgt["name"]:
        original = read_image(root / "images" / f"{name}.jpg")
        shifted = read_image(out / "target" / "images" / f"{name}.png")
        assert shifted.shape == original.shape and np.abs(shifted.astype(int) - original).mean() > 5
        assert (out / "target" / "masks" / f"{name}.png").read_bytes() == (root / "masks" / f"{name}.png").read_bytes()
    for name in src["name"]:
        assert np.array_equal(read_image(out / "source" / "images" / f"{name}.png"), read_image(root / "images" / f"{name}.jpg"))
    assert (out / "sensor_shift.png").stat().st_size > 0
    # both sides ingest as folder datasets with the source's classes
    reg_s, man_s, _ = run_ingest(out / "source", tmp_path / "tiles_s")
    reg_t, man_t, _ = run_ingest(out / "target", tmp_path / "tiles_t")
    assert reg_s.names == reg_t.names and len(man_t) == len(tgt)
    # a rerun keeps every finished file; other settings in the same folder are refused
    before = {p: p.stat().st_mtime_ns for p in (out / "target" / "images").iterdir()}
    make_sensor_shift_datasets(root, out, shift, preview_tiles=3)
    assert {p: p.stat().st_mtime_ns for p in (out / "target" / "images").iterdir()} == before
    with pytest.raises(SensorShiftError, match="other sensor_shift settings"):
        make_sensor_shift_datasets(root, out, SensorShift.from_params({"seed": 6}))


def test_command_line_reads_the_yaml_block(tmp_path):
    from tests.conftest import REPO

    root = make_folder(tmp_path / "ds", n=9)
    assert main([str(root), str(tmp_path / "out"), "--config", str(REPO / "conf" / "sensor_shift.yml")]) == 0
    assert len(list((tmp_path / "out" / "target" / "images").iterdir())) == 3  # 0.3 of each split of 3 tiles
    with pytest.raises(SensorShiftError, match="split.csv is missing"):
        main([str(make_folder(tmp_path / "nosplit", n=3, split=False)), str(tmp_path / "out2")])
