"""``timematters data check``: is a dataset usable as configured?

Loads the train split and the one evaluation reads (``eval.split``) exactly as training would,
then reports videos per split and per class, listed videos that are missing, videos that cannot
be decoded (or are too short, or cut off, or frame folders whose numbering skips frames or that
hold empty frame files), class-map problems (classes without training videos, rare classes whose
names look like a typo of another, SSv2 subset names that match no class) and videos a list names
twice. The exit code is 0 when nothing is wrong and 1 otherwise.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from timematters.config import Config, ConfigError, validate
from timematters.data.build import build_dataset, loader_workers
from timematters.data.dataset import VideoDataset
from timematters.data.text import counted
from timematters.data.video import DecoderUnavailable, frame_files, numbering_gap
from timematters.data.videolist import list_duplicates, similar_class_names
from timematters.files import write_text_atomic
from timematters.progress import progress_bar

SHOWN = 10  # examples printed per kind of problem


class _DecodeProbe(Dataset):
    """Decodes what a dataset's item would need; returns (path, why it cannot be decoded or
    None, where a frame folder's numbering skips frames or None)."""

    def __init__(self, dataset: VideoDataset, count: int):
        self.dataset = dataset
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[str, str | None, str | None]:
        path, reason = self.dataset.probe(index)
        if not os.path.isdir(path):
            return path, reason, None
        files = frame_files(path)
        # Empty files (a disk that filled up during an extraction) are said as such, rather
        # than as the first one's decoding error.
        empty = [file for file in files if os.path.getsize(file) == 0]
        if empty:
            first = os.path.basename(empty[0])
            return path, f"{len(empty)} empty (0-byte) frame files, first {first}", None
        return path, reason, None if reason else numbering_gap(files)


def _decode_problems(
    dataset: VideoDataset, count: int, num_workers: int, split: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(undecodable videos, frame folders with frames missing): (path, reason) each."""
    loader = DataLoader(
        _DecodeProbe(dataset, count),
        batch_size=None,
        num_workers=num_workers,
    )
    results = list(
        progress_bar(loader, total=count, desc=f"decoding {split}", leave=False, disable=None)
    )
    bad = [(path, reason) for path, reason, _ in results if reason is not None]
    gaps = [(path, gap) for path, _, gap in results if gap is not None]
    return bad, gaps


def check_dataset(
    cfg: Config,
    decode: bool = True,
    limit: int = 0,
    splits: tuple[str, ...] | None = None,
    *,
    list_to: str | Path | None = None,
) -> int:
    """Print a summary of the configured dataset; returns the exit code (0 fine, 1 problems).

    ``decode=False`` skips decoding; ``limit`` > 0 decodes only the first ``limit`` videos of each
    split. ``splits``: by default those training reads, train and ``eval.split``. ``list_to``: a
    file for every video with a problem, as JSON lines (``split``, ``path``, ``problem``:
    missing, undecodable or frames missing, ``reason``); the summary shows a few of each.
    """
    validate(cfg)
    if list_to is not None:
        _refuse_replacing(Path(list_to))
    listed_videos: list[dict[str, str]] = []
    data = cfg.data
    if splits is None:
        splits = ("train", cfg.eval.split)
    print(f"dataset: {data.dataset}")
    if data.dataset == "synthetic":
        print("the synthetic benchmark is generated on the fly: nothing to check")
        return 0
    print(f"  root: {data.root or '-'}\n  annotations: {data.annotations or '-'}")
    if data.dataset == "videolist":
        print(
            f"  val annotations: {data.val_annotations or '-'}\n  class list: {data.class_list or '-'}"
        )

    problems: list[str] = []
    datasets: dict[str, VideoDataset] = {}
    for split in splits:
        try:
            datasets[split] = build_dataset(cfg, split)
        except (FileNotFoundError, ValueError, DecoderUnavailable) as error:
            problems.append(f"{split}: {error}")

    if data.dataset == "imagenet9" and "train" in datasets:
        datasets.update(_table4_variations(cfg, datasets["train"].classes, problems))

    unit = "image" if data.dataset == "imagenet9" else "video"
    for split, dataset in datasets.items():
        count = min(len(dataset), limit) if limit > 0 else len(dataset)
        workers = loader_workers(data.num_workers)
        bad, gaps = _decode_problems(dataset, count, workers, split) if decode else ([], [])
        listed = len(dataset) + len(dataset.missing)
        line = (
            f"{split}: {counted(listed, unit)} listed, {len(dataset)} found, "
            f"{len(dataset.missing)} missing"
        )
        if decode:
            line += f", {len(bad)} of {count} checked undecodable"
        print(f"{line}; {len(dataset.classes)} classes")
        listed_videos += [
            *({"split": split, "path": p, "problem": "missing"} for p in dataset.missing),
            *({"split": split, "path": p, "problem": "undecodable", "reason": r} for p, r in bad),
            *(
                {"split": split, "path": p, "problem": "frames missing", "reason": r}
                for p, r in gaps
            ),
        ]
        if dataset.missing:
            problems.append(
                _examples(
                    f"{split}: {counted(len(dataset.missing), unit)} missing", dataset.missing
                )
            )
        if bad:
            problems.append(
                _examples(
                    f"{split}: {counted(len(bad), unit)} undecodable",
                    [f"{p}: {r}" for p, r in bad],
                )
            )
        if gaps:
            # Frames are read by position: a lost frame shortens the motion around it unseen.
            headline = f"{split}: {counted(len(gaps), 'frame folder')} with frames missing"
            problems.append(_examples(headline, [f"{p}: {r}" for p, r in gaps]))

    if datasets:
        _print_class_table(datasets)
    if "train" in datasets:
        train = datasets["train"]
        empty = sorted(set(range(len(train.classes))) - set(train.labels))
        if empty:
            names = [f"{i} {train.classes[i]}" for i in empty]
            have = "has" if len(empty) == 1 else "have"
            problems.append(
                _examples(
                    f"train: {counted(len(empty), 'class', 'classes')} {have} no videos", names
                )
            )
        lookalikes = similar_class_names(train.classes, Counter(train.labels))
        if lookalikes:
            pairs = [f"{rare!r} looks like {common!r}" for rare, common in lookalikes]
            problems.append(_examples("train: classes with almost no videos (typos?)", pairs))
    if data.dataset == "videolist":
        for split in splits:
            list_file = getattr(data, "annotations" if split == "train" else "val_annotations")
            if list_file and Path(list_file).is_file():
                duplicates = list_duplicates(list_file)
                if duplicates:
                    headline = (
                        f"{split}: {counted(len(duplicates), unit)} listed twice in {list_file}"
                    )
                    problems.append(_examples(headline, duplicates))
    # The subset match depends on labels.json only: report it once.
    unmatched = next((getattr(d, "unmatched_subset_names", {}) for d in datasets.values()), {})
    if unmatched:
        sizes = ", ".join(
            f"{name} {len(indices)}" for name, indices in _any(datasets).subsets.items()
        )
        print(f"SSv2 subsets (classes): {sizes}")
    for subset, names in unmatched.items():
        if names:
            problems.append(_examples(f"{subset} subset names not in labels.json", names))

    if list_to is not None:
        lines = "".join(json.dumps(video, ensure_ascii=False) + "\n" for video in listed_videos)
        Path(list_to).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(list_to), lines)
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
        if list_to is not None:
            print(f"every video with a problem: {list_to} ({len(listed_videos)})")
        return 1
    print("\nno problems found")
    return 0


_LIST_KEYS = {"split", "path", "problem"}  # what every line of a problem list has


def _refuse_replacing(list_to: Path) -> None:
    """``--list`` may replace an earlier problem list, never another file (the video list being
    checked, a checkpoint): a file is taken for one only when every line is a problem entry."""
    if list_to.is_dir():
        fix = list_to / "problems.jsonl"
        raise ConfigError(f"--list {list_to} is a folder: give a file name, {fix}")
    if not list_to.is_file() or list_to.stat().st_size == 0:
        return
    try:
        lines = [line for line in list_to.read_text().splitlines() if line.strip()]
        ours = all(set(json.loads(line)) >= _LIST_KEYS for line in lines)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        ours = False
    if not ours:
        raise ConfigError(
            f"--list {list_to} exists and is not a problem list data check wrote: it would be "
            "replaced; give a new file name (or move it away)"
        )


def _any(datasets: dict[str, VideoDataset]) -> VideoDataset:
    return next(iter(datasets.values()))


def _table4_variations(
    cfg: Config, classes: list[str], problems: list[str]
) -> dict[str, VideoDataset]:
    """ImageNet-9's test variations that Table 4 reads (the one the evaluation reads is checked
    as its split), each under its name; a missing one, or one of other classes, is a problem."""
    from timematters.data.build import build_variation_dataset

    in9, found = cfg.data.imagenet9, {}
    for variation in in9.variations:
        if variation == in9.test_variation:
            continue
        folder = Path(cfg.data.root) / variation / "val"
        if not folder.is_dir():
            problems.append(
                f"{variation}: no {folder}, a row of Table 4 (set data.imagenet9.variations to "
                "the ones there to leave it out)"
            )
            continue
        try:
            dataset = build_variation_dataset(cfg.data, variation, classes)
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"{variation}: {error}")
            continue
        empty = sorted(set(classes) - {classes[label] for label in dataset.labels})
        if empty:  # its accuracy would leave the class out, unlike the other rows'
            problems.append(
                _examples(
                    f"{variation}: {counted(len(empty), 'class', 'classes')} without images", empty
                )
            )
        found[variation] = dataset
    return found


def _examples(headline: str, items: list[str]) -> str:
    shown = "\n      ".join(items[:SHOWN])
    more = f"\n      ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{headline}:\n      {shown}{more}"


def _print_class_table(datasets: dict[str, VideoDataset]) -> None:
    classes = _any(datasets).classes
    counts = {split: Counter(dataset.labels) for split, dataset in datasets.items()}
    width = max(len(name) for name in classes)
    columns = {split: max(8, len(split) + 2) for split in counts}
    header = "".join(f"{split:>{columns[split]}}" for split in counts)
    print(f"\n{'class':>5}  {'name':<{width}}{header}")
    for index, name in enumerate(classes):
        row = "".join(f"{counts[split][index]:>{columns[split]}}" for split in counts)
        print(f"{index:>5}  {name:<{width}}{row}")
