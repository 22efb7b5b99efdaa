import numpy as np
import pytest

from tisynth.classes import IGNORE_INDEX, ClassRegistry, RegistryError

ROWS = [
    {"id": 0, "name": "built-up", "r": 255, "g": 0, "b": 0},
    {"id": 1, "name": "farmland", "r": 0, "g": 255, "b": 0},
    {"id": 2, "name": "water", "r": 0, "g": 0, "b": 255},
    {"id": 5, "name": "unlabeled", "r": 0, "g": 0, "b": 0},
]


def test_from_records_detects_ignore_by_name_and_renumbers():
    reg = ClassRegistry.from_records(ROWS)
    assert reg.names == ["built-up", "farmland", "water"]
    assert reg.ignore_id == 5 and reg.ignore_name == "unlabeled"
    raw = np.array([[0, 1], [2, 5]], dtype=np.uint8)
    assert reg.decode(raw).tolist() == [[0, 1], [2, IGNORE_INDEX]]


def test_non_contiguous_raw_ids_map_to_index_space_and_back():
    reg = ClassRegistry.from_records(
        [{"id": 1, "name": "a", "color": [1, 2, 3]}, {"id": 7, "name": "b", "color": [4, 5, 6]},
         {"id": 0, "name": "no-data", "color": [0, 0, 0]}])
    raw = np.array([[7, 1, 0]], dtype=np.uint16)
    index = reg.decode(raw)
    assert index.tolist() == [[1, 0, 255]]
    assert reg.encode_raw(index).tolist() == raw.tolist()


def test_sixteen_bit_ids_and_255_ignore():
    rows = [{"id": i, "name": f"c{i}", "color": [i, i, 100]} for i in range(24)]
    reg = ClassRegistry.from_records(rows, ignore_id=255)
    raw = np.array([[2, 14], [255, 23]], dtype=np.uint16)
    assert reg.decode(raw).tolist() == [[2, 14], [255, 23]]


def test_rgb_palette_decoding_and_unknown_colour():
    reg = ClassRegistry.from_records(ROWS)
    rgb = np.array([[[255, 0, 0], [0, 0, 255]], [[0, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    assert reg.decode(rgb).tolist() == [[0, 2], [255, 1]]
    rgb[0, 0] = (12, 34, 56)
    with pytest.raises(RegistryError, match=r"\(12, 34, 56\)"):
        reg.decode(rgb, where="tile.png")


def test_unknown_mask_value_names_the_file():
    reg = ClassRegistry.from_records(ROWS)
    with pytest.raises(RegistryError, match=r"m\.png.*\[9\]"):
        reg.decode(np.array([[0, 9]], dtype=np.uint8), where="m.png")


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        (ROWS + [{"id": 1, "name": "dup", "r": 9, "g": 9, "b": 9}], {}, "duplicate id 1"),
        ([{"id": 0, "name": "a", "r": 256, "g": 0, "b": 0}], {}, "0..255"),
        ([{"id": 0, "name": "a", "r": -1, "g": 0, "b": 0}], {}, "0..255"),
        (ROWS[:3], {"ignore_id": 1}, "clashes with class 'farmland'"),
        ([{"id": 0, "name": "a", "r": 1, "g": 1, "b": 1}, {"id": 1, "name": "b", "r": 1, "g": 1, "b": 1}], {},
         "share colour"),
        ([{"id": 5, "name": "unlabeled", "r": 0, "g": 0, "b": 0}], {}, "no classes"),
        ([{"id": 0, "name": "a"}], {}, "needs id, name and a colour"),
        ([{"id": 0, "name": "a", "r": 0, "g": 0, "b": 0}, {"id": 1, "name": "a", "r": 1, "g": 0, "b": 0}], {},
         "duplicate name"),
    ],
)
def test_validation_errors(rows, kwargs, message):
    with pytest.raises(RegistryError, match=message):
        ClassRegistry.from_records(rows, **kwargs)


def test_ignore_colour_clash_with_class_colour():
    with pytest.raises(RegistryError, match="ignore colour"):
        ClassRegistry.from_records(
            [{"id": 0, "name": "a", "r": 0, "g": 0, "b": 0}, {"id": 9, "name": "void", "r": 0, "g": 0, "b": 0}])


def test_explicit_ignore_flag_column(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("id,name,r,g,b,ignore\n0,clutter,255,0,0,1\n1,tree,0,255,0,0\n2,car,255,255,0,0\n")
    reg = ClassRegistry.from_csv(path)
    assert reg.ignore_id == 0 and reg.names == ["tree", "car"]


def test_csv_missing_columns_is_a_clear_error(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("id,name\n0,a\n")
    with pytest.raises(RegistryError, match=r"classes\.csv.*missing column"):
        ClassRegistry.from_csv(path)


def test_prompt_follows_the_authors_convention(shared_data):
    """The TISynth demo mask holds ids {2, 14, 17, 20, 255}; its prompt in demo.json is the
    class names joined by spaces in ascending id order."""
    import json
    from pathlib import Path

    from tisynth.io import read_raster

    reg = ClassRegistry.from_csv(Path(__file__).resolve().parents[1] / "conf" / "classes" / "gid24.csv")
    demo = shared_data / "samples" / "tisynth_gid_demo"
    record = json.loads((demo / "demo.json").read_text())
    mask = reg.decode(read_raster(demo / record["source"]))
    assert reg.prompt(mask) == record["prompt"]


def test_prompt_template_and_empty_mask():
    reg = ClassRegistry.from_records(ROWS)
    assert reg.prompt([2, 0], "aerial photo: {classes}") == "aerial photo: built-up water"
    assert reg.prompt(np.full((2, 2), 255, np.uint8)) == "a satellite image of"


def test_round_trip_dict_and_colorize_histogram():
    reg = ClassRegistry.from_records(ROWS)
    again = ClassRegistry.from_dict(reg.to_dict())
    assert again == reg
    mask = np.array([[0, 2], [255, 2]], dtype=np.uint8)
    assert reg.colorize(mask)[0, 1].tolist() == [0, 0, 255]
    assert reg.histogram(mask).tolist() == [1, 0, 2, 1]
    assert reg.index_of("Water") == 2
    with pytest.raises(RegistryError, match="unknown class"):
        reg.index_of("road")


def test_same_classes_reports_differences():
    a = ClassRegistry.from_records(ROWS)
    b = ClassRegistry.from_records(ROWS[:2] + [{"id": 2, "name": "lake", "r": 0, "g": 0, "b": 255}, ROWS[3]])
    assert a.class_differences(a) == []
    assert a.class_differences(b) == ["id 2: 'water' vs 'lake'"]
