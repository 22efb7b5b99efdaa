"""The class registry: the one source of truth for semantic classes.

A dataset stores its labels with its own *raw* ids (GID-5 uses 0..4 plus 5 = unlabeled, LoveDA
uses 1..7 with 0 = no-data, the TISynth demo uses 0..23 with 255 = ignore). Everything inside
tisynth works in *index space*: the K real classes are renumbered 0..K-1 in ascending raw-id
order and every ignored pixel becomes :data:`IGNORE_INDEX` (255). Tiles, control encodings,
filtering, segmentation and metrics all use index space; the registry converts in both
directions and carries names (for prompts) and colours (for RGB masks and plots).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tisynth.errors import TisynthError

IGNORE_INDEX = 255
"""Index-space value of ignored pixels (losses, metrics and filtering skip it)."""

DEFAULT_PROMPT_TEMPLATE = "a satellite image of {classes}"

# Class names that mean "no label" when a class table does not say which id to ignore.
IGNORE_NAMES = frozenset({"unlabeled", "unlabelled", "ignore", "ignored", "no-data", "nodata", "no data", "void"})


class RegistryError(TisynthError, ValueError):
    """A class table or a mask disagrees with the registry."""


@dataclass(frozen=True)
class ClassInfo:
    """One real (not ignored) class."""

    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassRegistry:
    """Classes of a dataset, their raw ids, names and colours, and the ignore label.

    Attributes:
        classes: the real classes in ascending raw-id order; position = index-space id.
        ignore_id: raw id of "no label" in the source masks, or None when masks have none.
        ignore_color: RGB colour of ignored pixels in palette masks and plots.
        source: where the table came from (a path or "parameters"), used in error messages.
    """

    classes: tuple[ClassInfo, ...]
    ignore_id: int | None = None
    ignore_name: str = "ignore"
    ignore_color: tuple[int, int, int] = (0, 0, 0)
    source: str = "parameters"
    _lut: np.ndarray = field(init=False, repr=False, compare=False)
    _lut8: np.ndarray = field(init=False, repr=False, compare=False)
    _lut8_complete: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        lut = np.full(65536, -1, dtype=np.int32)
        for index, info in enumerate(self.classes):
            lut[info.id] = index
        if self.ignore_id is not None:
            lut[self.ignore_id] = IGNORE_INDEX
        object.__setattr__(self, "_lut", lut)
        # uint8 masks: unknown raw values map to 254, an index no registry uses (at most 254 classes
        # fit beside it and the ignore index), checked against the full table only when it shows up
        lut8 = np.where(lut[:256] < 0, 254, lut[:256]).astype(np.uint8)
        object.__setattr__(self, "_lut8", lut8)
        object.__setattr__(self, "_lut8_complete", bool((lut[:256] >= 0).all()))

    # ------------------------------------------------------------------ construction
    def _validate(self) -> None:
        where = f"class table {self.source}"
        if not self.classes:
            raise RegistryError(f"{where}: no classes (only an ignore entry or nothing at all)")
        if len(self.classes) > 254:
            raise RegistryError(f"{where}: {len(self.classes)} classes; at most 254 fit beside the ignore index 255")
        seen_ids: dict[int, str] = {}
        seen_names: dict[str, int] = {}
        seen_colors: dict[tuple[int, int, int], str] = {}
        for info in self.classes:
            if not 0 <= info.id <= 65535:
                raise RegistryError(f"{where}: class {info.name!r} has id {info.id}; ids must be 0..65535")
            if info.id in seen_ids:
                raise RegistryError(
                    f"{where}: duplicate id {info.id} ({seen_ids[info.id]!r} and {info.name!r})"
                )
            if not info.name.strip():
                raise RegistryError(f"{where}: class id {info.id} has an empty name")
            if info.name in seen_names:
                raise RegistryError(f"{where}: duplicate name {info.name!r} (ids {seen_names[info.name]} and {info.id})")
            _check_color(info.color, f"{where}: class {info.name!r}")
            if info.color in seen_colors:
                raise RegistryError(
                    f"{where}: classes {seen_colors[info.color]!r} and {info.name!r} share colour {info.color}; "
                    "RGB masks could not be decoded"
                )
            seen_ids[info.id] = info.name
            seen_names[info.name] = info.id
            seen_colors[info.color] = info.name
        if self.ignore_id is not None:
            if not 0 <= self.ignore_id <= 65535:
                raise RegistryError(f"{where}: ignore id {self.ignore_id} out of range 0..65535")
            if self.ignore_id in seen_ids:
                raise RegistryError(
                    f"{where}: ignore id {self.ignore_id} clashes with class {seen_ids[self.ignore_id]!r}; "
                    "a raw id is either a class or ignored"
                )
        _check_color(self.ignore_color, f"{where}: ignore colour")
        if self.ignore_color in seen_colors:
            raise RegistryError(
                f"{where}: ignore colour {self.ignore_color} is also the colour of class "
                f"{seen_colors[self.ignore_color]!r}"
            )

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        ignore_id: int | None | str = "auto",
        source: str = "parameters",
    ) -> ClassRegistry:
        """Build from rows with ``id``, ``name`` and a colour (``r,g,b`` or ``color: [r,g,b]``).

        ``ignore_id``: an int names the raw id to ignore; None means "nothing is ignored";
        "auto" takes a row whose ``ignore`` column is true, else a row named like
        "unlabeled"/"no-data"/"void". A row that is the ignore id leaves the class list and
        lends the ignore its name and colour.
        """
        rows = []
        for n, rec in enumerate(records):
            try:
                rid = int(rec["id"])
                name = str(rec["name"]).strip()
                if "color" in rec and rec["color"] is not None:
                    color = tuple(int(v) for v in rec["color"])
                else:
                    color = (int(rec["r"]), int(rec["g"]), int(rec["b"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise RegistryError(
                    f"class table {source}: row {n + 1} needs id, name and a colour (r,g,b): {dict(rec)}"
                ) from exc
            if len(color) != 3:
                raise RegistryError(f"class table {source}: class {name!r} colour {color} is not RGB")
            flag = str(rec.get("ignore", "") or "").strip().lower() in {"1", "true", "yes", "y"}
            rows.append((rid, name, color, flag))

        seen: dict[int, str] = {}
        for rid, name, _, _ in rows:
            if rid in seen:
                raise RegistryError(f"class table {source}: duplicate id {rid} ({seen[rid]!r} and {name!r})")
            seen[rid] = name

        if ignore_id == "auto":
            flagged = [r for r in rows if r[3]]
            if len(flagged) > 1:
                raise RegistryError(f"class table {source}: {len(flagged)} rows are marked ignore; at most one can be")
            if flagged:
                ignore_id = flagged[0][0]
            else:
                named = [r for r in rows if r[1].lower() in IGNORE_NAMES]
                ignore_id = named[0][0] if len(named) == 1 else None
        elif ignore_id is not None:
            ignore_id = int(ignore_id)
            clash = [r for r in rows if r[0] == ignore_id and not r[3] and r[1].lower() not in IGNORE_NAMES]
            if clash:
                raise RegistryError(
                    f"class table {source}: ignore id {ignore_id} clashes with class {clash[0][1]!r}; "
                    "mark that row with ignore=1 in the table if it really is to be ignored"
                )

        ignore_name, ignore_color = "ignore", (0, 0, 0)
        classes = []
        for rid, name, color, _ in sorted(rows, key=lambda r: r[0]):
            if rid == ignore_id:
                ignore_name, ignore_color = name, color
                continue
            classes.append(ClassInfo(rid, name, color))  # type: ignore[arg-type]
        if ignore_id is not None and ignore_name == "ignore":
            # ignore id not in the table: pick a colour no class uses
            used = {c.color for c in classes}
            for candidate in ((0, 0, 0), (255, 255, 255), (1, 1, 1)):
                if candidate not in used:
                    ignore_color = candidate
                    break
        return cls(tuple(classes), ignore_id, ignore_name, ignore_color, source)

    @classmethod
    def from_csv(cls, path: str | Path, ignore_id: int | None | str = "auto") -> ClassRegistry:
        """Read a class table: header ``id,name,r,g,b`` and an optional ``ignore`` column."""
        path = Path(path)
        if not path.is_file():
            raise RegistryError(f"class table {path}: file not found")
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"id", "name", "r", "g", "b"} - set(reader.fieldnames or [])
            if missing:
                raise RegistryError(f"class table {path}: missing column(s) {sorted(missing)}; need id,name,r,g,b")
            return cls.from_records(list(reader), ignore_id=ignore_id, source=str(path))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], root: str | Path | None = None) -> ClassRegistry:
        """Build from a parameters block.

        ``config`` holds either ``table`` (a CSV path, relative to ``root`` when given) or
        ``classes`` (a list of {id, name, color}), and optionally ``ignore_id`` (int, null or
        "auto").
        """
        ignore_id = config.get("ignore_id", "auto")
        if config.get("classes"):
            return cls.from_records(config["classes"], ignore_id=ignore_id, source="parameters")
        table = config.get("table")
        if not table:
            raise RegistryError("classes: give either `table` (a classes.csv) or `classes` (a list)")
        path = Path(table)
        if root is not None and not path.is_absolute():
            path = Path(root) / path
        return cls.from_csv(path, ignore_id=ignore_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes],
            "ignore_id": self.ignore_id,
            "ignore_name": self.ignore_name,
            "ignore_color": list(self.ignore_color),
            "ignore_index": IGNORE_INDEX,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassRegistry:
        classes = tuple(ClassInfo(int(c["id"]), str(c["name"]), tuple(c["color"])) for c in data["classes"])  # type: ignore[misc]
        return cls(
            classes,
            data.get("ignore_id"),
            data.get("ignore_name", "ignore"),
            tuple(data.get("ignore_color", (0, 0, 0))),  # type: ignore[arg-type]
            data.get("source", "parameters"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """Colour per index-space class (what mmseg's ``metainfo['palette']`` wants)."""
        return [c.color for c in self.classes]

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    def index_of(self, name: str) -> int:
        """Index-space id of a class name (case-insensitive)."""
        lowered = {c.name.lower(): i for i, c in enumerate(self.classes)}
        try:
            return lowered[name.strip().lower()]
        except KeyError:
            raise RegistryError(f"unknown class {name!r}; the registry has {self.names}") from None

    def class_differences(self, other: ClassRegistry) -> list[str]:
        """Differences in ids and names between two registries (empty when they agree)."""
        diffs = []
        mine = {c.id: c.name for c in self.classes}
        theirs = {c.id: c.name for c in other.classes}
        for rid in sorted(set(mine) | set(theirs)):
            a, b = mine.get(rid), theirs.get(rid)
            if a != b:
                diffs.append(f"id {rid}: {a!r} vs {b!r}")
        if self.ignore_id != other.ignore_id:
            diffs.append(f"ignore id: {self.ignore_id!r} vs {other.ignore_id!r}")
        return diffs

    # ------------------------------------------------------------------ masks
    def decode_ids(self, raw: np.ndarray, where: str = "mask") -> np.ndarray:
        """Raw-id mask (any integer dtype, 2-D) -> index-space uint8 mask.

        Raises :class:`RegistryError` naming ``where`` and the unknown values.
        """
        if raw.ndim != 2:
            raise RegistryError(f"{where}: expected a 2-D id mask, got shape {raw.shape}")
        if raw.dtype.kind not in "iu":
            if raw.dtype.kind == "f" and np.all(np.mod(raw, 1) == 0):
                raw = raw.astype(np.int64)
            else:
                raise RegistryError(f"{where}: mask dtype {raw.dtype} is not integer")
        if raw.dtype == np.uint8:  # the common case: a 256-entry table
            out = self._lut8[raw]
            if self._lut8_complete or (out != 254).all():
                return out.view(np.uint8) if out.dtype == np.uint8 else out.astype(np.uint8)
            bad = np.unique(raw[out == 254])
            bad = bad[self._lut[bad] < 0]
            if len(bad):
                known = self.ids + ([self.ignore_id] if self.ignore_id is not None else [])
                raise RegistryError(
                    f"{where}: value(s) {bad[:10].tolist()} not in the class registry (known ids {known})"
                )
            return out
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise RegistryError(f"{where}: mask values {raw.min()}..{raw.max()} outside 0..65535")
        out = self._lut[raw.astype(np.int64, copy=False)]
        if (out < 0).any():
            bad = np.unique(raw[out < 0])
            known = self.ids + ([self.ignore_id] if self.ignore_id is not None else [])
            raise RegistryError(
                f"{where}: value(s) {bad[:10].tolist()} not in the class registry (known ids {known})"
            )
        return out.astype(np.uint8)

    def decode_rgb(self, rgb: np.ndarray, where: str = "mask") -> np.ndarray:
        """RGB palette mask (H, W, 3) -> index-space uint8 mask; unknown colours are an error."""
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise RegistryError(f"{where}: expected an RGB mask (H, W, 3), got shape {rgb.shape}")
        rgb = rgb[..., :3].astype(np.uint32)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(code.shape, -1, dtype=np.int32)
        for index, info in enumerate(self.classes):
            r, g, b = info.color
            out[code == ((r << 16) | (g << 8) | b)] = index
        r, g, b = self.ignore_color
        if self.ignore_id is not None:
            out[code == ((r << 16) | (g << 8) | b)] = IGNORE_INDEX
        if (out < 0).any():
            bad = np.unique(code[out < 0])[:5]
            colours = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in bad]
            raise RegistryError(f"{where}: colour(s) {colours} not in the class registry palette")
        return out.astype(np.uint8)

    def decode(self, mask: np.ndarray, where: str = "mask") -> np.ndarray:
        """Decode a raw mask that is either an id image (2-D) or an RGB palette image."""
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask.ndim == 3:
            if mask.shape[2] >= 3 and np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(
                mask[..., 1], mask[..., 2]
            ) and not self._all_grey_palette():
                # a grey mask saved as RGB: the channels hold ids
                return self.decode_ids(mask[..., 0], where)
            return self.decode_rgb(mask, where)
        return self.decode_ids(mask, where)

    def _all_grey_palette(self) -> bool:
        return all(c.color[0] == c.color[1] == c.color[2] for c in self.classes)

    def encode_raw(self, index_mask: np.ndarray) -> np.ndarray:
        """Index-space mask -> raw ids (uint8 when they fit, else uint16)."""
        table = np.zeros(256, dtype=np.int64)
        table[: self.num_classes] = self.ids
        table[IGNORE_INDEX] = self.ignore_id if self.ignore_id is not None else IGNORE_INDEX
        out = table[index_mask]
        return out.astype(np.uint8 if out.max(initial=0) < 256 else np.uint16)

    def colorize(self, index_mask: np.ndarray) -> np.ndarray:
        """Index-space mask -> RGB uint8 image with the registry colours."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.array(self.palette, dtype=np.uint8)
        lut[IGNORE_INDEX] = self.ignore_color
        return lut[index_mask]

    def histogram(self, index_mask: np.ndarray) -> np.ndarray:
        """Pixel count per class, ignore last: array of length K + 1."""
        counts = np.bincount(index_mask.ravel(), minlength=256)
        return np.concatenate([counts[: self.num_classes], counts[IGNORE_INDEX : IGNORE_INDEX + 1]])

    # ------------------------------------------------------------------ prompts
    def present(self, index_mask: np.ndarray) -> list[int]:
        """Index-space classes present in a mask, ascending, ignore excluded."""
        values = np.unique(index_mask)
        return [int(v) for v in values if v != IGNORE_INDEX and v < self.num_classes]

    def prompt(self, classes: np.ndarray | Sequence[int], template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
        """Prompt from an index mask or a list of index-space classes.

        Class names are joined by single spaces in ascending id order (the authors'
        convention); ``template`` holds ``{classes}``.
        """
        present = self.present(classes) if isinstance(classes, np.ndarray) else sorted(set(int(c) for c in classes))
        names = " ".join(self.classes[i].name for i in present if 0 <= i < self.num_classes)
        return template.format(classes=names).strip()


def _check_color(color: Sequence[int], where: str) -> None:
    if len(color) != 3 or any((not isinstance(v, (int, np.integer))) or not 0 <= v <= 255 for v in color):
        raise RegistryError(f"{where}: colour {tuple(color)} must be three integers in 0..255")
