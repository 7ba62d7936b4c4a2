"""Your own videos: ``VideoListDataset`` reads the list file users bring them with.

``path label`` per line (the MMAction2 / PySlowFast convention; a label with spaces needs a path
with a file extension before it) or a CSV with the header ``path,label``; labels are class names
or indices; an optional class-list file holds one class name per line (line i = class i). In
place of a list, a folder of class folders (``train/<class>/<video>.mp4``, as torchvision's
ImageFolder lays out images): each video labelled with its folder's name.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from timematters.data.dataset import VIDEO_EXTENSIONS, VideoDataset, VideoSample, split_missing
from timematters.data.text import read_text
from timematters.data.video import IMAGE_EXTENSIONS, is_frame_folder

log = logging.getLogger(__name__)


def read_video_list(list_file: str | Path) -> list[tuple[str, str]]:
    """(path, label) pairs of a ``path label`` list or a ``path,label`` CSV, as written.

    UTF-8 with or without a byte-order mark (spreadsheets write one). A path listed twice with the
    same label is kept once (``list_duplicates`` names them); with two labels it is an error.
    """
    return [(path, label) for _, path, label in read_numbered_video_list(list_file)]


def read_numbered_video_list(list_file: str | Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) of each video ``read_video_list`` keeps: messages about an
    entry can then name its line."""
    first: dict[str, tuple[int, str]] = {}
    for number, path, label in _read_lines(list_file):
        if path in first and first[path][1] != label:
            line, other = first[path]
            raise ValueError(
                f"{list_file}:{number}: {path} is labelled {label!r} here and {other!r} on line "
                f"{line}; give each video one label"
            )
        first.setdefault(path, (number, label))
    return [(number, path, label) for path, (number, label) in first.items()]


def list_duplicates(list_file: str | Path) -> list[str]:
    """Paths that a list file names more than once."""
    counts = Counter(path for _, path, _ in _read_lines(list_file))
    return sorted(path for path, count in counts.items() if count > 1)


def _read_lines(list_file: str | Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) of every entry of a list file (of a folder of class folders:
    the entries in order, their paths absolute)."""
    list_file = Path(list_file)
    if list_file.is_dir():
        return _class_folder_entries(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"video list not found: {list_file}")
    lines = read_text(list_file).splitlines()
    numbered: list[tuple[int, str, str]] = []
    header = lines[0].strip().replace(" ", "") if lines else ""
    # A first line with a comma in a .csv file, or one that starts like the header, is a CSV
    # whose header is wrong or absent (a .csv of 'path label' lines is still read as such).
    looks_csv = list_file.suffix.lower() == ".csv" or header.startswith("path,")
    if header != "path,label" and "," in header and looks_csv:
        raise ValueError(f"{list_file}:1: a CSV needs the header path,label, got {lines[0]!r}")
    if header == "path,label":
        for number, row in enumerate(csv.DictReader(lines), 2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise ValueError(f"{list_file}:{number}: expected 'path,label', got {row}")
            numbered.append((number, path, label))
    else:
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = split_path_and_label(line.strip())
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{number}: expected 'path label', got {line!r}")
            numbered.append((number, parts[0], parts[1]))
    if not numbered:
        raise ValueError(f"video list {list_file} has no entries")
    return numbered


def _class_folder_entries(folder: Path) -> list[tuple[int, str, str]]:
    """The videos of a folder of class folders, each labelled with its class folder's name: video
    files and frame folders (hidden ones aside), in name order."""
    entries: list[tuple[int, str, str]] = []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_folder in classes:
        for item in sorted(class_folder.iterdir()):
            video = item.is_file() and item.suffix.lower() in VIDEO_EXTENSIONS
            if not item.name.startswith(".") and (video or is_frame_folder(item)):
                entries.append((len(entries) + 1, str(item.absolute()), class_folder.name))
    if not entries:
        raise ValueError(
            f"{folder} is a folder, and no class folders of videos are in it "
            f"({folder}/<class>/<video>.mp4, or frame folders in place of the videos): give "
            "such a folder, or a list file of 'path label' lines"
        )
    return entries


# A video or image file's extension, then the spaces before the label.
_NAME_END = re.compile(
    rf"\.(?:{'|'.join(ext.lstrip('.') for ext in (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS))})\s+",
    re.IGNORECASE,
)


def split_path_and_label(line: str) -> list[str]:
    """``[path, label]`` of a ``path label`` line. The label is what follows the path's file
    extension, so that a class name with spaces (Kinetics' "air drumming") stays one label
    rather than giving the path its first word; a path without an extension (a frame folder)
    ends at the last space (paths may hold spaces, labels then may not)."""
    end = next(reversed(list(_NAME_END.finditer(line))), None)
    # A label holds no "/": one after the extension makes it a folder's ("my.mp4 files/clip").
    if end and end.end() < len(line) and not re.search(r"[/\\]", line[end.end() :]):
        return [line[: end.end()].rstrip(), line[end.end() :]]
    return line.rsplit(maxsplit=1)


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
    """Class names in index order, one per line (a byte-order mark is no part of a name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    numbered = [
        (number, line.strip())
        for number, line in enumerate(read_text(path).splitlines(), 1)
        if line.strip()
    ]
    if not numbered:
        raise ValueError(f"class list {path} has no names (one class name per line)")
    refuse_duplicate_names(path, numbered)
    return [name for _, name in numbered]


def refuse_duplicate_names(
    path: str | Path, numbered: Sequence[tuple[int, str]], *, key: Callable[[str], str] = str
) -> None:
    """A class named twice would be an output that no video is labelled with (its labels all go
    to the first): an error naming both lines. ``key``: how names are compared."""
    first: dict[str, int] = {}
    for number, name in numbered:
        if key(name) in first:
            raise ValueError(
                f"{path}:{number}: the class {name!r} is named again (first on line "
                f"{first[key(name)]}); name each class once"
            )
        first[key(name)] = number


class LabelError(ValueError):
    """A label that is not a class; ``first`` is its position among the labels given, so that
    a list's message names its line; ``fix`` says what to do."""

    def __init__(self, message: str, first: int, fix: str):
        self.first, self.fix = first, fix
        super().__init__(message)


class UnknownLabels(LabelError):
    """Labels that name no class (``unknown``), from ``source``."""

    def __init__(self, unknown: list[str], first: int, source: str):
        self.unknown, self.source = unknown, source
        count = "1 label is" if len(unknown) == 1 else f"{len(unknown)} labels are"
        super().__init__(f"{count} not {source}, e.g. {unknown[:10]}", first, "correct it")


def _is_index(label: str) -> bool:
    return label.lstrip("-").isdigit()


def resolve_labels(
    labels: Sequence[str], classes: Sequence[str] | None, source: str = "in the class list"
) -> tuple[list[int], list[str]]:
    """Label strings -> (class indices, class names).

    With ``classes`` given, labels are matched as names first, then read as indices. Without it,
    integer labels are indices (classes named "0", "1", ...) and names are sorted into classes;
    a mix of the two is refused (a stray "1.5" would otherwise make every index a name, and
    sorting "10" before "2" renumber the classes). ``source`` says where ``classes`` came from,
    in the messages.
    """
    all_ints = all(_is_index(label) for label in labels)
    if classes is None:
        if all_ints:
            indices = [int(label) for label in labels]
            if min(indices) < 0:
                first = indices.index(min(indices))
                raise LabelError(
                    f"label {labels[first]} is a negative class index",
                    first,
                    "indices count from 0",
                )
            return indices, [str(i) for i in range(max(indices) + 1)]
        named = [label for label in labels if not _is_index(label)]
        if len(named) < len(labels):  # some indices, some names
            first = next(i for i, label in enumerate(labels) if not _is_index(label))
            raise LabelError(
                f"label {labels[first]!r} is not a class index, as the list's other labels "
                f"({', '.join(sorted({l for l in labels if _is_index(l)}, key=int)[:3])}, ...) are",
                first,
                "give every label as a class index, or every label as a class name",
            )
        classes = sorted(set(labels))
    index_of = {name: i for i, name in enumerate(classes)}
    if all(label in index_of for label in labels):
        return [index_of[label] for label in labels], list(classes)
    if all_ints:
        indices = [int(label) for label in labels]
        outside = [i for i, index in enumerate(indices) if not 0 <= index < len(classes)]
        if outside:
            first = outside[0]
            raise LabelError(
                f"class index {labels[first]} is outside the {len(classes)} classes {source} "
                f"(0 to {len(classes) - 1})",
                first,
                "correct it, or give the class list every class",
            )
        return indices, list(classes)
    unknown = sorted({label for label in labels if label not in index_of})
    first = next(i for i, label in enumerate(labels) if label not in index_of)
    raise UnknownLabels(unknown, first, source)


class VideoListDataset(VideoDataset):
    """Videos from a list file (see the module docstring).

    Relative paths are resolved against ``root`` (default: the list file's folder). ``classes``
    fixes the class order (e.g. the training list's classes for its validation list);
    ``classes_from`` names where they came from, for the message about a label not among them.
    """

    def __init__(
        self,
        list_file: str | Path,
        root: str | Path = "",
        class_list: str | Path = "",
        classes: Sequence[str] | None = None,
        classes_from: str = "",
        **options: Any,
    ):
        entries = read_numbered_video_list(list_file)
        source = "in the class list"
        if class_list:
            classes = read_class_list(class_list)
            source = f"in the class list {class_list}"
        elif classes is not None:
            given = f"of {classes_from}" if classes_from else "given"
            source = f"among the {len(classes)} classes {given}"
        try:
            labels, classes = resolve_labels([label for _, _, label in entries], classes, source)
        except UnknownLabels as error:
            raise ValueError(
                _unknown_labels_message(list_file, entries, error, class_list)
            ) from None
        except LabelError as error:
            raise ValueError(_label_error_message(list_file, entries, error)) from None
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
            for (_, path, _), label in zip(entries, labels, strict=True)
        ]
        folders = options.get("decoder") == "frames"  # listed paths are frame folders
        present, missing = split_missing(
            samples, str(base), listed_in=str(list_file), folders=folders
        )
        super().__init__(present, classes, missing=missing, **options)


def classes_of_list(list_file: str | Path) -> list[str]:
    """The classes a list's labels make without a class list (its training classes, which an
    evaluation list is numbered in)."""
    entries = read_numbered_video_list(list_file)
    try:
        return resolve_labels([label for _, _, label in entries], None)[1]
    except LabelError as error:
        raise ValueError(_label_error_message(list_file, entries, error)) from None


def _label_error_message(
    list_file: str | Path, entries: Sequence[tuple[int, str, str]], error: LabelError
) -> str:
    """``LIST:LINE: what is wrong with the label; fix``."""
    return f"{list_file}:{entries[error.first][0]}: {error}; {error.fix}"


def _unknown_labels_message(
    list_file: str | Path,
    entries: Sequence[tuple[int, str, str]],
    error: UnknownLabels,
    class_list: str | Path,
) -> str:
    """``LIST:LINE: label 'x' is not in the class list C[, nor are N other labels: [...]]; fix``."""
    number, _, label = entries[error.first]
    others = [name for name in error.unknown if name != label]
    message = f"{list_file}:{number}: label {label!r} is not {error.source}"
    if others:
        count = "is 1 other label" if len(others) == 1 else f"are {len(others)} other labels"
        message += f", nor {count}: {others[:10]}"
    labels = "labels" if others else "label"
    fix = f"correct the {labels}"
    if class_list:
        fix += f" or add the {'classes' if others else 'class'} to {class_list}"
    return f"{message}; {fix}"
