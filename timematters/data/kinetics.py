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
from pathlib import Path
from typing import Any, Literal

from timematters.data.dataset import VideoDataset, find_named_videos

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
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        absent = [c for c in _COLUMNS if c not in columns]
        if absent:
            raise ValueError(f"{path}: missing columns {absent}; expected {','.join(_COLUMNS)},...")
        rows = list(reader)
    if split is not None and "split" in columns:
        words = _SPLIT_WORDS[split]
        rows = [row for row in rows if row["split"].strip().lower() in words]
        if not rows:
            raise ValueError(
                f"{path} has no {split} rows (its split column): give data.annotations the "
                "folder of the official CSVs, each split its own"
            )
    return [
        (
            row["label"].strip(),
            f"{row['youtube_id']}_{int(float(row['time_start'])):06d}"
            f"_{int(float(row['time_end'])):06d}",
        )
        for row in rows
    ]


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
        rows = read_kinetics_csv(split_csv, split if one_file else None)
        if classes is None:  # the training rows' labels, so that every split numbers them alike
            if not one_file:
                source = read_kinetics_csv(find_kinetics_csv(annotations, "train"))
            else:
                try:
                    source = read_kinetics_csv(split_csv, "train")
                except ValueError:  # a file of one split only: its own labels
                    source = rows
            classes = sorted({label for label, _ in source})
        index_of = {name: i for i, name in enumerate(classes)}
        unknown = sorted({label for label, _ in rows if label not in index_of})
        if unknown:
            raise ValueError(
                f"{len(unknown)} {split} labels are not training classes: {unknown[:5]}"
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
