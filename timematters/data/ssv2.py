"""Something-Something v2 from its official annotation files.

Videos are ``<id>.webm`` (VP9, 240 px high, 12 fps) in one folder, or ``<id>/`` folders of frame
images with ``decoder="frames"``. ``labels.json`` maps each class
name to its index (as a string); the train/validation lists hold ``{id, label, template,
placeholders}`` entries whose class is ``labels[template without "[" and "]"]``. Two file-name
generations exist: ``something-something-v2-{labels,train,validation,test}.json``, and
``{labels,train,validation,test}.json`` with ``test-answers.csv`` (``id;class``, no header), which
is the only source of test labels. ``subset`` keeps the Temporal or Static classes of paper
Appendix A (``subsets.py``), renumbered 0..K-1 in ``labels.json`` order. The same shipped file names
SSv2's time-reversed class pairs (opening / closing, ...), ``pairs``, for the reverse test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from timematters.data.dataset import VideoDataset, VideoSample, index_videos, report_missing
from timematters.data.subsets import SSV2_SUBSETS, load_groups
from timematters.data.text import read_text

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
_SPLIT_FILES = {"train": "train", "val": "validation", "test": "test"}
_PREFIX = "something-something-v2-"


def find_ssv2_file(annotations: str | Path, name: str) -> Path:
    """``<name>.json`` or ``something-something-v2-<name>.json`` in the annotation folder."""
    folder = Path(annotations)
    if not folder.is_dir():
        raise FileNotFoundError(f"SSv2 annotation folder not found: {folder}")
    candidates = [folder / f"{name}.json", folder / f"{_PREFIX}{name}.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"SSv2 annotation file not found: {' or '.join(map(str, candidates))}")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; an error names the file (json's own message names only the place)."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


def read_ssv2_classes(annotations: str | Path) -> list[str]:
    """Class names in index order, from ``labels.json``."""
    path = find_ssv2_file(annotations, "labels")
    labels = read_json(path)
    if not isinstance(labels, dict):
        raise ValueError(
            f"{path}: expected an object of class name -> index, got a {type(labels).__name__}"
        )
    index_of: dict[str, int] = {}
    for name, index in labels.items():
        try:
            index_of[name] = int(index)
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: class {name!r} has the index {index!r}; indices are whole numbers"
            ) from None
    if sorted(index_of.values()) != list(range(len(index_of))):
        raise ValueError(f"{path}: class indices are not 0..{len(index_of) - 1}")
    return sorted(index_of, key=index_of.__getitem__)


def class_name_of_template(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def read_ssv2_split(
    annotations: str | Path, split: Split, classes: list[str]
) -> list[tuple[str, int]]:
    """(video id, class index) pairs of one split."""
    if split not in _SPLIT_FILES:
        raise ValueError(f"unknown SSv2 split {split!r}; choose train, val or test")
    path = find_ssv2_file(annotations, _SPLIT_FILES[split])
    entries = read_json(path)
    _check_entries(path, entries, ("id",) if split == "test" else ("id", "template"))
    if split == "test":
        answers = Path(annotations) / "test-answers.csv"
        if not answers.is_file():
            raise FileNotFoundError(f"SSv2 test labels need {answers} (id;class per line)")
        answer_of = {}
        for number, line in enumerate(read_text(answers).splitlines(), 1):
            video_id, _, name = line.partition(";")
            if line.strip() and not name.strip():
                raise ValueError(f"{answers}:{number}: expected 'id;class', got {line!r}")
            if line.strip():
                answer_of[video_id.strip()] = name.strip()
        unanswered = [str(e["id"]) for e in entries if str(e["id"]) not in answer_of]
        if unanswered:
            raise ValueError(
                f"{answers}: no label for {len(unanswered)} test ids, e.g. {unanswered[:5]}"
            )
        named = [(str(e["id"]), class_name_of_template(answer_of[str(e["id"])])) for e in entries]
    else:
        named = [(str(e["id"]), class_name_of_template(e["template"])) for e in entries]
    index_of = {name: i for i, name in enumerate(classes)}
    unknown = sorted({name for _, name in named if name not in index_of})
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} class names are not in labels.json: {unknown[:5]}"
        )
    return [(video_id, index_of[name]) for video_id, name in named]


def _check_entries(path: Path, entries: Any, keys: tuple[str, ...]) -> None:
    """A split file is a list of objects with ``keys``; say which entry is not."""
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of videos, got a {type(entries).__name__}")
    for number, entry in enumerate(entries):
        absent = [key for key in keys if not isinstance(entry, dict) or key not in entry]
        if absent:
            raise ValueError(f"{path}: entry {number} has no {absent[0]!r}: {str(entry)[:80]}")


class SSv2Dataset(VideoDataset):
    """SSv2 videos of one split; ``subsets`` holds the Temporal/Static class indices.

    ``unmatched_subset_names`` lists Appendix A names that ``labels.json`` does not contain.
    Other keyword arguments go to ``VideoDataset`` (``train`` defaults to split == "train").
    """

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path,
        split: Split = "train",
        subset: Literal["all", "temporal", "static"] = "all",
        **options: Any,
    ):
        classes = read_ssv2_classes(annotations)
        entries = read_ssv2_split(annotations, split, classes)
        groups = load_groups(SSV2_SUBSETS, classes, strict=False)
        subsets, pairs = groups.subsets, groups.pairs
        self.unmatched_subset_names = {name: groups.unmatched.get(name, []) for name in subsets}
        for name, names in self.unmatched_subset_names.items():
            if names:
                log.warning(
                    f"SSv2 {name} subset: {len(names)} names match no class in labels.json: {names}"
                )
        if subset != "all":
            if subset not in subsets:
                raise ValueError(f"unknown SSv2 subset {subset!r}; choose all, temporal or static")
            kept = subsets[subset]
            if not kept:
                raise ValueError(
                    f"data.subset={subset}: none of the {subset} classes of paper Appendix A is a "
                    f"class of {find_ssv2_file(annotations, 'labels')}; set data.subset=all"
                )
            new_index = {old: new for new, old in enumerate(kept)}
            entries = [(vid, new_index[label]) for vid, label in entries if label in new_index]
            classes = [classes[i] for i in kept]
            subsets = {subset: list(range(len(kept)))}
            pairs = {
                new_index[a]: new_index[b] for a, b in pairs.items() if {a, b} <= new_index.keys()
            }
        frames = options.get("decoder") == "frames"  # <id>/ frame folders, not <id>.webm
        videos = index_videos(root, frames=frames)
        samples = [VideoSample(videos[vid], label, vid) for vid, label in entries if vid in videos]
        name = "{}/" if frames else "{}.webm"
        missing = [str(Path(root) / name.format(vid)) for vid, _ in entries if vid not in videos]
        split_file = find_ssv2_file(annotations, _SPLIT_FILES[split])
        folders = (
            not samples and not frames and any(Path(root, v).is_dir() for v, _ in entries[:20])
        )
        files = not samples and frames and bool(index_videos(root, frames=False))
        report_missing(
            missing,
            len(entries),
            str(root),
            listed_in=str(split_file),
            frame_folders=folders,
            video_files=files,
        )
        options.setdefault("train", split == "train")
        super().__init__(samples, classes, subsets=subsets, missing=missing, **options)
        self.pairs = pairs  # time-reversed class pairs: the reverse test's flip rate
