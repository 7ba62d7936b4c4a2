"""The run's metrics log: JSON lines (the source of plots and reports) and TensorBoard events.

Only rank 0 writes. Every record has a ``kind`` ("train" or "eval"), ``epoch`` and ``step``; the
rest are numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLog:
    """Appends records to ``<run>/metrics.jsonl`` and mirrors the numbers to TensorBoard."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def flatten_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"all": {"top1": ...}}`` -> ``{"all/top1": ...}``: one flat record per evaluation."""
    return {f"{subset}/{k}": v for subset, values in metrics.items() for k, v in values.items()}
