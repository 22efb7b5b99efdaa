"""Mixing real and synthetic pairs: batch composition and equal budgets."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from .toydata import manifest_pairs, tiny_config, write_toy_tiles
from tisynth.segmentation.config import MixConfig, SegmenterConfig, build_runner_config
from tisynth.segmentation.pairs import write_pairs


class _Fake:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _concat(n_real: int, n_syn: int):
    from mmengine.dataset import ConcatDataset

    ds = ConcatDataset.__new__(ConcatDataset)  # only lengths are needed by the sampler
    ds.datasets = [_Fake(n_real), _Fake(n_syn)]
    return ds


@pytest.mark.parametrize("fraction, batch, real_per_batch", [(0.5, 8, 4), (0.75, 8, 6), (0.1, 4, 1), (0.99, 4, 3)])
def test_mixed_sampler_batch_composition(fraction, batch, real_per_batch):
    from tisynth.segmentation.mm import MixedSourceSampler

    n_real, n_syn = 12, 36  # divisible by the per-batch counts, so epochs end on batch boundaries
    sampler = MixedSourceSampler(_concat(n_real, n_syn), batch_size=batch, real_fraction=fraction, seed=3)
    indices = list(islice(iter(sampler), batch * 72))
    batches = [indices[b * batch:(b + 1) * batch] for b in range(72)]
    for chunk in batches:
        assert sum(i < n_real for i in chunk) == real_per_batch
    # each source is traversed in reshuffled epochs: every sample once before any repeats
    syn_per_batch = batch - real_per_batch
    for source, per_batch, size, offset in ((True, real_per_batch, n_real, 0), (False, syn_per_batch, n_syn, n_real)):
        span = size // per_batch  # batches per epoch of this source
        for epoch in range(2):
            drawn = [i for chunk in batches[epoch * span:(epoch + 1) * span] for i in chunk if (i < n_real) == source]
            assert sorted(drawn) == list(range(offset, offset + size))
    # deterministic for a seed (a resumed run re-creates the same stream)
    again = list(islice(iter(MixedSourceSampler(_concat(n_real, n_syn), batch, fraction, seed=3)), batch * 72))
    assert again == indices


def test_mixed_batches_through_the_generated_loader(tmp_path, registry):
    """The runner's own dataloader, built from the generated config, yields the requested mix."""
    import tisynth.segmentation.mm  # noqa: F401
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    real_m = write_toy_tiles(tmp_path / "real", {"train": 6}, seed=1)
    syn_m = write_toy_tiles(tmp_path / "syn", {"train": 9}, seed=2)
    files = {
        "real": str(write_pairs(tmp_path / "real.json", manifest_pairs(tmp_path / "real", real_m, "train"))),
        "syn": str(write_pairs(tmp_path / "syn.json", manifest_pairs(tmp_path / "syn", syn_m, "train"))),
    }
    cfg = SegmenterConfig.from_params(tiny_config(train={"batch_size": 4}))
    mix = MixConfig.from_params({"mode": "equal_budget", "real_fraction": 0.25})
    r = build_runner_config(cfg, registry, str(tmp_path / "w"), files["real"], None, files["syn"], mix)
    assert r["train_cfg"]["max_iters"] == cfg.train.iterations  # equal budget: same iterations as real-only
    DefaultScope.get_instance("test-mixing", scope_name="mmseg")
    loader = Runner.build_dataloader(r["train_dataloader"], seed=0)
    counts = []
    for batch in islice(iter(loader), 6):
        sources = Counter(s.metainfo["source"] for s in batch["data_samples"])
        counts.append((sources["real"], sources["synthetic"]))
        assert all(tuple(x.shape) == (3, 32, 32) for x in batch["inputs"])
    assert counts == [(1, 3)] * 6

    # uniform draw from the concatenation when no ratio is given: both sources appear
    r = build_runner_config(cfg, registry, str(tmp_path / "w"), files["real"], None, files["syn"], MixConfig())
    assert r["train_dataloader"]["sampler"]["type"] == "InfiniteSampler"
    loader = Runner.build_dataloader(r["train_dataloader"], seed=0)
    seen = Counter(s.metainfo["source"] for batch in islice(iter(loader), 10) for s in batch["data_samples"])
    assert seen["real"] > 0 and seen["synthetic"] > 0 and sum(seen.values()) == 40
