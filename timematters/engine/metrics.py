"""The run's metrics log: JSON lines (the source of plots and reports) and TensorBoard events.

Only rank 0 writes. Every record has a ``kind`` ("train" or "eval"), ``epoch`` and ``step``; the
rest are numbers, with ``null`` for a value that is not finite (strict JSON has no NaN). A
checkpoint remembers how many lines the log had when it was written, so a resumed run first cuts
the log back to that point: every step appears once, as in an uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RunLog:
    """Appends records to ``<run>/metrics.jsonl`` and mirrors the numbers to TensorBoard."""

    def __init__(
        self, run_dir: Path, *, enabled: bool, tensorboard: bool, keep_lines: int | None = None
    ):
        """keep_lines: resume from a checkpoint written when the log had this many lines."""
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.lines = 0
        self.writer = None
        if not enabled:
            return
        if keep_lines is not None and self.path.is_file():
            kept = self.path.read_text().splitlines(keepends=True)[:keep_lines]
            self.path.write_text("".join(kept))
            self.lines = len(kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")
        self.lines += 1
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_json(data: Any) -> str:
    """Indented strict JSON; NaN and infinities (an empty subset's accuracy, say) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return _finite_or_none(value)

    return json.dumps(clean(data), indent=2, allow_nan=False)


def flatten_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"all": {"top1": ...}}`` -> ``{"all/top1": ...}``: one flat record per evaluation."""
    return {f"{subset}/{k}": v for subset, values in metrics.items() for k, v in values.items()}
