"""Jester and Something-Something v1: the CSV releases of 20BN, one format for both.

The annotation folder holds ``<prefix>-labels.csv`` (one class name per line, in index order),
``<prefix>-train.csv`` and ``<prefix>-validation.csv`` (``id;class name`` per line) and
``<prefix>-test.csv`` (ids only, so no labels: it cannot be evaluated), where the prefix is
``jester-v1`` or ``something-something-v1``. The videos were released as folders of JPEG frames,
``<id>/00001.jpg`` ... (the ``20bn-jester-v1/`` folder): read them with ``decoder="frames"``;
videos made from them (``<id>.webm``, ...) are found under the root with the video decoders.

Jester's gestures come in time-reversed pairs (swiping left / right, zooming in / out, ...),
shipped as ``jester_subsets.yaml`` with its Temporal and Static subsets; Something-Something v1
keeps the subsets and pairs a ``data.subsets`` file gives it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from timematters.data.dataset import VideoDataset, find_named_videos
from timematters.data.subsets import load_groups
from timematters.data.text import read_text
from timematters.data.videolist import refuse_duplicate_names

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
PREFIXES = {"jester": "jester-v1", "ssv1": "something-something-v1"}
JESTER_SUBSETS = Path(__file__).with_name("jester_subsets.yaml")
_SPLIT_FILES = {"train": "train", "val": "validation", "test": "test"}


def find_csv(annotations: str | Path, prefix: str, name: str) -> Path:
    """``<prefix>-<name>.csv`` in the annotation folder."""
    folder = Path(annotations)
    if not folder.is_dir():
        raise FileNotFoundError(f"annotation folder not found: {folder}")
    path = folder / f"{prefix}-{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    return path


def read_classes(annotations: str | Path, prefix: str) -> list[str]:
    """Class names in index order, one per line of ``<prefix>-labels.csv``."""
    path = find_csv(annotations, prefix, "labels")
    numbered = [
        (number, line.strip())
        for number, line in enumerate(read_text(path).splitlines(), 1)
        if line.strip()
    ]
    if not numbered:
        raise ValueError(f"{path} names no classes (one class name per line)")
    refuse_duplicate_names(path, numbered)
    return [name for _, name in numbered]


def read_split(
    annotations: str | Path, prefix: str, split: Split, classes: list[str]
) -> tuple[Path, list[tuple[str, int]]]:
    """The split's file and its (video id, class index) entries."""
    if split not in _SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    path = find_csv(annotations, prefix, _SPLIT_FILES[split])
    index_of = {name: i for i, name in enumerate(classes)}
    entries = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        video_id, _, name = line.partition(";")
        if not name.strip():
            raise ValueError(
                f"{path}:{number}: expected 'id;class name', got {line!r} (the test list has no "
                "labels: evaluate on the validation list)"
            )
        if name.strip() not in index_of:
            raise ValueError(
                f"{path}:{number}: class {name.strip()!r} is not in {prefix}-labels.csv"
            )
        entries.append((video_id.strip(), index_of[name.strip()]))
    if not entries:
        raise ValueError(f"{path} lists no videos")
    return path, entries


class TwentyBNDataset(VideoDataset):
    """Jester (``dataset="jester"``) or Something-Something v1 (``"ssv1"``) videos of one split;
    other keyword arguments go to ``VideoDataset``."""

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        split: Split = "train",
        dataset: Literal["jester", "ssv1"] = "jester",
        **options: Any,
    ):
        prefix = PREFIXES[dataset]
        classes = read_classes(annotations, prefix)
        split_file, entries = read_split(annotations, prefix, split, classes)
        samples, missing = find_named_videos(
            root,
            entries,
            listed_in=str(split_file),
            frames=options.get("decoder") == "frames",
            extension=".webm",
        )
        options.setdefault("train", split == "train")
        if dataset == "jester":
            groups = load_groups(JESTER_SUBSETS, classes, strict=False)
            unmatched = [name for names in groups.unmatched.values() for name in names]
            if unmatched:
                log.warning(
                    f"{len(unmatched)} entries of {JESTER_SUBSETS.name} name no class of "
                    f"{prefix}-labels.csv and are left out (first: {unmatched[0]})"
                )
            options.setdefault("subsets", groups.subsets)
        super().__init__(samples, classes, missing=missing, **options)
        if dataset == "jester":
            self.pairs = groups.pairs  # time-reversed class pairs: the reverse test's flip rate
