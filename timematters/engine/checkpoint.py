"""Checkpoints: one dict, written atomically, read with ``weights_only=True``.

Contents: model (backbone) and objective (TIME heads) weights, optimizer, scaler, epoch / step,
the resolved config, the classes and what a resume must match. No RNG states: every random draw
of a step is a function of (seed, rank, step), and the lr schedule one of the step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from timematters.backbones.pretrained import load_torch_file
from timematters.files import as_created


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a quota); the previous one is intact."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a kill never leaves half a file.

    Temporary files a killed write left behind are removed first (one writer per run folder).
    A failed write (torch reports a full disk as a RuntimeError) is a ``CheckpointWriteError``
    naming the file.
    """
    _write_atomically(
        path,
        lambda tmp: torch.save(state, tmp),
        if_first="start the run again (--resume auto)",
    )


def copy_checkpoint(source: str | Path, path: str | Path) -> None:
    """``source``'s bytes written to ``path`` as ``save_checkpoint`` writes (``last.pth`` as the
    ``best.pth`` just saved: no second serialisation of the state)."""
    _write_atomically(
        path,
        lambda tmp: shutil.copy2(source, tmp),
        if_first=f"resume from {Path(source).name}, which holds this step: --resume {source}",
    )


def _write_atomically(path: str | Path, write: Callable[[str], Any], *, if_first: str) -> None:
    """``write(tmp)`` then a rename onto ``path``; ``if_first``: the way on when a failed write
    leaves no earlier ``path`` to resume from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):
        orphan.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    as_created(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        then = (
            "the previous one is intact: free space or fix the folder, then resume with --resume"
            if path.exists()
            else f"there is no earlier one: free space or fix the folder, then {if_first}"
        )
        reason = str(error).strip().splitlines()[0]
        free = shutil.disk_usage(path.parent).free
        if free < 2**26:  # torch reports a full disk as "enforce fail at inline_container.cc"
            reason = f"{free / 2**20:.0f} MiB free on its disk; {reason}"
        raise CheckpointWriteError(f"cannot write {path} ({reason}); {then}") from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def saved_config(state: dict[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The run config a checkpoint saved (None when it saved none), or a ValueError naming a
    ``config`` entry that is not a timematters run's (another library's checkpoint)."""
    config = state.get("config")
    if config is None:
        return None
    if not (isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in _RUN_KEYS)):
        raise ValueError(
            f"{path} is not a timematters checkpoint (its 'config' has no "
            f"{' / '.join(_RUN_KEYS)} sections): give the checkpoints that train writes; a "
            "backbone's weights go in model.pretrained"
        )
    return config


_RUN_KEYS = ("model", "data")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; pickled Python objects are refused (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pth"
        hint = f"; a run folder's checkpoint is {last}" if last.is_file() else ""
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = load_torch_file(path, what="checkpoint")
    except ValueError as error:
        best = path.with_name("best.pth")
        if path.name != "last.pth" or not best.is_file():
            raise
        raise ValueError(
            f"{error} (the run's best.pth is another checkpoint: --resume {best})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state
