"""Target domain: class-table agreement, scene-group selection, target tiles and the Ref pool."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import run_kedro
from tests.test_ingest import TABLE, make_folder
from tisynth import ingest, references
from tisynth.ingest.demo_scenes import DEMO_CLASSES, DemoSceneConfig, write_demo_dataset
from tisynth.io import DataError


def test_target_class_table_must_match(tmp_path):
    src = make_folder(tmp_path / "src")
    tgt = make_folder(tmp_path / "tgt")
    registry = ingest.load_registry(ingest.DatasetConfig.from_params({"root": str(src)}))
    tcfg = ingest.DatasetConfig.from_params({"root": str(tgt)})
    assert ingest.check_target_classes(registry, tcfg) is not None
    (tgt / "classes.csv").write_text(TABLE.replace("1,tree", "1,forest").replace("2,water", "3,water"))
    with pytest.raises(DataError, match=r"differ(.|\n)*id 1: 'tree' vs 'forest'(.|\n)*id 2: 'water' vs None"):
        ingest.check_target_classes(registry, tcfg)
    (tgt / "classes.csv").unlink()
    assert ingest.check_target_classes(registry, tcfg) is None  # no table: the source's is used


def test_groups_select_scenes_of_the_split_file(tmp_path):
    root = make_folder(tmp_path / "ds")
    dcfg = ingest.DatasetConfig.from_params({"root": str(root), "groups": "b"})
    plan, _ = ingest.plan_tiles(ingest.load_registry(dcfg), dcfg, ingest.IngestConfig())
    assert sorted(plan["source"]) == ["t3", "t4", "t5"] and set(plan["group"]) == {"b"}
    with pytest.raises(DataError, match=r"unknown group\(s\) \['c'\]"):
        bad = ingest.DatasetConfig.from_params({"root": str(root), "groups": ["a", "c"]})
        ingest.plan_tiles(ingest.load_registry(bad), bad, ingest.IngestConfig())


def test_target_pool_keeps_test_tiles_for_evaluation():
    m = pd.DataFrame({"split": ["train", "val", "test", "test"]})
    assert references.target_pool_splits(m) == ["train", "val"]
    assert references.target_pool_splits(pd.DataFrame({"split": ["test", "test"]})) == ["test"]
    assert references.target_pool_splits(pd.DataFrame({"split": ["unlabeled"]})) == ["unlabeled"]


def test_ingest_and_references_with_a_target_domain(kedro_project, tmp_path):
    target = tmp_path / "target"
    write_demo_dataset(target, DemoSceneConfig(n_scenes=2, size=128, seed=7, color_gain=(0.8, 0.9, 1.3),
                                               brightness=-20, texture=2.0), DEMO_CLASSES)
    run_kedro(kedro_project, ["ingest", "references"],
              params={"target": {"root": str(target), "images": "scenes", "masks": "labels"}})
    tm = pd.read_parquet(kedro_project / "data/03_primary/target_manifest.parquet")
    assert len(tm) == 2 * 4 and set(tm["split"]) == {"test"}
    assert (kedro_project / "data/02_intermediate/target_tiles" / tm["image"].iloc[0]).is_file()
    pool = pd.read_parquet(kedro_project / "data/04_feature/ref_pool.parquet")
    assert set(pool["ref_domain"]) == {"target"} and set(pool["ref_name"]) == set(tm["name"])
    plan = pd.read_parquet(sorted((kedro_project / "data/04_feature/synthesis_plan.parquet").glob("*/*.parquet"))[-1])
    assert set(plan["ref_domain"]) == {"target"} and set(plan["ref_name"]) <= set(tm["name"])


def test_without_target_refs_come_from_the_source(kedro_project):
    run_kedro(kedro_project, ["ingest", "references"])
    tm = pd.read_parquet(kedro_project / "data/03_primary/target_manifest.parquet")
    assert tm.empty
    pool = pd.read_parquet(kedro_project / "data/04_feature/ref_pool.parquet")
    assert set(pool["ref_domain"]) == {"source"}
