"""Named subsets of a dataset's classes, and its time-reversed class pairs: subsets files.

A subsets file (YAML or JSON) maps a subset name to class names or indices; the reserved key
``pairs`` lists pairs of classes that are each other's time reverse (``[a, b]``), which the
reverse test's flip rate reads. Names are matched exactly against the dataset's classes; a name
that matches none is an error that lists them all (``strict``), or, for a shipped file read
against a dataset it was not written for, reported and left out.

SSv2's Temporal and Static subsets (paper Appendix A) and its time-reversed pairs are one such
file, shipped with the package (``ssv2_subsets.yaml``), Jester's another (``jester_subsets.yaml``);
``data.subsets=FILE`` gives any dataset its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from timematters.data.text import read_text

SSV2_SUBSETS = Path(__file__).with_name("ssv2_subsets.yaml")
PAIRS_KEY = "pairs"


@dataclass(frozen=True)
class ClassGroups:
    """Subsets (name -> sorted class indices), pairs (class -> partner) and the names of the file
    that matched no class."""

    subsets: dict[str, list[int]] = field(default_factory=dict)
    pairs: dict[int, int] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)


def read_subsets(path: str | Path) -> dict[str, Any]:
    """A subsets file as written: name -> list of names or indices (and ``pairs``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"subsets file not found: {path}")
    text = read_text(path)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {error}"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of subset name -> list of classes")
    return data


def match_groups(
    data: dict[str, Any], classes: Sequence[str], *, where: str = "", strict: bool = True
) -> ClassGroups:
    """A subsets file's contents against a class list (names first, then indices)."""
    index_of = {name: i for i, name in enumerate(classes)}

    def resolve(item: Any) -> int | None:
        if isinstance(item, str) and item in index_of:
            return index_of[item]
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(classes):
            return item
        return None

    subsets, unmatched = {}, {}
    for name, items in data.items():
        if name == PAIRS_KEY:
            continue
        found = [resolve(item) for item in items]
        subsets[name] = sorted({i for i in found if i is not None})
        missing = [str(item) for item, i in zip(items, found, strict=True) if i is None]
        if missing:
            unmatched[name] = missing
    pairs: dict[int, int] = {}
    for pair in data.get(PAIRS_KEY, []):
        ends = [resolve(item) for item in pair] if isinstance(pair, list) else []
        if len(ends) != 2 or None in ends:
            unmatched.setdefault(PAIRS_KEY, []).append(str(pair))
            continue
        a, b = ends
        pairs[a], pairs[b] = b, a
    if strict and unmatched:
        lines = "; ".join(f"{name}: {', '.join(items[:8])}" for name, items in unmatched.items())
        raise ValueError(
            f"{where or 'subsets'}: names that are not classes of the dataset ({lines}); "
            f"its {len(classes)} classes start {', '.join(map(repr, list(classes)[:3]))}"
        )
    return ClassGroups(subsets=subsets, pairs=pairs, unmatched=unmatched)


def load_groups(path: str | Path, classes: Sequence[str], *, strict: bool = True) -> ClassGroups:
    return match_groups(read_subsets(path), classes, where=str(path), strict=strict)


def match_subset(names: Sequence[str], classes: Sequence[str]) -> tuple[list[int], list[str]]:
    """Class indices of ``names`` in ``classes`` (sorted) and the names that match no class."""
    index_of = {name: i for i, name in enumerate(classes)}
    matched = sorted(index_of[name] for name in names if name in index_of)
    unmatched = [name for name in names if name not in index_of]
    return matched, unmatched


_SSV2 = read_subsets(SSV2_SUBSETS)
TEMPORAL_CLASSES = tuple(_SSV2["temporal"])
STATIC_CLASSES = tuple(_SSV2["static"])
