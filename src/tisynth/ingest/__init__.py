"""Ingestion: from a raw dataset (a folder of images + masks, or GeoTIFF scenes with label
rasters) to fixed-size tiles, a manifest and a TISynth-format JSON-lines export.

Two passes. :func:`plan_tiles` reads every source once to validate it (sizes, mask values,
readability, georeferencing) and to count classes per tile, and collects every problem before
anything is written; :func:`write_tiles` then reads the windows again and writes the tiles.
With ``skip_bad`` the bad sources are skipped and reported instead of stopping the run.

The stage's modules: :mod:`.config` (settings), :mod:`.discovery` (finding image/mask pairs,
class and split tables), :mod:`.planning` (first pass), :mod:`.writing` (second pass), with
:mod:`.rasters` (windowed raster reads), :mod:`.demo_scenes` (the embedded default's scenes)
and :mod:`.sensor_shift` (a simulated second sensor).
"""

from __future__ import annotations

from tisynth.ingest.config import (  # noqa: F401
    IMAGE_DIR_CANDIDATES,
    MASK_DIR_CANDIDATES,
    SPLITS,
    UNLABELED,
    DatasetConfig,
    IngestConfig,
)
from tisynth.ingest.discovery import (  # noqa: F401
    Problem,
    Source,
    discover,
    load_registry,
    read_split_table,
)
from tisynth.ingest.planning import (  # noqa: F401
    assign_splits,
    hold_out_labels,
    plan_source,
    plan_tiles,
)
from tisynth.ingest.writing import (  # noqa: F401
    check_target_classes,
    class_statistics,
    empty_manifest,
    manifest_from_plan,
    public_manifest,
    tisynth_jsonl,
    write_tiles,
)
