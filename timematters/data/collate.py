"""Batching with bad videos: a dataset returns ``BadVideo`` instead of raising, the collate function
drops it from the batch, and ``BadVideoLog`` counts, logs and records the drops over a run and stops
it when too many videos are bad.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
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


class TooManyBadVideos(RuntimeError):
    pass


def collate_videos(samples: list[dict[str, Any] | BadVideo]) -> dict[str, Any]:
    """Stack the good samples; ``dropped`` lists (path, reason) of the bad ones.

    Keys of a good batch: ``video``, ``label``, ``video_id`` (list of str), ``index`` and, when the
    dataset makes them, ``flow_labels``. A batch in which every video was bad holds only ``dropped``.
    """
    good = [s for s in samples if not isinstance(s, BadVideo)]
    batch: dict[str, Any] = default_collate(good) if good else {}
    batch["dropped"] = [(s.path, s.reason) for s in samples if isinstance(s, BadVideo)]
    return batch


def batch_size(batch: dict[str, Any]) -> int:
    """Number of good videos in a collated batch."""
    return len(batch["label"]) if "label" in batch else 0


class BadVideoLog:
    """Counts good and dropped videos over a run; ``check`` stops the run above a limit."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.seen = 0
        self.bad = 0
        self.entries: list[dict[str, str]] = []

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def update(self, batch: dict[str, Any]) -> None:
        dropped = batch.get("dropped", [])
        self.seen += batch_size(batch) + len(dropped)
        self.bad += len(dropped)
        for path, reason in dropped:
            log.warning("dropped bad video %s: %s", path, reason)
            self.entries.append({"path": path, "reason": reason})

    def write(self, path: str | Path | None = None) -> Path:
        """Write every dropped video as a JSON line {path, reason}; returns the file."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            raise ValueError("BadVideoLog.write needs a path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(entry) + "\n" for entry in self.entries))
        return self.path

    def check(self, limit: float, min_seen: int = 0) -> None:
        """Raise ``TooManyBadVideos`` when more than ``limit`` of the videos seen were bad.

        ``min_seen`` keeps one bad video in the first small batch from stopping a run.
        """
        if self.seen < min_seen or self.fraction <= limit:
            return
        where = f"; their paths and reasons are in {self.write()}" if self.path else ""
        raise TooManyBadVideos(
            f"{self.bad} of {self.seen} videos ({self.fraction:.2%}) could not be decoded or were "
            f"too short, above the limit of {limit:.2%} (data.max_bad_fraction){where}"
        )
