"""Batching with bad videos: a dataset returns ``BadVideo`` instead of raising, the collate function
drops it from the batch, and ``BadVideoLog`` records the distinct bad videos of a run, merges
what other ranks found, writes them out and stops the run when too many of the dataset are bad.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import default_collate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadVideo:
    """Marker a dataset returns for a video it could not use."""

    path: str
    reason: str
    index: int = -1
    label: int = -1  # the video's class, when the dataset knows it


class TooManyBadVideos(RuntimeError):
    pass


def collate_videos(samples: list[dict[str, Any] | BadVideo]) -> dict[str, Any]:
    """Stack the good samples; ``dropped`` lists the ``BadVideo`` markers of the bad ones.

    Keys of a good batch: ``video``, ``label``, ``video_id`` (list of str), ``index`` and, when the
    dataset makes them, ``flow_labels``. A batch in which every video was bad holds only ``dropped``.
    Items of N repeated clips each (repeated augmentation) become N clips of the batch.
    """
    good = [s for s in samples if not isinstance(s, BadVideo)]
    batch: dict[str, Any] = default_collate(good) if good else {}
    if "repeats" in batch:
        batch = _unfold_repeats(batch)
    batch["dropped"] = [s for s in samples if isinstance(s, BadVideo)]
    return batch


def _unfold_repeats(batch: dict[str, Any]) -> dict[str, Any]:
    """Repeated augmentation: B videos of N clips each -> a batch of B*N clips, each video's
    clips side by side, its label, id and index repeated."""
    repeats = int(batch.pop("repeats")[0])
    unfolded = {key: batch[key].flatten(0, 1) for key in ("video", "flow_labels") if key in batch}
    for key in ("label", "index"):
        unfolded[key] = batch[key].repeat_interleave(repeats)
    unfolded["video_id"] = [video for video in batch["video_id"] for _ in range(repeats)]
    return unfolded


def batch_size(batch: dict[str, Any]) -> int:
    """Number of good videos in a collated batch."""
    return len(batch["label"]) if "label" in batch else 0


class BadVideoLog:
    """The distinct bad videos seen so far (a video that fails every epoch counts once).

    ``update`` records a batch's drops and returns the new ones, ``merge`` adds those another rank
    found (so every rank holds the same log), ``check`` stops a run whose bad share of the dataset
    passes a limit, ``write`` saves them as JSON lines.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.videos: dict[str, BadVideo] = {}

    @property
    def bad(self) -> int:
        return len(self.videos)

    def update(self, batch: dict[str, Any]) -> list[BadVideo]:
        new = [v for v in batch.get("dropped", []) if v.path not in self.videos]
        self.merge(new)
        return new

    def merge(self, videos: list[BadVideo]) -> None:
        for video in videos:
            if video.path not in self.videos:
                log.warning("dropped bad video %s: %s", video.path, video.reason)
                self.videos[video.path] = video

    def write(self, path: str | Path | None = None) -> Path:
        """Write every bad video as a JSON line {path, reason, index, label}; returns the file."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            raise ValueError("BadVideoLog.write needs a path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps(asdict(video)) + "\n" for video in self.videos.values())
        self.path.write_text("".join(lines))
        return self.path

    def check(self, limit: float, total: int) -> None:
        """Raise ``TooManyBadVideos`` when more than ``limit`` of the ``total`` videos of the
        dataset are bad.

        Judged against the whole dataset, not the videos seen so far: one bad video in the first
        batch of a large dataset is under any sensible limit, and stays under it.
        """
        if self.bad > limit * total:
            check_bad_share(self.bad, total, limit, listed=self.write() if self.path else None)


def list_bad_videos(videos: list[BadVideo], path: Path | None) -> BadVideoLog:
    """A log of ``videos``, written to ``path`` as JSON lines when one is given (whatever their
    number: the list comes before any limit is judged)."""
    log = BadVideoLog(path)
    log.merge(videos)
    if path is not None:
        log.write()
    return log


def check_bad_share(
    bad: int, total: int, limit: float, *, listed: Path | None = None, what: str = "videos"
) -> None:
    """Raise ``TooManyBadVideos`` when more than ``limit`` of ``total`` videos are bad;
    ``listed``: the file that names them; ``what``: the videos' name in the message."""
    if bad <= limit * total:
        return
    where = f"; their paths and reasons are in {listed}" if listed else ""
    raise TooManyBadVideos(
        f"{bad} of {total} {what} ({bad / total:.2%}) could not be decoded or were too short, "
        f"above the limit of {limit:.2%} (data.max_bad_fraction){where}; replace or drop them, "
        f"or accept them with data.max_bad_fraction={min(1.0, round(bad / total + 0.005, 2))}"
    )
