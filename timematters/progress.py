"""Progress bars that suit where they are shown: a terminal redraws ten times a second, a log file
(slurm, nohup, a redirected stderr) gets an update every 30 s instead of megabytes of them."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_FILE_INTERVAL_S = 30.0


def progress_bar(iterable: Iterable | None = None, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)``, updating at most every 30 s when stderr is not a terminal
    (``mininterval`` given explicitly wins)."""
    stream = options.get("file") or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        options.setdefault("mininterval", LOG_FILE_INTERVAL_S)
    return tqdm(iterable, **options)
