"""The restyling baselines (FDA, histogram matching): the functions, folder runs, plan runs and the command."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.test_ingest import make_folder
from tisynth import restyle as rs
from tisynth.errors import TisynthError
from tisynth.io import TileSet, read_image

REPO = Path(__file__).resolve().parents[1]


def smooth_image(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    """A textured image with large flat-ish areas (many tied grey levels), like a tile."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).astype(int)
    return np.clip(big + rng.integers(-6, 7, big.shape), 0, 255).astype(np.uint8)


def shifted_amplitude(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.abs(np.fft.fft2(x.astype(np.float64), axes=(0, 1))), axes=(0, 1))


# ---------------------------------------------------------------------- the two methods
@pytest.mark.parametrize(("method", "beta"), [("fda", 0.01), ("fda", 0.2), ("fda", 0.5), ("histmatch", 0.01)])
def test_an_image_restyled_with_itself_is_unchanged(method, beta):
    img = smooth_image(0)
    out = rs.restyle(img, img, method, beta)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() <= 1


@pytest.mark.parametrize(("h", "w", "beta", "cells"), [(41, 52, 0.1, 9 * 9), (64, 64, 0.01, 1), (33, 30, 0.5, 31 * 30)])
def test_fda_swaps_the_low_band_amplitude_and_keeps_the_rest(h, w, beta, cells):
    img, ref = smooth_image(1, h, w), smooth_image(2, h, w)
    rows, cols = rs.low_band(h, w, beta)
    band = np.zeros((h, w), bool)
    band[rows, cols] = True
    assert band.sum() == cells  # a (2 floor(min(h, w) beta) + 1)-square, clipped to the spectrum
    assert band[h // 2, w // 2]  # around the zero frequency
    out = rs.fda_float(img, ref, beta)
    amp, amp_img, amp_ref = shifted_amplitude(out), shifted_amplitude(img), shifted_amplitude(ref)
    scale = amp_img.max()
    assert np.allclose(amp[band], amp_ref[band], rtol=1e-9, atol=1e-9 * scale)
    assert np.allclose(amp[~band], amp_img[~band], rtol=1e-9, atol=1e-9 * scale)
    assert not np.allclose(amp_img[band], amp_ref[band])  # the test can tell the two apart
    assert np.abs(out.mean(axis=(0, 1)) - ref.mean(axis=(0, 1))).max() < 1e-6  # the DC term: the Ref's mean colour
    # the phase is the image's wherever the amplitude is not negligible
    phase = np.angle(np.fft.fft2(out, axes=(0, 1)))
    phase_img = np.angle(np.fft.fft2(img.astype(np.float64), axes=(0, 1)))
    big = np.fft.ifftshift(amp, axes=(0, 1)) > 1e-6 * scale
    assert np.allclose(np.exp(1j * phase[big]), np.exp(1j * phase_img[big]), atol=1e-6)
    # the uint8 result is the float one rounded and clipped
    assert np.array_equal(rs.fda(img, ref, beta), np.clip(np.rint(out), 0, 255).astype(np.uint8))


def test_fda_resizes_a_ref_of_another_size_first():
    img, ref = smooth_image(3, 48, 40), smooth_image(4, 20, 30)
    resized = rs.resize_like(ref, img.shape)
    assert resized.shape == img.shape
    assert np.array_equal(rs.fda(img, ref, 0.1), rs.fda(img, resized, 0.1))
    assert np.abs(rs.fda(img, ref, 0.1).astype(int) - img).mean() > 1  # it did restyle


def test_histmatch_gives_the_refs_quantiles():
    rng = np.random.default_rng(5)
    # every band's 256 values distinct: the sorted result is the Ref's quantile function
    img = np.stack([rng.permutation(256).reshape(16, 16) for _ in range(3)], axis=-1).astype(np.uint8)
    same_size, bigger = smooth_image(6, 16, 16), smooth_image(7, 40, 40)
    out = rs.histmatch(img, same_size)
    for b in range(3):
        assert np.array_equal(np.sort(out[..., b].ravel()), np.sort(same_size[..., b].ravel()))
    out = rs.histmatch(img, bigger)
    p = (np.arange(256) + 0.5) / 256
    for b in range(3):
        expected = np.quantile(bigger[..., b].ravel(), p, method="inverted_cdf")
        assert np.array_equal(np.sort(out[..., b].ravel()), expected)


def test_histmatch_with_tied_levels_is_monotone_and_moves_to_the_refs_histogram():
    img, ref = smooth_image(8), smooth_image(9, 60, 60)
    out = rs.histmatch(img, ref)
    for b in range(3):
        src, res, target = img[..., b].ravel(), out[..., b].ravel(), ref[..., b].ravel()
        order = np.argsort(src, kind="stable")
        assert np.all(np.diff(res[order].astype(int)) >= 0)  # brighter stays at least as bright
        assert set(np.unique(res)) <= set(np.unique(target))  # only the Ref's grey levels

        def ks(x):
            levels = np.arange(256)
            return np.abs(np.searchsorted(np.sort(x), levels, side="right") / x.size
                          - np.searchsorted(np.sort(target), levels, side="right") / target.size).max()

        assert ks(res) < 0.5 * ks(src) and ks(res) < 0.05


@pytest.mark.parametrize(("call", "key"), [
    (lambda img: rs.restyle(img, img, "fourier"), "method"),
    (lambda img: rs.fda(img, img, 0.0), "beta"),
    (lambda img: rs.fda(img, img, 0.6), "beta"),
    (lambda img: rs.fda(img, img, float("nan")), "beta"),
    (lambda img: rs.fda(img.astype(np.float32), img), "image"),
    (lambda img: rs.histmatch(img, img[..., 0]), "ref"),
])
def test_bad_settings_and_arrays_are_refused_by_name(call, key):
    with pytest.raises(rs.RestyleError, match=key):
        call(smooth_image(0, 16, 16))


# ---------------------------------------------------------------------- folder runs
@pytest.fixture
def folders(tmp_path):
    src = make_folder(tmp_path / "src", n=5, size=32)
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(10 + i, 24, 24)).save(refs / f"r{i}.png")
    return src, refs, tmp_path / "out"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("method", rs.METHODS)
def test_a_folder_dataset_is_restyled_and_its_masks_are_never_touched(folders, method):
    src, refs, out = folders
    before = snapshot(src)
    manifest = rs.restyle_folder(src, refs, out, method, beta=0.05, seed=3, progress=False)
    assert snapshot(src) == before  # the source is only read
    names = sorted(p.stem for p in (src / "images").iterdir())
    assert sorted(Path(i).stem for i in manifest["image"]) == names
    for p in (src / "masks").iterdir():  # byte for byte
        assert (out / "masks" / p.name).read_bytes() == p.read_bytes()
    for t in ("classes.csv", "split.csv"):
        assert (out / t).read_bytes() == (src / t).read_bytes()
    on_disk = pd.read_csv(out / rs.MANIFEST)
    assert list(on_disk.columns) == rs.MANIFEST_COLUMNS and len(on_disk) == len(names)
    assert set(on_disk["method"]) == {method} and set(on_disk["seed"]) == {3}
    assert (on_disk["beta"] == 0.05).all() if method == "fda" else on_disk["beta"].isna().all()
    for row in on_disk.itertuples():
        made = read_image(out / row.image)
        expected = rs.restyle(read_image(src / row.source), read_image(refs / row.ref), method, 0.05)
        assert np.array_equal(made, expected)
        assert row.ref == f"r{rs.ref_index(3, Path(row.source).stem, 3)}.png"
    assert on_disk["ref"].nunique() > 1  # a draw per image, not one Ref for all


def test_a_rerun_skips_finished_images_and_redoes_what_changed(folders, monkeypatch):
    src, refs, out = folders
    rs.restyle_folder(src, refs, out, "fda", seed=0, progress=False)
    first = snapshot(out)
    calls = []
    real = rs.restyle
    monkeypatch.setattr(rs, "restyle", lambda *a, **k: calls.append(1) or real(*a, **k))
    rs.restyle_folder(src, refs, out, "fda", seed=0, progress=False)
    assert calls == [] and snapshot(out) == first
    (out / "images" / "t1.png").unlink()
    (out / "masks" / "t2.png").write_bytes(b"changed")
    rs.restyle_folder(src, refs, out, "fda", seed=0, progress=False)
    assert len(calls) == 1 and snapshot(out) == first  # the one image made again, the mask copied again
    # more Refs: the images whose draw changed are made again, the others kept
    for i in range(3, 8):
        Image.fromarray(smooth_image(10 + i, 24, 24)).save(refs / f"r{i}.png")
    calls.clear()
    manifest = rs.restyle_folder(src, refs, out, "fda", seed=0, progress=False)
    old = pd.read_csv(pd.io.common.StringIO(first["restyle.csv"].decode()))
    changed = (manifest.set_index("image")["ref"] != old.set_index("image")["ref"]).sum()
    assert changed > 0 and len(calls) == changed


def test_a_plain_folder_of_images(tmp_path, folders):
    _, refs, out = folders
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(20 + i, 16, 16)).save(plain / f"p{i}.jpg", quality=95)
    manifest = rs.restyle_folder(plain, refs, out, "histmatch", progress=False)
    assert sorted(manifest["image"]) == ["p0.png", "p1.png"] and (out / "p0.png").is_file()
    assert not (out / "masks").exists()


def break_image(src: Path, out: Path, refs: Path) -> Path:
    (src / "images" / "t3.jpg").write_bytes(b"not an image")
    return src / "images" / "t3.jpg"


@pytest.mark.parametrize(("change", "kwargs", "key"), [
    (lambda src, out, refs: None, {"method": "fourier"}, "method"),
    (lambda src, out, refs: None, {"beta": 0.0}, "beta"),
    (lambda src, out, refs: None, {"beta": 0.75}, "beta"),
    (break_image, {}, "t3.jpg"),
    (lambda src, out, refs: [p.unlink() for p in (src / "images").iterdir()], {}, "SRC"),
    (lambda src, out, refs: [p.unlink() for p in refs.iterdir()], {}, "REFS"),
    (lambda src, out, refs: (refs / f"r{rs.ref_index(0, 't0', 3)}.png").write_bytes(b"trunc"), {}, r"refs/r\d\.png"),
])
def test_bad_input_is_refused_by_name_before_anything_is_written(folders, change, kwargs, key):
    src, refs, out = folders
    change(src, out, refs)
    with pytest.raises(TisynthError, match=key):
        rs.restyle_folder(src, refs, out, **{"method": "fda", **kwargs, "progress": False})
    assert not out.exists()


def test_an_output_folder_inside_the_source_or_of_other_settings_is_refused(folders):
    src, refs, out = folders
    for inside in (src / "restyled", src, refs / "x"):
        with pytest.raises(rs.RestyleError, match="OUT"):
            rs.restyle_folder(src, refs, inside, "fda", progress=False)
        assert not (src / "restyled").exists() and not (refs / "x").exists()
    rs.restyle_folder(src, refs, out, "fda", progress=False)
    first = snapshot(out)
    for kwargs, key in (({"method": "histmatch"}, "method"), ({"beta": 0.02}, "beta"), ({"seed": 1}, "seed")):
        with pytest.raises(rs.RestyleError, match=key):
            rs.restyle_folder(src, refs, out, **{"method": "fda", **kwargs, "progress": False})
    assert snapshot(out) == first


# ---------------------------------------------------------------------- plan runs (the experiment's variants)
def tiny_plan(tmp_path: Path) -> tuple[pd.DataFrame, TileSet, TileSet]:
    tiles, target = TileSet(tmp_path / "tiles"), TileSet(tmp_path / "target")
    for ts, prefix in ((tiles, "s"), (target, "g")):
        (ts.root / "images").mkdir(parents=True)
        (ts.root / "masks").mkdir()
        for i in range(3):
            Image.fromarray(smooth_image(30 + i + (10 if prefix == "g" else 0), 24, 24)).save(
                ts.root / "images" / f"{prefix}{i}.png")
            Image.fromarray(np.full((24, 24), i, np.uint8)).save(ts.root / "masks" / f"{prefix}{i}.png")
    rows = [{"name": f"s{m}__g{r}__0", "mask_name": f"s{m}", "mask": f"masks/s{m}.png",
             "image_of_mask": f"images/s{m}.png", "ref_name": f"g{r}", "ref_domain": "target",
             "ref": f"images/g{r}.png", "prompt": "", "seed": 7, "k": 0, "split": "train"}
            for m, r in ((0, 1), (1, 2), (2, 0), (0, 2))]
    return pd.DataFrame(rows), tiles, target


def test_a_plan_is_restyled_row_by_row_towards_its_own_refs(tmp_path):
    plan, tiles, target = tiny_plan(tmp_path)
    before = snapshot(tiles.root)
    folder = tmp_path / "restyled"
    made = rs.restyle_plan(plan, tiles, {"source": tiles, "target": target}, folder, "fda", 0.1, progress=False)
    assert list(made["name"]) == list(plan["name"]) and list(made["mask"]) == list(plan["mask"])
    for row, m in zip(plan.itertuples(), made.itertuples()):
        expected = rs.fda(tiles.read_image(row.image_of_mask), target.read_image(row.ref), 0.1)
        assert np.array_equal(read_image(folder / m.image), expected)
    assert snapshot(tiles.root) == before
    with pytest.raises(rs.RestyleError, match="target"):
        rs.restyle_plan(plan, tiles, {"source": tiles}, tmp_path / "other", "fda", progress=False)
    with pytest.raises(rs.RestyleError, match="not unique"):
        rs.restyle_plan(pd.concat([plan, plan.head(1)]), tiles, {"target": target}, tmp_path / "other", "fda",
                        progress=False)
    assert not (tmp_path / "other").exists()


def load_experiment():
    spec = importlib.util.spec_from_file_location("experiment_script", REPO / "benchmarks" / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeCatalog:
    def __init__(self, items):
        self.items = items

    def load(self, name):
        return self.items[name]

    def exists(self, name):
        return name in self.items


def filtered_manifest_of(plan: pd.DataFrame, kept: list[bool]) -> pd.DataFrame:
    """A filtered manifest as the filter writes it: the plan's rows, their images and the decision."""
    manifest = plan.copy()
    manifest["image"] = [f"{n}.png" for n in plan["name"]]
    manifest["filtered_mask"] = [f"{n}.png" for n in plan["name"]]
    manifest["kept_fraction"] = [0.9 if k else 0.3 for k in kept]
    manifest["has_hard_class"] = False
    manifest["kept"] = kept
    return manifest


def test_the_restyled_variants_take_the_rows_tisynths_filter_kept_by_default(tmp_path, monkeypatch):
    from tisynth.segmentation.pairs import synthetic_pairs_from_manifest

    experiment = load_experiment()
    assert set(experiment.RESTYLED) <= set(experiment.VARIANTS) and "restyle" in experiment.PHASES
    assert experiment.build_parser().parse_args(["--data", "d", "--workspace", "w"]).restyle_pairs == "kept"
    assert {v: experiment.VARIANTS[v] for v in experiment.RESTYLED} == experiment.restyled_labels("kept")
    plan, tiles, target = tiny_plan(tmp_path)
    # rows 0 and 3 share a mask (s0) with other Refs; row 3 is kept and row 0 is not: the choice is by row
    filtered = filtered_manifest_of(plan, [False, True, True, True])
    filtered = filtered.iloc[[3, 0, 2, 1]].reset_index(drop=True)  # the manifest's order is the one kept
    tisynth = filtered[filtered["kept"]]
    tisynth_pairs = synthetic_pairs_from_manifest(filtered, tmp_path / "synthetic", tmp_path / "filtered")
    catalog = FakeCatalog({"synthesis_plan": plan, "tiles": tiles, "target_tiles": target,
                           "filtered_manifest": filtered})
    calls = []
    real = rs.restyle
    monkeypatch.setattr(rs, "restyle", lambda *a, **k: calls.append(1) or real(*a, **k))
    for method in experiment.RESTYLED:
        folder = experiment.restyled_folder(tmp_path / "ws", method, 0.01)
        pairs, made = experiment.restyled_set(catalog, method, folder, 0.01)
        assert len(pairs) == len(tisynth_pairs) == 3 < len(plan)  # as many extra pairs as (b)
        assert list(made["name"]) == list(tisynth["name"])  # the very rows (b) trains on, in its order
        assert list(made["mask"]) == list(tisynth["mask"]) and list(made["ref"]) == list(tisynth["ref"])
        assert [p.mask for p in pairs] == [str(tiles.path(m)) for m in tisynth["mask"]]  # the tile masks, whole
        assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(f"{n}.png" for n in tisynth["name"])
        for (_, row), pair in zip(tisynth.iterrows(), pairs):
            expected = real(tiles.read_image(row["image_of_mask"]), target.read_image(row["ref"]), method, 0.01)
            assert np.array_equal(read_image(pair.image), expected)
    assert len(calls) == 2 * 3  # only the kept rows were restyled

    # every plan row: the old set, comparable with (d); the kept rows' images are reused
    assert experiment.restyled_labels("all") != experiment.restyled_labels("kept")
    calls.clear()
    for method in experiment.RESTYLED:
        folder = experiment.restyled_folder(tmp_path / "ws", method, 0.01)
        pairs, made = experiment.restyled_set(catalog, method, folder, 0.01, pairs="all")
        assert list(made["name"]) == list(plan["name"])
        assert [p.mask for p in pairs] == [str(tiles.path(m)) for m in plan["mask"]]
        assert all(Path(p.image).is_file() and Path(p.image).is_relative_to(folder) for p in pairs)
        assert len(set(made["image"])) == len(plan)
    assert len(calls) == 2 * (len(plan) - 3)  # only the rows the filter dropped were still to make
    assert experiment.restyled_folder(tmp_path, "fda", 0.05) != experiment.restyled_folder(tmp_path, "fda", 0.01)


def test_the_kept_rows_need_the_filters_manifest_of_the_same_plan(tmp_path):
    experiment = load_experiment()
    plan, tiles, target = tiny_plan(tmp_path)
    items = {"synthesis_plan": plan, "tiles": tiles, "target_tiles": target}
    folder = tmp_path / "ws" / "fda"
    with pytest.raises(SystemExit, match="run the synthesize phase first"):
        experiment.restyled_set(FakeCatalog(items), "fda", folder, 0.01)
    assert not folder.exists()
    pairs, _ = experiment.restyled_set(FakeCatalog(items), "fda", folder, 0.01, pairs="all")  # needs no filter
    assert len(pairs) == len(plan)
    with pytest.raises(SystemExit, match="restyle-pairs"):
        experiment.restyled_set(FakeCatalog(items), "fda", folder, 0.01, pairs="some")
    other = plan.copy()
    other.loc[1, "name"] = "s1__g0__0"  # the filter ran on another plan
    with pytest.raises(SystemExit, match="another plan"):
        experiment.kept_plan_rows(plan, filtered_manifest_of(other, [True, True, False, False]))
    other = plan.copy()
    other.loc[1, "ref"] = "images/g0.png"
    with pytest.raises(SystemExit, match="another ref"):
        experiment.kept_plan_rows(plan, filtered_manifest_of(other, [True, True, False, False]))
    with pytest.raises(SystemExit, match="kept no pairs"):
        experiment.kept_plan_rows(plan, filtered_manifest_of(plan, [False] * len(plan)))
    kept = experiment.kept_plan_rows(plan, filtered_manifest_of(plan, [True, False, False, True]))
    assert list(kept["name"]) == list(plan["name"].iloc[[0, 3]]) and list(kept.columns) == list(plan.columns)


# ---------------------------------------------------------------------- the command
def test_the_command_restyles_a_folder_and_refuses_bad_input_with_exit_code_2(folders, capsys):
    src, refs, out = folders
    assert rs.main([str(src), str(refs), str(out), "--method", "histmatch", "--quiet"]) == 0
    assert len(pd.read_csv(out / rs.MANIFEST)) == 5
    capsys.readouterr()
    assert rs.main([str(src), str(refs), str(src / "x"), "--method", "fda", "--beta", "0.9", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "beta" in err and err.count("\n") == 1


def test_python_m_tisynth_restyle_runs(folders):
    src, refs, out = folders
    done = subprocess.run([sys.executable, "-m", "tisynth", "restyle", str(src), str(refs), str(out),
                           "--method", "fda", "--beta", "0.02", "--seed", "4"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = pd.read_csv(out / rs.MANIFEST)
    assert len(manifest) == 5 and set(manifest["beta"]) == {0.02} and set(manifest["seed"]) == {4}
