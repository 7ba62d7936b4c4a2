"""Kinetics-400 from its official CSV files.

Each CSV row is ``label,youtube_id,time_start,time_end,split[,is_cc]``; the video of a row is the
file ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`` anywhere under the root (in class
folders, split folders, or flat; other video extensions are accepted too), or with
``decoder="frames"`` a folder of that name holding the frame images. Classes are the sorted
label names of the training CSV, so every split numbers them alike. Videos that were never
downloaded are left out with a warning (``missing``): on Kinetics some always are.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Literal

from timematters.data.dataset import VideoDataset, find_named_videos
from timematters.data.text import read_text

Split = Literal["train", "val", "test"]
_SPLIT_WORDS = {"train": ("train",), "val": ("validate", "val"), "test": ("test",)}
_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def find_kinetics_csv(annotations: str | Path, split: Split) -> Path:
    """The split's CSV: ``annotations`` itself if it is a file (its rows of the split, where it
    has a split column), else the folder's one CSV whose name holds the split (train.csv,
    validate.csv, kinetics_400_val.csv, ...)."""
    path = Path(annotations)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"Kinetics annotation folder not found: {path}")
    if split not in _SPLIT_WORDS:
        raise ValueError(f"unknown Kinetics split {split!r}; choose train, val or test")
    for word in _SPLIT_WORDS[split]:
        found = sorted(p for p in path.glob("*.csv") if word in p.stem.lower())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"several {split} CSVs in {path}: {[p.name for p in found]}")
    raise FileNotFoundError(f"no {split} CSV (name containing {_SPLIT_WORDS[split]}) in {path}")


def read_kinetics_csv(path: str | Path, split: Split | None = None) -> list[tuple[str, str]]:
    """(label name, video file stem) of every row; with ``split``, of that split's rows where
    the file has a ``split`` column (one CSV given for every split holds them all)."""
    return [(label, stem) for _, label, stem in read_numbered_kinetics_csv(path, split)]


def read_numbered_kinetics_csv(
    path: str | Path, split: Split | None = None
) -> list[tuple[int, str, str]]:
    """(line number, label name, video file stem) of the rows ``read_kinetics_csv`` gives: a
    message about a row can then name its line."""
    # UTF-8 with or without the byte-order mark a spreadsheet saves, which would otherwise make
    # the first column "\ufefflabel".
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    columns = reader.fieldnames or []
    absent = [c for c in _COLUMNS if c not in columns]
    if absent:
        raise ValueError(f"{path}: missing columns {absent}; expected {','.join(_COLUMNS)},...")
    rows = []  # every row checked, whatever its split: a short one has no split value either
    for row in reader:
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue  # a blank line (csv gives a row of empty fields for ",,,")
        split_word = (row.get("split") or "").strip().lower()
        rows.append((reader.line_num, *_label_and_stem(path, reader.line_num, row), split_word))
    if split is not None and "split" in columns:
        rows = [row for row in rows if row[3] in _SPLIT_WORDS[split]]
        if not rows:
            raise ValueError(
                f"{path} has no {split} rows (its split column): give data.annotations the "
                "folder of the official CSVs, each split its own"
            )
    return [(number, label, stem) for number, label, stem, _ in rows]


def _label_and_stem(path: str | Path, number: int, row: dict) -> tuple[str, str]:
    """A row's label and its video's file stem; a short row, an empty label or id, or a time that
    is no number is an error naming the line."""
    values = {column: (row.get(column) or "").strip() for column in _COLUMNS}
    empty = [column for column in _COLUMNS if not values[column]]
    if empty:
        shown = ",".join(value or "" for value in row.values() if isinstance(value, str))
        raise ValueError(
            f"{path}:{number}: no {' or '.join(empty)} in {shown!r}; each row needs "
            f"{','.join(_COLUMNS)}"
        )
    times = []
    for column in ("time_start", "time_end"):
        try:
            times.append(int(float(values[column])))
        except ValueError:
            raise ValueError(
                f"{path}:{number}: {column} {values[column]!r} is not a number of seconds"
            ) from None
    return values["label"], f"{values['youtube_id']}_{times[0]:06d}_{times[1]:06d}"


class KineticsDataset(VideoDataset):
    """Kinetics videos of one split; other keyword arguments go to ``VideoDataset``."""

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        split: Split = "train",
        classes: list[str] | None = None,
        **options: Any,
    ):
        split_csv = find_kinetics_csv(annotations, split)
        one_file = Path(annotations).is_file()
        numbered = read_numbered_kinetics_csv(split_csv, split if one_file else None)
        rows = [(label, stem) for _, label, stem in numbered]
        source = "among the classes given"
        if classes is None:  # the training rows' labels, so that every split numbers them alike
            train_csv = split_csv if one_file else find_kinetics_csv(annotations, "train")
            source = f"a label of the training CSV {train_csv}"
            if not one_file:
                labels = read_kinetics_csv(train_csv)
            else:
                try:
                    labels = read_kinetics_csv(split_csv, "train")
                except ValueError:  # a file of one split only: its own labels
                    labels = rows
            classes = sorted({label for label, _ in labels})
        index_of = {name: i for i, name in enumerate(classes)}
        unknown = [(number, label) for number, label, _ in numbered if label not in index_of]
        if unknown:
            number, label = unknown[0]
            others = sorted({name for _, name in unknown} - {label})
            more = f" (nor are {len(others)} other labels: {others[:5]})" if others else ""
            raise ValueError(
                f"{split_csv}:{number}: the {split} label {label!r} is not {source}{more}; "
                "correct the label, or train on a CSV that has the class"
            )
        samples, missing = find_named_videos(
            root,
            [(stem, index_of[label]) for label, stem in rows],
            listed_in=str(split_csv),
            frames=options.get("decoder") == "frames",  # <stem>/ frame folders, not <stem>.mp4
            shown=lambda stem, label: f"{classes[label]}/{stem}",
        )
        options.setdefault("train", split == "train")
        super().__init__(samples, classes, missing=missing, **options)
