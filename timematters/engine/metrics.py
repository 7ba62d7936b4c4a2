"""The run's metrics log: JSON lines (the source of plots and reports), mirrored to TensorBoard
and, when asked, Weights & Biases; and ``copy_output``, which keeps what a run prints in
``train.log``.

Only rank 0 writes. Every record has a ``kind`` ("train" or "eval"), ``epoch`` and ``step``; the
rest are numbers, with ``null`` for a value that is not finite (strict JSON has no NaN). A
checkpoint remembers how many lines the log had when it was written, so a resumed run first cuts
the log back to that point: every step appears once, as in an uninterrupted run. TensorBoard is
told the same (its ``purge_step``: it hides what it was given from the first step cut on, and its
events are flushed with each checkpoint); Weights & Biases cannot take records back: after a
resume it sees the steps since the checkpoint again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from timematters.files import write_text_atomic


class RunLog:
    """Appends records to ``<run>/metrics.jsonl`` and mirrors the numbers to TensorBoard."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        tensorboard: bool,
        keep_lines: int | None = None,
        wandb: bool = False,
        config: dict[str, Any] | None = None,
    ):
        """keep_lines: resume from a checkpoint written when the log had this many lines.
        wandb: also log to Weights & Biases (project ``config["train"]["wandb_project"]``)."""
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.lines = 0
        self.writer = None
        self.wandb = None
        self.tensorboard_status = "off (train.tensorboard=false)"
        self.wandb_status = "off"
        if not enabled:
            return
        kept: list[dict[str, Any]] = []
        purge_step = None
        if keep_lines is not None and self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True)
            write_text_atomic(self.path, "".join(lines[:keep_lines]))  # a kill here keeps it all
            self.lines = len(lines[:keep_lines])
            kept, cut = _records(lines[:keep_lines]), _records(lines[keep_lines:])
            purge_step = _first_step_cut(kept, cut)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                with self._tensorboard_named():  # it writes its first event at once
                    folder = str(run_dir / "tensorboard")
                    self.writer = SummaryWriter(folder, purge_step=purge_step)
            except ImportError:  # tensorboard is an optional extra
                self.tensorboard_status = (
                    "off: pip install tensorboard (or timematters[tensorboard])"
                )
            if self.writer is not None and purge_step is not None:
                # Hidden with the records cut: those of the purge step that the log keeps.
                for record in kept:
                    if record["step"] >= purge_step:
                        self._to_tensorboard(record)
        if wandb:
            self.wandb = _start_wandb(run_dir, config or {})
            mode = getattr(getattr(self.wandb, "settings", None), "mode", "online")
            self.wandb_status = f"run {self.wandb.name or self.wandb.id} ({mode})"

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(_finite_or_none(record), allow_nan=False) + "\n")
        except OSError as error:  # a full disk: named, as the CLI then says it in one line
            raise OSError(error.errno, error.strerror, str(self.path)) from error
        self.lines += 1
        if self.writer is not None:
            self._to_tensorboard(record)
        if self.wandb is not None:
            self.wandb.log({**_numbers(record), "epoch": record["epoch"]}, step=record["step"])

    def _to_tensorboard(self, record: dict[str, Any]) -> None:
        with self._tensorboard_named():
            for key, value in _numbers(record).items():
                self.writer.add_scalar(key, value, record["step"])

    def flush(self) -> None:
        """Write what TensorBoard holds in memory (with each checkpoint: what a resume keeps)."""
        if self.writer is not None:
            with self._tensorboard_named():
                self.writer.flush()

    @contextlib.contextmanager
    def _tensorboard_named(self) -> Iterator[None]:
        """TensorBoard's writer thread reports a full disk at the next call, without a path:
        named here, as the CLI then says it in one line."""
        try:
            yield
        except OSError as error:
            folder = str(self.path.parent / "tensorboard")
            raise OSError(error.errno, error.strerror, folder) from error

    def close(self) -> None:
        if self.writer is not None:
            with self._tensorboard_named():
                self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers under ``kind/name`` (``train/loss``), as the trackers show them."""
    return {
        f"{record['kind']}/{key}": value
        for key, value in record.items()
        if isinstance(value, int | float) and key not in ("step", "epoch", "kind")
    }


def _records(lines: list[str]) -> list[dict[str, Any]]:
    """The records of log lines; a line a kill cut short is none."""
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def _first_step_cut(kept: list[dict[str, Any]], cut: list[dict[str, Any]]) -> int | None:
    """The step from which TensorBoard must forget what it was given: the first record cut (or
    the step after the last one kept), None for a log with nothing in it."""
    if cut:
        return min(record["step"] for record in cut)
    return kept[-1]["step"] + 1 if kept else None


def _start_wandb(run_dir: Path, config: dict[str, Any]):
    """A W&B run for this run folder: the same id every time, so a resumed run continues it."""
    try:
        import wandb
    except ImportError:
        from timematters.config import ConfigError

        raise ConfigError(
            "train.wandb=true needs Weights & Biases: pip install 'timematters[wandb]'"
        ) from None
    run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return wandb.init(
        project=config.get("train", {}).get("wandb_project", "timematters"),
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
    )


class _Copy:
    """A text stream that also writes to ``file``."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        if "\n" in text:  # line by line: a killed run's log keeps what it printed
            self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def copy_output(path: Path, *, enabled: bool = True):
    """Append what is printed (stdout) and timematters' log messages to ``path`` meanwhile.
    Progress bars (stderr) are left out: they are redrawn in place, not lines."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        handler = logging.StreamHandler(file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("timematters")
        # With a handler of its own the logger no longer falls back to printing on stderr
        # (logging.lastResort): the terminal keeps seeing warnings through this one.
        terminal = logging.StreamHandler()
        terminal.setLevel(logging.WARNING)
        handlers = [handler] if logger.hasHandlers() else [handler, terminal]
        for each in handlers:
            logger.addHandler(each)
        stdout, sys.stdout = sys.stdout, _Copy(sys.stdout, file)
        try:
            yield
        finally:
            sys.stdout = stdout
            for each in handlers:
                logger.removeHandler(each)


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN and infinity in it, at any depth, replaced by None."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_json(data: Any) -> str:
    """Indented strict JSON; NaN and infinities (an empty subset's accuracy, say) become null."""
    return json.dumps(_finite_or_none(data), indent=2, allow_nan=False)


def flatten_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"all": {"top1": ...}}`` -> ``{"all/top1": ...}``: one flat record per evaluation."""
    return {f"{subset}/{k}": v for subset, values in metrics.items() for k, v in values.items()}
