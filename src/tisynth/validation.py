"""Every parameter block a pipeline consumes is checked before its first node runs.

A typo in a nested key (``sample.sampler.guidance_scal``) or an invalid value then fails in
seconds, naming the key path and the nearest valid name, before any output is read, moved or
deleted, not hours later inside the node that reads it.

Two checks per block:

* **keys**: every key must exist in the project's defaults (``conf/base/parameters_*.yml``, the
  one place they are written down, each with a comment); environments and ``--params`` only
  override them. Blocks whose keys a typed config owns (``generator``, ``segmenter``, the
  generator's training stages, ``sample.sampler``) are checked by that config instead.
* **values**: the stage's own typed settings are built (``IngestConfig``, ``PairingConfig``,
  ``TrainConfig`` per stage, ``SynthesisSettings``, ``ReadingSettings``, ``SegmenterConfig``, ``FilterSettings``,
  ``SegmentSettings``, ...),
  which refuse what they cannot use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tisynth.errors import TisynthError
from tisynth.params import check_keys


class ParameterError(TisynthError, ValueError):
    """A parameter key or value that the project cannot use."""


FREE = None
"""In a tree of known keys: a value whose inner keys are not checked here."""

# Sub-trees whose keys a typed config checks (its error names the key); free in the key check.
_TYPED_SUBTREES: dict[str, tuple[tuple[str, ...], ...]] = {
    "generator": ((),),
    "segmenter": ((),),
    "train_generator": (("common",), ("base",), ("A",), ("B",), ("report", "sample"), ("common", "sample")),
    "sample": (("sampler",), ("ref_moments",)),
    "ref_steering": (("sample",),),
    "ref_augment": ((),),
    # user-named entries
    "dataset": (("classes",),),
    "target": (("classes",),),
    "segment": (("eval_sets",),),
    "demo_scenes": (("classes",),),
}


def load_defaults(conf_base: str | Path) -> dict[str, Any]:
    """The parameter defaults: every ``parameters*.yml`` of the base environment, merged."""
    out: dict[str, Any] = {}
    for path in sorted(Path(conf_base).glob("parameters*.yml")):
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ParameterError(f"{path}: expected a mapping of parameter blocks")
        out.update(data)
    return out


def _known_tree(block: str, defaults: Any) -> Any:
    if not isinstance(defaults, Mapping):
        return defaults
    tree = {k: _known_tree(block, v) for k, v in defaults.items()}
    for path in _TYPED_SUBTREES.get(block, ()):
        if not path:
            return FREE
        node = tree
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and path[-1] in node:
            node[path[-1]] = FREE
    return tree


def _generator(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.generator.config import resolve_generator_config

    resolve_generator_config(block)


def _train_generator(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.generator.sample import SampleConfig
    from tisynth.generator.stages import STAGES, stage_config
    from tisynth.generator.train import TrainConfig

    for stage in STAGES:
        merged = stage_config(block, stage, params.get("ref_augment"))
        if int(merged.get("steps") or 0) <= 0:  # a skipped stage: its keys are still checked
            merged["steps"] = 1
        try:
            SampleConfig.from_dict(TrainConfig.from_dict(merged).sample)
        except TisynthError as exc:
            raise ParameterError(f"train_generator.{stage} (common + {stage}): {exc}") from exc
    SampleConfig.from_dict((block.get("report") or {}).get("sample"))
    _style_pairs_and_unlabeled(params, block)


def _style_pairs_and_unlabeled(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    """``train_generator.style_pairs`` and ``.unlabeled``: ranges, counts, and a target that has images."""
    from tisynth.styles import StyleFamily

    style = block.get("style_pairs") or {}
    StyleFamily.from_dict(style.get("family"), where="train_generator.style_pairs.family")
    for key, low in (("k", 1), ("set_size", 2)):
        value = style.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ParameterError(f"train_generator.style_pairs.{key} must be an integer >= {low}, got {value!r}")
    cache_on = bool((block.get("latent_cache") or {}).get("enabled", False))
    if style.get("enabled", False) and not cache_on:
        raise ParameterError("train_generator.style_pairs.enabled needs train_generator.latent_cache.enabled: the styled tiles are cached latents")
    unl = block.get("unlabeled") or {}
    repeat = unl.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ParameterError(f"train_generator.unlabeled.repeat must be an integer >= 1, got {repeat!r}")
    if unl.get("enabled", False) and not cache_on:
        raise ParameterError("train_generator.unlabeled.enabled needs train_generator.latent_cache.enabled: mask-free tiles are cached latents")
    root = str((params.get("target") or {}).get("root") or "")
    if unl.get("enabled", False) and unl.get("target", True) and root:
        from tisynth.io import IMAGE_SUFFIXES

        folder = Path(root)
        images = [f for sub in ("images", "scenes", "") for f in ((folder / sub).glob("*") if (folder / sub).is_dir() else [])
                  if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise ParameterError(f"target.root: {folder} holds no images (looked in images/, scenes/ and the folder itself); "
                                 "train_generator.unlabeled.target needs the target domain's tiles")


def _ingest(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.ingest import IngestConfig

    IngestConfig.from_params(block)


def _references(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.references import PairingConfig

    PairingConfig.from_params(block)


def _ref_augment(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.generator.augment import RefAugment

    RefAugment(**block)


def _sample(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.generator.synthesis import SynthesisSettings

    SynthesisSettings.from_params(block, env={})


def _read_generator(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.generator.reading import ReadingSettings

    ReadingSettings.from_params(block, (params.get("sample") or {}).get("sampler"))


def _ref_steering(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.generator.sample import SampleConfig
    from tisynth.generator.steering import SteeringSettings

    cfg = SteeringSettings.from_params(block)
    SampleConfig.from_dict({**dict((params.get("sample") or {}).get("sampler") or {}), **cfg.sample, "mode": "tisynth"})


def _filter(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.filtering import FilterSettings

    FilterSettings.from_params(block)


def _segment(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.segmentation.config import SegmentSettings

    SegmentSettings.from_params(block)


def _segmenter(params: Mapping[str, Any], block: Mapping[str, Any]) -> None:
    from tisynth.segmentation.config import SegmenterConfig

    SegmenterConfig.from_params(block)


VALUE_CHECKS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], None]] = {
    "generator": _generator,
    "train_generator": _train_generator,
    "ingest": _ingest,
    "references": _references,
    "ref_augment": _ref_augment,
    "sample": _sample,
    "read_generator": _read_generator,
    "ref_steering": _ref_steering,
    "segmenter": _segmenter,
    "filter": _filter,
    "segment": _segment,
}


def validate_parameters(params: Mapping[str, Any], defaults: Mapping[str, Any], blocks: Iterable[str] | None = None) -> list[str]:
    """Check ``blocks`` of ``params`` (default: every block); returns the blocks checked.

    Raises:
        ParameterError: an unknown key (with its path and the nearest valid name) or a value
            that the block's settings refuse (with the original message).
    """
    names = sorted(params) if blocks is None else sorted(set(blocks))
    checked = []
    for name in names:
        if name not in params:
            continue
        block = params[name]
        if name not in defaults:
            raise ParameterError(f"unknown parameter block {name!r}; the project's blocks are {sorted(defaults)}")
        known = _known_tree(name, defaults[name])
        if isinstance(block, Mapping) and isinstance(known, Mapping):
            check_keys(block, known, name, ParameterError)
        check = VALUE_CHECKS.get(name)
        if check is not None and isinstance(block, Mapping):
            try:
                check(params, block)
            except ParameterError:
                raise
            except (TisynthError, TypeError, ValueError) as exc:
                raise ParameterError(f"parameters {name}: {exc}") from exc
        checked.append(name)
    return checked


def blocks_of(inputs: Iterable[str]) -> set[str]:
    """Parameter blocks named by a pipeline's inputs (``params:sample`` -> ``sample``)."""
    return {name.split(":", 1)[1].split(".", 1)[0] for name in inputs if name.startswith("params:")}
