import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import transform as window_transform

from tisynth.ingest.rasters import RasterSource, Window, tile_windows
from tisynth.io import DataError, write_geotiff


def covered(windows, h, w):
    cover = np.zeros((h, w), bool)
    for win in windows:
        cover[max(win.row_off, 0):win.row_off + win.height, max(win.col_off, 0):win.col_off + win.width] = True
    return cover


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_windows_cover_the_source(edge):
    wins = tile_windows(100, 130, 32, 32, edge)
    assert covered(wins, 100, 130).all()
    assert all(w.height == w.width == 32 for w in wins)
    if edge == "shift":
        assert max(w.row_off + w.height for w in wins) == 100 and max(w.col_off + w.width for w in wins) == 130
    else:
        assert max(w.col_off + w.width for w in wins) > 130


def test_drop_keeps_only_full_windows_and_stride_overlaps():
    wins = tile_windows(100, 130, 32, None, "drop")
    assert len(wins) == 3 * 4 and max(w.col_off + w.width for w in wins) <= 130
    over = tile_windows(64, 64, 32, 16, "drop")
    assert [w.col_off for w in over[:3]] == [0, 16, 32]
    assert tile_windows(20, 20, 32, None, "drop") == []
    assert tile_windows(20, 20, 32, None, "shift") == [Window(0, 0, 32, 32)]


def test_bad_window_arguments():
    with pytest.raises(ValueError, match="edge"):
        tile_windows(10, 10, 4, edge="wrap")
    with pytest.raises(ValueError, match="tile_size"):
        tile_windows(10, 10, 0)


def test_geotiff_window_reads_and_transforms(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    transform = from_origin(1000.0, 2000.0, 0.5, 0.5)
    path = tmp_path / "scene.tif"
    write_geotiff(path, data, crs="EPSG:32633", transform=transform, nodata=0)
    with RasterSource(path) as src:
        assert src.georeferenced and (src.height, src.width) == (50, 70)
        win = Window(10, 20, 16, 16)
        assert np.array_equal(src.read(win), data[10:26, 20:36])
        assert src.window_transform(win) == window_transform(win.to_rasterio(), transform)
        # a window running past the edge is filled
        edge = src.read(Window(40, 60, 16, 16), fill=0)
        assert edge.shape == (16, 16, 3) and np.array_equal(edge[:10, :10], data[40:, 60:])
        assert (edge[10:, :] == 0).all()
        valid = src.valid_mask(Window(40, 60, 16, 16))
        assert valid[:10, :10].all() and not valid[10:, :].any()


def test_picture_source_and_unreadable_file(tmp_path):
    from PIL import Image

    arr = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    Image.fromarray(arr).save(tmp_path / "a.png")
    with RasterSource(tmp_path / "a.png") as src:
        assert not src.georeferenced and src.window_transform(Window(0, 0, 2, 2)) is None
        assert np.array_equal(src.read(Window(1, 1, 2, 2)), arr[1:3, 1:3])
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match="bad.tif"):
        RasterSource(tmp_path / "bad.tif")
    with pytest.raises(DataError, match="not found"):
        RasterSource(tmp_path / "missing.png")


def test_sixteen_bit_scene_is_stretched_scene_wide(tmp_path):
    data = (np.linspace(0, 4000, 64 * 64 * 3).reshape(64, 64, 3)).astype(np.uint16)
    path = tmp_path / "s16.tif"
    write_geotiff(path, data, crs="EPSG:4326", transform=from_origin(0, 0, 1, 1))
    with RasterSource(path) as src:
        lo, hi = src.stretch_range()
        assert 0 < lo < hi < 4000
    with rasterio.open(path) as ds:
        assert ds.dtypes[0] == "uint16"
