"""HMDB51 from its official split files (``testTrainMulti_7030_splits``), one of three splits.

The annotation folder holds ``<class>_test_split<fold>.txt`` for each of the 51 classes and the
folds 1, 2 and 3; each line is ``<video>.avi <id>``, where the id is 1 for a training video, 2
for a test video and 0 for a video the fold leaves out. Classes are the sorted class names of the
file names (torchvision's order). The video is the file of that name anywhere under the root (the
release's ``<class>/`` folders), with any video extension, or a frame folder of that name with
``decoder="frames"``. HMDB51 has no validation split: ``val`` reads the test videos.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from timematters.data.dataset import VideoDataset, find_named_videos
from timematters.data.text import read_text

Split = Literal["train", "val", "test"]
FOLDS = (1, 2, 3)
_SPLIT_IDS = {"train": "1", "val": "2", "test": "2"}


def find_hmdb51_split_files(annotations: str | Path, fold: int) -> dict[str, Path]:
    """Class name -> its split file of ``fold``, in class order."""
    folder = Path(annotations)
    if not folder.is_dir():
        raise FileNotFoundError(f"HMDB51 split folder not found: {folder}")
    if fold not in FOLDS:
        raise ValueError(f"HMDB51 has the folds 1, 2 and 3, not {fold}")
    pattern = re.compile(rf"(.+)_test_split{fold}\.txt")
    files = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match:
            files[match.group(1)] = path
    if not files:
        raise FileNotFoundError(
            f"no HMDB51 split files <class>_test_split{fold}.txt in {folder} (set "
            "data.annotations to the testTrainMulti_7030_splits folder)"
        )
    # Sorted by class name: the files' own order puts kick_ball before kick ("_" < "_t").
    return dict(sorted(files.items()))


def read_hmdb51_split(
    annotations: str | Path, split: Split, fold: int
) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, (video name, class index) of the split's videos)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown HMDB51 split {split!r}; choose train, val or test")
    files = find_hmdb51_split_files(annotations, fold)
    entries = []
    for label, path in enumerate(files.values()):
        for number, line in enumerate(read_text(path).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{number}: expected 'VIDEO.avi 0|1|2', got {line!r}")
            if parts[1] == _SPLIT_IDS[split]:
                entries.append((PurePosixPath(parts[0]).stem, label))
    if not entries:
        raise ValueError(f"the HMDB51 split files in {annotations} list no {split} videos")
    return list(files), entries


class HMDB51Dataset(VideoDataset):
    """HMDB51 videos of one split of ``fold``; other keyword arguments go to ``VideoDataset``."""

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        split: Split = "train",
        fold: int = 1,
        **options: Any,
    ):
        classes, entries = read_hmdb51_split(annotations, split, fold)
        samples, missing = find_named_videos(
            root,
            entries,
            listed_in=f"{annotations}/*_test_split{fold}.txt",
            frames=options.get("decoder") == "frames",
            shown=lambda video, label: f"{classes[label]}/{video}",
            extension=".avi",
        )
        options.setdefault("train", split == "train")
        super().__init__(samples, classes, missing=missing, **options)
