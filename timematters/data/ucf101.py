"""UCF101 from its official train/test lists (``ucfTrainTestlist``), one of three splits.

The annotation folder holds ``classInd.txt`` (``1 ApplyEyeMakeup``: 1-based index and class
name), ``trainlist0<fold>.txt`` (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``) and
``testlist0<fold>.txt`` (the path only) for the folds 1, 2 and 3. A video's class is the folder of
its listed path, matched to ``classInd.txt`` without regard to case (the release spells one class
``HandstandPushups`` in its folders and ``HandStandPushups`` in its file names). The video is the
file of that name anywhere under the root, with any video extension (an ``.avi`` transcoded to
``.mp4`` is found too), or a frame folder of that name with ``decoder="frames"``. UCF101 has no
validation split: ``val`` reads the test list.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Literal

from timematters.data.dataset import VideoDataset, find_named_videos
from timematters.data.text import read_text
from timematters.data.videolist import refuse_duplicate_names

Split = Literal["train", "val", "test"]
FOLDS = (1, 2, 3)


def read_ucf101_classes(annotations: str | Path) -> list[str]:
    """Class names in index order, from ``classInd.txt``."""
    path = Path(annotations) / "classInd.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"UCF101 class index not found: {path} (set data.annotations to the ucfTrainTestlist "
            "folder)"
        )
    named: dict[int, str] = {}
    numbered: list[tuple[int, str]] = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{number}: expected 'index name', got {line!r}")
        if int(parts[0]) in named:
            raise ValueError(
                f"{path}:{number}: the index {parts[0]} is given again (to {named[int(parts[0])]!r} "
                "before); give each class its own index"
            )
        named[int(parts[0])] = parts[1]
        numbered.append((number, parts[1]))
    # Matched without regard to case (the module docstring): names that differ in case only clash.
    refuse_duplicate_names(path, numbered, key=str.lower)
    if sorted(named) != list(range(1, len(named) + 1)):
        raise ValueError(f"{path}: class indices are not 1..{len(named)}")
    return [named[i] for i in sorted(named)]


def read_ucf101_split(
    annotations: str | Path, split: Split, fold: int, classes: list[str]
) -> tuple[Path, list[tuple[str, str, int]]]:
    """The split's list file and its (video name, listed path, class index) entries."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown UCF101 split {split!r}; choose train, val or test")
    if fold not in FOLDS:
        raise ValueError(f"UCF101 has the folds 1, 2 and 3, not {fold}")
    path = Path(annotations) / f"{'train' if split == 'train' else 'test'}list0{fold}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"UCF101 split file not found: {path}")
    index_of = {name.lower(): i for i, name in enumerate(classes)}
    entries = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        listed = PurePosixPath(line.split()[0])
        folder = listed.parent.name.lower()
        if folder not in index_of:
            raise ValueError(
                f"{path}:{number}: {str(listed)!r} is not in a class folder of classInd.txt "
                f"(expected CLASS/VIDEO.avi)"
            )
        entries.append((listed.stem, str(listed), index_of[folder]))
    if not entries:
        raise ValueError(f"UCF101 split file {path} has no videos")
    return path, entries


class UCF101Dataset(VideoDataset):
    """UCF101 videos of one split of ``fold``; other keyword arguments go to ``VideoDataset``."""

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        split: Split = "train",
        fold: int = 1,
        **options: Any,
    ):
        classes = read_ucf101_classes(annotations)
        split_file, entries = read_ucf101_split(annotations, split, fold, classes)
        listed = {name: path for name, path, _ in entries}
        samples, missing = find_named_videos(
            root,
            [(name, label) for name, _, label in entries],
            listed_in=str(split_file),
            frames=options.get("decoder") == "frames",
            shown=lambda name, label: str(PurePosixPath(listed[name]).with_suffix("")),
            extension=".avi",
        )
        options.setdefault("train", split == "train")
        super().__init__(samples, classes, missing=missing, **options)
