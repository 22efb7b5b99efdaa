"""Ingestion: folder datasets, GeoTIFF scenes, the real format fixtures, splits and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from rasterio.windows import transform as window_transform

from tisynth import ingest
from tisynth.classes import ClassRegistry
from tisynth.datasets import FileTreeDataset
from tisynth.ingest.demo_scenes import DEMO_CLASSES, DemoSceneConfig, write_demo_dataset
from tisynth.io import DataError, TileSet, read_image, read_raster, write_geotiff

CLASSES = Path(__file__).resolve().parents[1] / "conf" / "classes"
TABLE = "id,name,r,g,b\n0,road,255,0,0\n1,tree,0,255,0\n2,water,0,0,255\n9,unlabeled,0,0,0\n"


def make_folder(root: Path, n: int = 6, size: int = 32, split: bool = True, rgb_masks: bool = False) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.csv").write_text(TABLE)
    colors = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255), 9: (0, 0, 0)}
    rows = []
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = rng.choice([0, 1, 2, 9], size=(size, size)).astype(np.uint8)
        mask[: size // 2] = i % 3
        Image.fromarray(img).save(root / "images" / f"t{i}.jpg", quality=95)
        if rgb_masks:
            Image.fromarray(np.array([colors[v] for v in mask.ravel()], np.uint8).reshape(size, size, 3)).save(
                root / "masks" / f"t{i}.png")
        else:
            Image.fromarray(mask).save(root / "masks" / f"t{i}.png")
        rows.append({"name": f"t{i}", "scene": "a" if i < n // 2 else "b", "split": ["train", "val", "test"][i % 3]})
    if split:
        pd.DataFrame(rows).to_csv(root / "split.csv", index=False)
    return root


def run_ingest(root: Path, out: Path, dataset: dict | None = None, **params):
    dcfg = ingest.DatasetConfig.from_params({"root": str(root), **(dataset or {})})
    icfg = ingest.IngestConfig.from_params(params)
    registry = ingest.load_registry(dcfg)
    plan, problems = ingest.plan_tiles(registry, dcfg, icfg)
    manifest = ingest.manifest_from_plan(plan, registry, icfg)
    ingest.write_tiles(manifest, registry, dcfg, icfg, out)
    return registry, ingest.public_manifest(manifest), problems


# ------------------------------------------------------------------------- folder datasets
def test_folder_dataset_with_split_file(tmp_path):
    root = make_folder(tmp_path / "ds")
    registry, manifest, problems = run_ingest(root, tmp_path / "tiles")
    assert len(manifest) == 6 and problems.empty
    assert manifest.set_index("name").loc["t4", "split"] == "val"
    assert set(manifest["group"]) == {"a", "b"}
    tiles = TileSet(tmp_path / "tiles")
    row = manifest.iloc[0]
    src_mask = registry.decode(read_raster(root / "masks" / f"{row['name']}.png"))
    assert np.array_equal(tiles.read_mask(row["mask"]), src_mask)
    # JPEG pixels are copied losslessly into PNG tiles
    assert np.array_equal(tiles.read_image(row["image"]), read_image(root / "images" / f"{row['name']}.jpg"))
    counts = registry.histogram(src_mask)
    assert [row[f"px_{k}"] for k in range(3)] + [row["px_ignore"]] == counts.tolist()
    assert row["prompt"] == registry.prompt(src_mask)


def test_rgb_palette_masks_decode_to_the_same_tiles(tmp_path):
    _, ids, _ = run_ingest(make_folder(tmp_path / "a"), tmp_path / "ta")
    _, rgb, _ = run_ingest(make_folder(tmp_path / "b", rgb_masks=True), tmp_path / "tb")
    for name in ids["name"]:
        a = TileSet(tmp_path / "ta").read_mask(f"masks/{name}.png")
        b = TileSet(tmp_path / "tb").read_mask(f"masks/{name}.png")
        assert np.array_equal(a, b)


def test_tiling_larger_images_and_seeded_stratified_split(tmp_path):
    root = make_folder(tmp_path / "ds", n=8, size=64, split=False)
    _, m1, _ = run_ingest(root, tmp_path / "t1", tile_size=32, split={"seed": 3})
    _, m2, _ = run_ingest(root, tmp_path / "t2", tile_size=32, split={"seed": 3})
    _, m3, _ = run_ingest(root, tmp_path / "t3", tile_size=32, split={"seed": 4})
    assert len(m1) == 8 * 4
    assert m1["split"].tolist() == m2["split"].tolist()
    assert m1["split"].tolist() != m3["split"].tolist()
    counts = m1["split"].value_counts()
    assert counts["train"] == pytest.approx(0.7 * 32, abs=3) and counts["val"] >= 3 and counts["test"] >= 3
    # every dominant class is spread over the splits proportionally
    for _, group in m1.groupby("dominant"):
        if len(group) >= 7:
            assert (group["split"] == "train").mean() == pytest.approx(0.7, abs=0.2)
    _, by_src, _ = run_ingest(root, tmp_path / "t4", tile_size=32, split={"seed": 3, "by": "source"})
    assert (by_src.groupby("source")["split"].nunique() == 1).all()


def test_max_ignore_fraction_drops_tiles(tmp_path):
    root = make_folder(tmp_path / "ds", n=3, split=False)
    mask = np.full((32, 32), 9, np.uint8)
    mask[0, 0] = 1
    Image.fromarray(mask).save(root / "masks" / "t0.png")
    _, manifest, _ = run_ingest(root, tmp_path / "t", max_ignore_fraction=0.9)
    assert "t0" not in set(manifest["name"]) and len(manifest) == 2


def test_unlabeled_images_become_unlabeled_tiles(tmp_path):
    root = make_folder(tmp_path / "ds", n=3, split=False)
    shutil.rmtree(root / "masks")
    _, manifest, _ = run_ingest(root, tmp_path / "t", dataset={"require_masks": False})
    assert set(manifest["split"]) == {"unlabeled"} and manifest["mask"].isna().all()
    assert manifest["prompt"].isna().all()


# ------------------------------------------------------------------------- bad input
def _bad(tmp_path, damage, match, **params):
    root = make_folder(tmp_path / "ds")
    damage(root)
    out = tmp_path / "tiles"
    dcfg = ingest.DatasetConfig.from_params({"root": str(root)})
    with pytest.raises((DataError, ValueError), match=match):
        ingest.plan_tiles(ingest.load_registry(dcfg), dcfg, ingest.IngestConfig.from_params(params))
    assert not out.exists()
    return root


def test_size_mismatch(tmp_path):
    _bad(tmp_path, lambda r: Image.fromarray(np.zeros((16, 32), np.uint8)).save(r / "masks" / "t1.png"),
         r"t1\.jpg.*image is 32x32 but mask t1\.png is 16x32")


def test_mask_value_outside_registry(tmp_path):
    _bad(tmp_path, lambda r: Image.fromarray(np.full((32, 32), 7, np.uint8)).save(r / "masks" / "t2.png"),
         r"t2\.png.*value\(s\) \[7\] not in the class registry")


def test_missing_mask(tmp_path):
    _bad(tmp_path, lambda r: (r / "masks" / "t3.png").unlink(), r"t3\.jpg: missing mask")


def test_truncated_image(tmp_path):
    def truncate(r):
        data = (r / "images" / "t0.jpg").read_bytes()
        (r / "images" / "t0.jpg").write_bytes(data[: len(data) // 2])
    _bad(tmp_path, truncate, r"t0\.jpg: unreadable or truncated")


def test_unreadable_file(tmp_path):
    _bad(tmp_path, lambda r: (r / "masks" / "t5.png").write_bytes(b"not a png"), r"t5\.png: unreadable")


def test_palette_colour_not_in_registry(tmp_path):
    root = make_folder(tmp_path / "ds", rgb_masks=True)
    bad = np.array(Image.open(root / "masks" / "t1.png"))
    bad[3, 3] = (10, 20, 30)
    Image.fromarray(bad).save(root / "masks" / "t1.png")
    dcfg = ingest.DatasetConfig.from_params({"root": str(root)})
    with pytest.raises(DataError, match=r"t1\.png.*colour\(s\) \[\(10, 20, 30\)\] not in the class registry"):
        ingest.plan_tiles(ingest.load_registry(dcfg), dcfg, ingest.IngestConfig())


def test_empty_folder(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    dcfg = ingest.DatasetConfig.from_params({"root": str(tmp_path / "ds")})
    with pytest.raises(DataError, match="no images.*empty"):
        ingest.discover(dcfg)
    with pytest.raises(DataError, match="dataset folder not found"):
        ingest.discover(ingest.DatasetConfig.from_params({"root": str(tmp_path / "nope")}))


def test_all_problems_are_listed_and_skip_bad_reports_them(tmp_path):
    root = make_folder(tmp_path / "ds")
    (root / "masks" / "t3.png").unlink()
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "masks" / "t2.png")
    dcfg = ingest.DatasetConfig.from_params({"root": str(root)})
    registry = ingest.load_registry(dcfg)
    with pytest.raises(DataError, match=r"2 problem\(s\)") as err:
        ingest.plan_tiles(registry, dcfg, ingest.IngestConfig())
    assert "t2.png: value(s) [7]" in str(err.value) and "t3.jpg: missing mask" in str(err.value)
    plan, problems = ingest.plan_tiles(registry, dcfg, ingest.IngestConfig(skip_bad=True))
    assert sorted(plan["source"]) == ["t0", "t1", "t4", "t5"]
    assert len(problems) == 2 and problems["path"].str.contains("t3.jpg").any()


def test_source_missing_from_split_file(tmp_path):
    def drop_row(r):
        table = pd.read_csv(r / "split.csv")
        table[table["name"] != "t4"].to_csv(r / "split.csv", index=False)
    _bad(tmp_path, drop_row, r"t4\.jpg: source 't4' is not in the split file")


def test_interrupted_tile_write_leaves_no_partial_folder(tmp_path):
    root = make_folder(tmp_path / "ds")
    dcfg = ingest.DatasetConfig.from_params({"root": str(root)})
    icfg = ingest.IngestConfig(workers=1)
    registry = ingest.load_registry(dcfg)
    plan, _ = ingest.plan_tiles(registry, dcfg, icfg)
    manifest = ingest.manifest_from_plan(plan, registry, icfg)
    dataset = FileTreeDataset(str(tmp_path / "tiles"))
    dataset.save(lambda out: ingest.write_tiles(manifest, registry, dcfg, icfg, out))
    before = sorted(p.name for p in (tmp_path / "tiles" / "images").iterdir())

    def dies_half_way(out):
        ingest.write_tiles(manifest.iloc[:3], registry, dcfg, icfg, out)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dataset.save(dies_half_way)
    assert sorted(p.name for p in (tmp_path / "tiles" / "images").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


# ------------------------------------------------------------------------- GeoTIFF scenes
def _check_georeferencing(manifest: pd.DataFrame, tiles: Path, scene: Path) -> int:
    """Every tile's transform maps its pixels to the scene's world coordinates, and its pixels
    equal the scene's pixels under the window."""
    checked = 0
    with rasterio.open(scene) as src:
        for row in manifest[manifest["source"] == scene.stem].itertuples():
            win = rasterio.windows.Window(row.col_off, row.row_off, row.width, row.height)
            expected = window_transform(win, src.transform)
            with rasterio.open(tiles / row.image) as tile:
                assert tile.crs == src.crs
                assert tile.transform.almost_equals(expected)
                assert tuple(row.transform) == pytest.approx(tuple(expected)[:6])
                rr, cc = np.meshgrid(np.arange(0, row.height, 7), np.arange(0, row.width, 7), indexing="ij")
                tx, ty = rasterio.transform.xy(tile.transform, rr.ravel(), cc.ravel())
                sx, sy = rasterio.transform.xy(src.transform, rr.ravel() + row.row_off, cc.ravel() + row.col_off)
                assert np.allclose(tx, sx) and np.allclose(ty, sy)
                data = tile.read()
                inside = src.read(window=win, boundless=True, fill_value=0)
                assert np.array_equal(data, inside[:3])
            checked += 1
    return checked


def test_generated_scenes_keep_crs_and_transform(tmp_path):
    raw = tmp_path / "raw"
    write_demo_dataset(raw, DemoSceneConfig(n_scenes=2, size=96, seed=5), DEMO_CLASSES)
    registry, manifest, _ = run_ingest(raw, tmp_path / "tiles", dataset={"images": "scenes", "masks": "labels"},
                                       tile_size=40, stride=30, edge="pad", max_ignore_fraction=1.0)
    checked = sum(_check_georeferencing(manifest, tmp_path / "tiles", raw / "scenes" / f"demo_scene_0{i}.tif")
                  for i in range(2))
    assert checked == len(manifest) == 2 * 3 * 3
    assert (manifest["col_off"] + manifest["width"]).max() == 100  # the last column is padded past 96
    # label tiles match the label raster under the window (no-data -> ignore)
    row = manifest.iloc[5]
    with rasterio.open(raw / "labels" / f"{row['source']}.tif") as lab:
        raw_mask = lab.read(1, window=rasterio.windows.Window(row["col_off"], row["row_off"], 40, 40),
                            boundless=True, fill_value=0)
    assert np.array_equal(TileSet(tmp_path / "tiles").read_mask(row["mask"]), registry.decode(raw_mask))


def test_real_geotiff_tiles_map_to_the_same_world_coordinates(tmp_path, shared_data):
    src_dir = shared_data / "samples" / "geotiff"
    _, manifest, _ = run_ingest(src_dir, tmp_path / "tiles", dataset={"require_masks": False, "classes": {"table": str(CLASSES / "gid5.csv")}},
                                tile_size=128, edge="shift")
    assert len(manifest) == 3 * 4  # 373 x 485 with shifted last row/column
    assert _check_georeferencing(manifest, tmp_path / "tiles", src_dir / "rmnp-rgb.tif") == len(manifest)


def test_label_raster_on_another_grid_is_rejected(tmp_path):
    raw = tmp_path / "raw"
    write_demo_dataset(raw, DemoSceneConfig(n_scenes=1, size=64), DEMO_CLASSES)
    lab = raw / "labels" / "demo_scene_00.tif"
    with rasterio.open(lab) as src:
        data, crs = src.read(1), src.crs
    write_geotiff(lab, data, crs=crs, transform=from_origin(0, 0, 2.0, 2.0))
    dcfg = ingest.DatasetConfig.from_params({"root": str(raw), "images": "scenes", "masks": "labels"})
    with pytest.raises(DataError, match="transform differs"):
        ingest.plan_tiles(ingest.load_registry(dcfg), dcfg, ingest.IngestConfig(tile_size=32))


def test_demo_scenes_are_seeded(tmp_path):
    write_demo_dataset(tmp_path / "a", DemoSceneConfig(n_scenes=1, size=64, seed=1), DEMO_CLASSES)
    write_demo_dataset(tmp_path / "b", DemoSceneConfig(n_scenes=1, size=64, seed=1), DEMO_CLASSES)
    write_demo_dataset(tmp_path / "c", DemoSceneConfig(n_scenes=1, size=64, seed=2), DEMO_CLASSES)
    a, b, c = (read_raster(tmp_path / x / "scenes" / "demo_scene_00.tif") for x in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------- real format fixtures
def _fixture(shared_data: Path, tmp_path: Path, name: str, table: str) -> tuple[ClassRegistry, pd.DataFrame]:
    return run_ingest(shared_data / "samples" / name, tmp_path / "tiles",
                      dataset={"classes": {"table": str(CLASSES / table)}}, tile_size=None)[:2]


def test_loveda_fixture(tmp_path, shared_data):
    registry, manifest = _fixture(shared_data, tmp_path, "loveda", "loveda.csv")
    assert len(manifest) == 3 and registry.ignore_id == 0 and registry.num_classes == 7
    raw = read_raster(shared_data / "samples" / "loveda" / "ann_dir" / "0.png")
    tile = TileSet(tmp_path / "tiles").read_mask(manifest.set_index("name").loc["0", "mask"])
    assert np.array_equal(tile, np.where(raw == 0, 255, raw.astype(int) - 1))
    assert manifest.set_index("name").loc["0", "prompt"] == "a satellite image of background building road water agriculture"


@pytest.mark.parametrize("name", ["potsdam", "vaihingen"])
def test_isprs_fixtures(tmp_path, shared_data, name):
    registry, manifest = _fixture(shared_data, tmp_path, name, "isprs.csv")
    assert len(manifest) == 1 and registry.num_classes == 6
    row = manifest.iloc[0]
    assert sum(row[f"px_{k}"] for k in range(6)) + row["px_ignore"] == 512 * 512
    assert row["px_5"] > 0  # clutter is a class of its own here


def test_tisynth_demo_sixteen_bit_mask(tmp_path, shared_data):
    registry, manifest = _fixture(shared_data, tmp_path, "tisynth_gid_demo", "gid24.csv")
    record = json.loads((shared_data / "samples" / "tisynth_gid_demo" / "demo.json").read_text())
    row = manifest.iloc[0]
    assert len(manifest) == 1 and row["height"] == 512
    assert row["prompt"] == record["prompt"]
    tile = TileSet(tmp_path / "tiles").read_mask(row["mask"])
    assert set(np.unique(tile)) == {2, 14, 17, 20, 255}
    export = ingest.tisynth_jsonl(manifest).iloc[0].to_dict()
    assert set(record) - {"ref_image"} <= set(export)


def test_gid5_folder_dataset_ingests_with_its_split_and_class_shares(tmp_path, shared_data):
    """All 1,391 real tiles, the fixed split, and the class shares of the dataset's README."""
    registry, manifest, problems = run_ingest(shared_data / "gid5", tmp_path / "tiles", tile_size=None)
    assert len(manifest) == 1391 and problems.empty
    assert manifest["split"].value_counts().to_dict() == {"train": 985, "test": 204, "val": 202}
    assert registry.names == ["built-up", "farmland", "forest", "meadow", "water"] and registry.ignore_id == 5
    stats = ingest.class_statistics(manifest, registry)
    shares = stats[stats["split"] == "all"].set_index("class")["share"]
    readme = {"built-up": 16.6, "farmland": 23.9, "forest": 10.3, "meadow": 5.2, "water": 28.4, "unlabeled": 15.6}
    for name, share in readme.items():
        assert 100 * shares[name] == pytest.approx(share, abs=0.1), name
    assert set(manifest["group"]) == {"builtup", "farmland", "forest", "meadow", "water"}


# ------------------------------------------------------------------------- label-scarce protocol
def test_labelled_fraction_keeps_a_stratified_share_and_never_writes_the_other_masks(tmp_path):
    root = make_folder(tmp_path / "ds", n=60, split=False)
    full_reg, full, _ = run_ingest(root, tmp_path / "full")
    _, scarce, _ = run_ingest(root, tmp_path / "scarce", dataset={"labelled_fraction": 0.25, "labelled_seed": 3})
    full, scarce = full.set_index("name"), scarce.set_index("name")
    train = full.index[full["split"] == "train"]
    kept = scarce.index[scarce["split"] == "train"]
    held = scarce.index[scarce["split"] == "unlabeled"]
    assert set(kept) | set(held) == set(train) and not set(kept) & set(held)
    for k, group in full.loc[train].groupby("dominant"):  # a quarter of each dominant class, at least one
        assert (scarce.loc[kept, "dominant"] == k).sum() == max(1, round(0.25 * len(group)))
    # val and test are untouched
    others = full.index[full["split"] != "train"]
    assert scarce.loc[others, ["split", "mask", "dominant"]].equals(full.loc[others, ["split", "mask", "dominant"]])
    # the held-out tiles carry no label information at all, and no mask file exists for them
    assert scarce.loc[held, "mask"].isna().all() and scarce.loc[held, "prompt"].isna().all()
    assert scarce.loc[held, [f"px_{k}" for k in range(full_reg.num_classes)] + ["px_ignore"]].isna().all().all()
    assert (scarce.loc[held, "dominant"] == -1).all()
    written = {p.stem for p in (tmp_path / "scarce" / "masks").iterdir()}
    assert written == set(scarce.index[scarce["mask"].notna()]) and not written & set(held)
    assert all((tmp_path / "scarce" / scarce.loc[n, "image"]).is_file() for n in held)  # images stay: the Ref pool
    # seeded: the same seed picks the same tiles, another seed others
    _, again, _ = run_ingest(root, tmp_path / "again", dataset={"labelled_fraction": 0.25, "labelled_seed": 3})
    _, other, _ = run_ingest(root, tmp_path / "other", dataset={"labelled_fraction": 0.25, "labelled_seed": 4})
    assert list(again.loc[again["split"] == "train", "name"]) == list(kept)
    assert set(other.loc[other["split"] == "train", "name"]) != set(kept)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_labelled_fraction_outside_0_1_is_refused(tmp_path, fraction):
    with pytest.raises(DataError, match="labelled_fraction must be in"):
        ingest.DatasetConfig.from_params({"root": str(tmp_path), "labelled_fraction": fraction})
