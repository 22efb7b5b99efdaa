import pandas as pd
import pytest

from tisynth import references
from tisynth.io import DataError


def manifest(n=6):
    return pd.DataFrame({
        "name": [f"t{i}" for i in range(n)],
        "split": ["train"] * (n - 2) + ["val", "test"],
        "image": [f"images/t{i}.png" for i in range(n)],
        "mask": [f"masks/t{i}.png" for i in range(n)],
        "group": ["a", "a", "b", "b", "a", "b"][:n],
        "prompt": [f"p{i}" for i in range(n)],
    })


def cfg(**kw):
    return references.PairingConfig.from_params({"pairing": kw.pop("pairing", {}), **kw})


def test_pool_from_splits():
    pool = references.build_pool(manifest(), ["train"], "source")
    assert pool["ref_name"].tolist() == ["t0", "t1", "t2", "t3"] and set(pool["ref_domain"]) == {"source"}
    with pytest.raises(DataError, match="empty"):
        references.build_pool(manifest(), ["nope"], "source")


def test_random_pairing_is_seeded_excludes_self_and_multiplies_seeds():
    m, pool = manifest(), references.build_pool(manifest(), None, "source")
    a = references.plan_synthesis(m, pool, cfg(pairing={"refs_per_mask": 2, "seed": 1}, seeds_per_pair=3))
    b = references.plan_synthesis(m, pool, cfg(pairing={"refs_per_mask": 2, "seed": 1}, seeds_per_pair=3))
    c = references.plan_synthesis(m, pool, cfg(pairing={"refs_per_mask": 2, "seed": 2}, seeds_per_pair=3))
    assert a.equals(b) and not a["ref_name"].equals(c["ref_name"])
    assert len(a) == 4 * 2 * 3 and a["name"].is_unique
    assert (a["mask_name"] != a["ref_name"]).all()
    assert a.groupby(["mask_name", "ref_name"])["seed"].nunique().eq(3).all()
    assert set(a["split"]) == {"train"}


def test_item_seed_depends_only_on_the_item():
    s = references.item_seed("t0", "t3", 1, 0)
    assert s == references.item_seed("t0", "t3", 1, 0)
    assert len({s, references.item_seed("t1", "t3", 1, 0), references.item_seed("t0", "t3", 2, 0),
                references.item_seed("t0", "t3", 1, 7)}) == 4
    # the same item keeps its seed when the plan around it changes
    m, pool = manifest(), references.build_pool(manifest(), None, "source")
    small = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "same"}, masks={"limit": 2}))
    large = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "same"}))
    assert small.set_index("name")["seed"].to_dict().items() <= large.set_index("name")["seed"].to_dict().items()


def test_same_same_group_and_list_strategies(tmp_path):
    m, pool = manifest(), references.build_pool(manifest(), None, "source")
    same = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "same"}))
    assert (same["mask_name"] == same["ref_name"]).all()
    grp = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "same_group", "refs_per_mask": 1}))
    groups = m.set_index("name")["group"]
    assert (grp["mask_name"].map(groups) == grp["ref_name"].map(groups)).all()
    (tmp_path / "pairs.csv").write_text("mask_name,ref_name\nt0,t5\nt0,t4\nt2,t1\n")
    listed = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "list", "list_file": str(tmp_path / "pairs.csv")}))
    assert sorted(zip(listed["mask_name"], listed["ref_name"])) == [("t0", "t4"), ("t0", "t5"), ("t2", "t1")]
    (tmp_path / "bad.csv").write_text("mask_name,ref_name\nt0,zz\n")
    with pytest.raises(DataError, match=r"zz"):
        references.plan_synthesis(m, pool, cfg(pairing={"strategy": "list", "list_file": str(tmp_path / "bad.csv")}))


def test_bad_pairing_config():
    with pytest.raises(DataError, match="strategy"):
        cfg(pairing={"strategy": "nearest"})
    with pytest.raises(DataError, match="list_file"):
        cfg(pairing={"strategy": "list"})
    pool = references.build_pool(manifest(), ["val"], "target")
    with pytest.raises(DataError, match="not in the Ref pool"):
        references.plan_synthesis(manifest(), pool, cfg(pairing={"strategy": "same"}))


def test_the_ref_pool_takes_splits_as_a_list_or_a_command_line_string():
    m = pd.DataFrame({"name": ["a", "b", "c"], "split": ["train", "unlabeled", "val"], "image": ["a", "b", "c"],
                      "group": ["g", "g", "g"]})
    assert list(references.build_pool(m, "unlabeled", "source")["ref_name"]) == ["b"]
    assert list(references.build_pool(m, "train,unlabeled", "source")["ref_name"]) == ["a", "b"]
    assert list(references.build_pool(m, ["val"], "source")["ref_name"]) == ["c"]
    with pytest.raises(references.DataError, match="Ref pool is empty"):
        references.build_pool(m, "test", "source")


def test_mask_limit_is_a_seeded_sample_not_the_first_names():
    """Names that sort by scene class (builtup_0001, ..., water_0329) must not make the limited
    set one class: the limit draws a seeded sample across all masks."""
    n = 400
    m = pd.DataFrame({
        "name": [f"{c}_{i:04d}" for c in ("builtup", "farmland", "water", "forest") for i in range(n // 4)],
        "split": ["train"] * n, "image": [f"images/{i}.png" for i in range(n)],
        "mask": [f"masks/{i}.png" for i in range(n)], "group": ["g"] * n, "prompt": ["p"] * n,
    })
    pool = references.build_pool(m, None, "source")
    plan = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "same"}, masks={"limit": 40}))
    classes = plan["mask_name"].str.split("_").str[0].value_counts()
    assert len(plan) == 40 and plan["mask_name"].is_unique and set(classes.index) == {"builtup", "farmland", "water", "forest"}
    assert classes.max() <= 20  # about 10 each, never one class
    again = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "same"}, masks={"limit": 40}))
    other = references.plan_synthesis(m, pool, cfg(pairing={"strategy": "same", "seed": 1}, masks={"limit": 40}))
    assert again.equals(plan) and set(other["mask_name"]) != set(plan["mask_name"])
    assert list(plan["mask_name"]) == sorted(plan["mask_name"])
