"""Your own videos: ``VideoListDataset`` reads the list file users bring them with.

``path label`` per line (the MMAction2 / PySlowFast convention) or a CSV with the header
``path,label``; labels are class names or indices; an optional class-list file holds one class
name per line (line i = class i).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from timematters.data.dataset import VideoDataset, VideoSample, split_missing

log = logging.getLogger(__name__)


def read_video_list(list_file: str | Path) -> list[tuple[str, str]]:
    """(path, label) pairs of a ``path label`` list or a ``path,label`` CSV, as written.

    UTF-8 with or without a byte-order mark (spreadsheets write one). A path listed twice with the
    same label is kept once (``list_duplicates`` names them); with two labels it is an error.
    """
    first: dict[str, tuple[int, str]] = {}
    for number, path, label in _read_lines(list_file):
        if path in first and first[path][1] != label:
            line, other = first[path]
            raise ValueError(
                f"{list_file}:{number}: {path} is labelled {label!r} here and {other!r} on line "
                f"{line}; give each video one label"
            )
        first.setdefault(path, (number, label))
    return [(path, label) for path, (_, label) in first.items()]


def list_duplicates(list_file: str | Path) -> list[str]:
    """Paths that a list file names more than once."""
    counts = Counter(path for _, path, _ in _read_lines(list_file))
    return sorted(path for path, count in counts.items() if count > 1)


def _read_lines(list_file: str | Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) of every entry of a list file."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"video list not found: {list_file}")
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{list_file}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    numbered: list[tuple[int, str, str]] = []
    if lines and lines[0].strip().replace(" ", "") == "path,label":
        for number, row in enumerate(csv.DictReader(lines), 2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise ValueError(f"{list_file}:{number}: expected 'path,label', got {row}")
            numbered.append((number, path, label))
    else:
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.strip().rsplit(maxsplit=1)  # the label is last; paths may hold spaces
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{number}: expected 'path label', got {line!r}")
            numbered.append((number, parts[0], parts[1]))
    if not numbered:
        raise ValueError(f"video list {list_file} has no entries")
    return numbered


def similar_class_names(classes: Sequence[str], counts: dict[int, int]) -> list[tuple[str, str]]:
    """Pairs (rare, common) of class names that look like a typo of each other: the rare one has
    at most 2 videos, the other more, and they differ by a character or two."""
    pairs = []
    for rare, count in counts.items():
        if count > 2:
            continue
        for other, other_count in counts.items():
            if other != rare and other_count > count:
                a, b = classes[rare].lower(), classes[other].lower()
                if SequenceMatcher(None, a, b).ratio() >= 0.85 and abs(len(a) - len(b)) <= 2:
                    pairs.append((classes[rare], classes[other]))
                    break
    return pairs


def read_class_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def resolve_labels(
    labels: Sequence[str], classes: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    """Label strings -> (class indices, class names).

    With ``classes`` given, labels are matched as names first, then read as indices. Without it,
    integer labels are indices (classes named "0", "1", ...) and names are sorted into classes.
    """
    all_ints = all(label.lstrip("-").isdigit() for label in labels)
    if classes is None:
        if all_ints:
            indices = [int(label) for label in labels]
            if min(indices) < 0:
                raise ValueError(f"negative class index {min(indices)}")
            return indices, [str(i) for i in range(max(indices) + 1)]
        classes = sorted(set(labels))
    index_of = {name: i for i, name in enumerate(classes)}
    if all(label in index_of for label in labels):
        return [index_of[label] for label in labels], list(classes)
    if all_ints:
        indices = [int(label) for label in labels]
        bad = sorted({i for i in indices if not 0 <= i < len(classes)})
        if bad:
            raise ValueError(f"class indices {bad[:10]} are outside the {len(classes)} classes")
        return indices, list(classes)
    unknown = sorted({label for label in labels if label not in index_of})
    raise ValueError(f"{len(unknown)} labels are not in the class list, e.g. {unknown[:10]}")


class VideoListDataset(VideoDataset):
    """Videos from a list file (see the module docstring).

    Relative paths are resolved against ``root`` (default: the list file's folder). ``classes``
    fixes the class order (e.g. the training list's classes for its validation list).
    """

    def __init__(
        self,
        list_file: str | Path,
        root: str | Path = "",
        class_list: str | Path = "",
        classes: Sequence[str] | None = None,
        **options: Any,
    ):
        entries = read_video_list(list_file)
        if class_list:
            classes = read_class_list(class_list)
        labels, classes = resolve_labels([label for _, label in entries], classes)
        for rare, common in similar_class_names(classes, Counter(labels)):
            log.warning(
                f"{list_file}: class {rare!r} has almost no videos and looks like {common!r}: "
                "a typo? (`timematters data check` lists such classes)"
            )
        base = Path(root) if root else Path(list_file).parent
        if not base.is_dir():
            raise FileNotFoundError(f"video root not found: {base}")
        samples = [
            VideoSample(str(base / path), label, path)
            for (path, _), label in zip(entries, labels, strict=True)
        ]
        present, missing = split_missing(samples, str(base))
        super().__init__(present, classes, missing=missing, **options)
