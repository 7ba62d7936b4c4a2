"""Diving48 from its official annotation files: 48 dives told apart by their sequence of
take-off, somersaults, twists and flight position, so that no single frame names the class.

The annotation folder holds ``Diving48_V2_train.json`` and ``Diving48_V2_test.json`` (the
re-annotated labels; the first release's ``Diving48_train.json`` / ``Diving48_test.json`` are read
when the V2 files are absent), lists of ``{vid_name, label, start_frame, end_frame}``, and
``Diving48_vocab.json``, the 48 classes as ``[take-off, somersault, twist, flight]`` words. The
videos are the trimmed clips ``<vid_name>.mp4`` anywhere under the root (the release's ``rgb/``
folder), or ``<vid_name>/`` frame folders with ``decoder="frames"``; the start and end frames are
the whole clip and are not used. Diving48 has no validation split: ``val`` reads the test list,
which is what every Diving48 result reports.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from timematters.data.dataset import VideoDataset, find_named_videos
from timematters.data.ssv2 import read_json

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
_SPLIT_FILES = {"train": "train", "val": "test", "test": "test"}
VOCABULARY = "Diving48_vocab.json"


def find_diving48_split(annotations: str | Path, split: Split) -> Path:
    """The split's list: ``Diving48_V2_<split>.json``, else the first release's file."""
    folder = Path(annotations)
    if not folder.is_dir():
        raise FileNotFoundError(f"Diving48 annotation folder not found: {folder}")
    if split not in _SPLIT_FILES:
        raise ValueError(f"unknown Diving48 split {split!r}; choose train, val or test")
    name = _SPLIT_FILES[split]
    candidates = [folder / f"Diving48_V2_{name}.json", folder / f"Diving48_{name}.json"]
    for path in candidates:
        if path.is_file():
            if path is candidates[1]:
                log.warning(f"{path}: the first release's labels (Diving48_V2_* is the corrected)")
            return path
    raise FileNotFoundError(
        f"Diving48 annotation file not found: {' or '.join(map(str, candidates))}"
    )


def read_diving48_classes(annotations: str | Path) -> list[str]:
    """The 48 class names in label order, each its words joined: "Back 15som 05Twis FREE"."""
    path = Path(annotations) / VOCABULARY
    if not path.is_file():
        raise FileNotFoundError(
            f"Diving48 class vocabulary not found: {path} (it comes with the annotation files)"
        )
    vocabulary = read_json(path)
    if not isinstance(vocabulary, list) or not all(
        isinstance(words, list) and all(isinstance(word, str) for word in words)
        for words in vocabulary
    ):
        raise ValueError(f"{path}: expected a list of classes, each a list of words")
    return [" ".join(words) for words in vocabulary]


def read_diving48_split(path: Path, num_classes: int) -> list[tuple[str, int]]:
    """(video name, class index) of every entry of a split file."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of videos, got a {type(entries).__name__}")
    pairs = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "vid_name" not in entry or "label" not in entry:
            raise ValueError(
                f"{path}: entry {number} is not {{vid_name, label, ...}}: {str(entry)[:80]}"
            )
        label = entry["label"]
        if not isinstance(label, int) or not 0 <= label < num_classes:
            raise ValueError(
                f"{path}: entry {number} ({entry['vid_name']}) has the label {label!r}, not one "
                f"of the {num_classes} classes of {VOCABULARY}"
            )
        pairs.append((str(entry["vid_name"]), label))
    return pairs


class Diving48Dataset(VideoDataset):
    """Diving48 videos of one split; other keyword arguments go to ``VideoDataset``."""

    def __init__(
        self, root: str | Path, annotations: str | Path, split: Split = "train", **options: Any
    ):
        classes = read_diving48_classes(annotations)
        split_file = find_diving48_split(annotations, split)
        entries = read_diving48_split(split_file, len(classes))
        samples, missing = find_named_videos(
            root,
            entries,
            listed_in=str(split_file),
            frames=options.get("decoder") == "frames",  # <vid_name>/ frame folders
        )
        options.setdefault("train", split == "train")
        super().__init__(samples, classes, missing=missing, **options)
