"""Run folders and resumes: a folder holds one run, and a resume continues that run exactly.

- ``claim_run_folder``: a new run refuses a folder that already holds one (its config, metrics or
  checkpoints), unless told to overwrite it, so two runs never mix their logs or checkpoints.
- ``hold_run_folder``: while a run lives it holds a lock on its folder; a second command for that
  folder (a requeued job's ``--resume auto``, a ``--resume`` of a run still training) is refused
  instead of training beside it. The lock goes with the process, even a killed one.
- ``resume_mismatches``: a resumed run must have the config the checkpoint was written with,
  except keys that do not change what is computed (where data lives, workers, logging, the device,
  where to stop); ``RunShape`` adds what the config alone does not fix (dataset size, processes).
- ``StopSignals``: SIGINT / SIGTERM (Ctrl-C, a scheduler's preemption notice) ask the run to stop
  after the current step, with a checkpoint; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from timematters.config import Config, ConfigError, config_to_dict
from timematters.engine.distributed import is_main_process

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks, so run folders go unlocked there
    fcntl = None

# What a run writes into its folder; only these are removed by ``overwrite``.
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "eval.json",
    "eval.md",
    "bad_videos.jsonl",
    "eval_bad_videos.jsonl",
    "train.log",
    "checkpoints",
    "tensorboard",
)
# Keys a resume may change: they do not change what the run computes.
RESUME_FREE = {
    "data.root",
    "data.annotations",
    "data.val_annotations",
    "data.class_list",
    "data.num_workers",
    "data.decoder",
    "data.max_bad_fraction",
    "model.pretrained",  # the weights come from the checkpoint
    "model.grad_checkpointing",  # the same gradients, recomputed
    "model.prompt",  # only zero-shot models read it, and they are not trained
    "train.compile",
    "train.compile_backend",
    "train.device",
    "train.out",
    "train.max_steps",
    "train.max_nonfinite_steps",
    "train.log_every",
    "train.save_every_steps",
    "train.tensorboard",
    "train.wandb",
    "train.wandb_project",
    "train.progress",
    "eval.batch_size",
}


class RunFolderInUse(ConfigError):
    pass


class ResumeMismatch(ConfigError):
    pass


class Interrupted(Exception):
    """The run stopped on a signal after writing its checkpoint. ``stopped``: what stopped it
    and when; the message adds how to continue, which a command running the run (the demo)
    may say its own way."""

    def __init__(self, message: str, exit_code: int, stopped: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.stopped = stopped or message


# What each command writes into its folder, and the files that say a folder holds its output
# (shared names such as report.md or *.png say nothing on their own). A folder holds one
# command's output: the others are refused unless overwritten, and then their files go too, so
# nothing stale is left beside the new output.
OUTPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (files it writes, files that mark it)
    "a run": (RUN_FILES, ("config.yaml", "checkpoints", "metrics.jsonl", "train.log")),
    "a demo": (
        ("seed*", "data", "diagnose", "metrics.json", "report.md", "*.png"),
        ("seed*", "metrics.json"),
    ),
    "a diagnose report": (
        (
            "diagnose.json",
            "report.md",
            "*.png",
            "gradcam.npz",
            "class_reliance.csv",
            "proposed_subsets.yaml",
            "bad_videos.jsonl",
        ),
        ("diagnose.json",),
    ),
    "an evaluation": (
        ("eval.json", "eval.md", "backgrounds.json", "backgrounds.md", "bad_videos.jsonl"),
        ("eval.json", "backgrounds.json"),
    ),
    "flow labels": (("flow_labels.json", "flow_*.png"), ("flow_labels.json",)),
    # Never removed: an extraction goes on where an earlier one stopped (data/frames.py).
    "frame folders": (("frames.json",), ("frames.json",)),
    "an export": (
        (
            "export.json",
            "README.md",
            "config.json",
            "model.safetensors",
            "video_preprocessor_config.json",
        ),
        ("export.json",),
    ),
}
# Kinds whose own earlier output is replaced without --overwrite: their commands are re-run on
# the same folder (`eval` and `export` write next to their checkpoint, `diagnose` to
# runs/diagnose, `flow` to runs/flow) and they replace it whole; a run or a demo is hours of work
# and is never replaced unasked.
REPLACED = {"a diagnose report", "an evaluation", "flow labels", "an export", "frame folders"}


LOCK_FILE = ".lock"
# The descriptors of the run folders this process holds locked. A flock belongs to the open
# file, which forked children (DataLoader workers) share: they would keep the folder locked for
# a while after a killed run, refusing its requeued job. A child points them at /dev/null.
_HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    if not _HELD_LOCKS:
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd in _HELD_LOCKS:
        os.dup2(devnull, fd)  # the number stays valid for the copy of the file object here
    os.close(devnull)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def hold_run_folder(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (made if needed) while a run trains in it, or
    ``RunFolderInUse`` naming the process that holds it."""
    folder = Path(folder)
    check_writable(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        file = path.open("a+")
        try:
            locked = _lock(file, folder)
        except BaseException:
            file.close()
            raise
        # The run that held it removes the file as it ends: a lock won on that removed file,
        # while a newer command locks a new one, would hold nothing. Then lock the new one.
        if not locked or _is_the_file_at(file, path):
            break
        file.close()
    with file:
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
        _HELD_LOCKS.add(file.fileno())
        try:
            yield
        finally:  # removed while still held: a folder the run made can then go when empty
            _HELD_LOCKS.discard(file.fileno())
            path.unlink(missing_ok=True)


def _lock(file: Any, folder: Path) -> bool:
    """Lock ``file`` (True), or warn where the file system has no locks (False)."""
    if fcntl is None:  # Windows
        return False
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        raise RunFolderInUse(
            f"{folder} is in use by a run still going ({holder}): wait for it to end or "
            "stop it, or choose another train.out"
        ) from None
    except OSError as error:  # a file system without locks (Lustre mounted without flock)
        logging.getLogger(__name__).warning(
            "%s cannot be locked (%s): nothing stops a second command from using it while "
            "this run trains",
            folder,
            error.strerror or error,
        )
        return False


def _is_the_file_at(file: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def check_writable(folder: Path, *, kind: str = "a run") -> None:
    """Refuse, before any work rather than after it, an output ``folder`` that is a file, or
    that (or the nearest folder above it that exists) cannot be written to."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderInUse(f"{folder} is a file: give a folder for {kind}'s output")
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():  # a path below a file
        raise RunFolderInUse(f"{existing} is a file: give a folder for {kind}'s output")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == Path(folder).absolute() else f" (in {existing})"
        raise PermissionError(f"{folder}: cannot write there{where}; choose a writable folder")


def claim_folder(
    folder: Path,
    *,
    kind: str,
    overwrite: bool,
    fix: str,
    remove: bool = True,
    partial_only: bool = False,
    aside: bool = False,
) -> Path | None:
    """Make ``folder`` ready for ``kind``'s output (a key of ``OUTPUTS``): refuse a folder that
    holds a run, a demo, ... (``fix`` says what to do), or remove their files (``overwrite``, and
    a diagnose report's or an evaluation's own earlier output); anything else is left alone.
    ``remove=False`` only refuses: a command that can still fail checks early and removes the
    earlier output once its own is about to be written. ``aside``: the files are moved into a
    hidden folder, returned, for ``restore_aside`` should the command fail before it begins, or
    ``discard_aside`` once it has. ``partial_only``: ``overwrite`` replaces a run that left no
    checkpoint (``--resume auto``), and refuses anything else."""
    folder = Path(folder)
    check_writable(folder, kind=kind)
    held = [
        other
        for other, (_, markers) in OUTPUTS.items()
        if any(any(folder.glob(marker)) for marker in markers)
    ]
    if "a run" in held and "an evaluation" in held:
        held.remove("an evaluation")  # a run's own final evaluation
    blocking = [other for other in held if not (other == kind and kind in REPLACED)]
    if partial_only:  # only what a run killed before its first checkpoint left
        overwrite = overwrite and set(blocking) <= {"a run"}
    if blocking and not overwrite:
        files, _ = OUTPUTS[blocking[0]]
        found = sorted({p.name for pattern in files for p in folder.glob(pattern)})
        names = ", ".join(found[:6]) + (" ..." if len(found) > 6 else "")
        raise RunFolderInUse(f"{folder} already holds {blocking[0]} ({names}): {fix}")
    if aside and held:
        return _set_aside(folder, [pattern for other in held for pattern in OUTPUTS[other][0]])
    for other in held if remove else []:
        _remove_matching(folder, OUTPUTS[other][0])
    return None


ASIDE = ".replaced"  # where an overwritten run waits until the new one has begun


def _set_aside(folder: Path, patterns: list[str]) -> Path:
    """Move the files matching ``patterns`` into ``folder/.replaced``; all or none (a file that
    cannot be moved puts the others back, and the error says which)."""
    trash = folder / ASIDE
    if trash.exists():  # what a command killed between moving and discarding left
        shutil.rmtree(trash)
    trash.mkdir()
    moved: list[str] = []
    try:
        for path in sorted({p for pattern in patterns for p in folder.glob(pattern)}):
            if path.exists():  # a folder matched first may have held it
                path.rename(trash / path.name)
                moved.append(path.name)
    except OSError:
        for name in moved:
            (trash / name).rename(folder / name)
        trash.rmdir()
        raise
    return trash


def restore_aside(trash: Path) -> None:
    """Put back what ``claim_folder(..., aside=True)`` moved: the new command did not begin."""
    for path in trash.iterdir():
        path.rename(trash.parent / path.name)
    trash.rmdir()


def discard_aside(trash: Path) -> None:
    """Delete what ``claim_folder(..., aside=True)`` moved: the new command has begun."""
    shutil.rmtree(trash)


def refuse_inside_a_run(folder: Path) -> None:
    """A new run's folder inside another run's would be removed with it, and read as its files:
    refused before the folder is made."""
    for parent in Path(folder).absolute().parents:
        if (parent / "config.yaml").is_file() and (parent / "checkpoints").is_dir():
            raise RunFolderInUse(
                f"train.out={folder} is inside the run folder {parent}: choose a train.out "
                "outside it"
            )


def claim_run_folder(folder: Path, *, overwrite: bool, partial_only: bool = False) -> Path | None:
    """A new run's folder: refused while it holds a run or another command's output, unless
    ``overwrite`` (with ``partial_only``: only a run that left no checkpoint is replaced). What
    it replaces is set aside (the folder returned) until the new run has begun."""
    has_checkpoint = any((folder / "checkpoints").glob("*.pth"))
    resume = "continue it with --resume, " if has_checkpoint else ""
    # An export (`timematters export`'s default folder is beside its checkpoint) is a model
    # someone may be using; it would go with the run's checkpoints.
    exports = sorted(path.parent for path in (folder / "checkpoints").glob("*/export.json"))
    if overwrite and exports and not partial_only:
        names = ", ".join(str(path) for path in exports)
        what, it = ("the export", "it") if len(exports) == 1 else ("the exports", "them")
        raise RunFolderInUse(
            f"{folder} holds {what} {names} of the run that --overwrite would replace: move "
            f"{it} out of the run folder (or delete {it}), then train again"
        )
    return claim_folder(
        folder,
        kind="a run",
        # A run that left any checkpoint is not partial: its training is not thrown away.
        overwrite=overwrite and not (partial_only and has_checkpoint),
        fix=f"{resume}replace it with --overwrite, or choose another train.out",
        partial_only=partial_only,
        aside=True,
    )


def _remove_matching(folder: Path, patterns: tuple[str, ...]) -> None:
    """Delete the files and folders in ``folder`` that match ``patterns``."""
    for path in sorted({p for pattern in patterns for p in folder.glob(pattern)}):
        if path.exists():  # a folder matched first may have held it
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def first_new_folder(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None: it exists)."""
    folder, new = Path(folder).absolute(), None
    while not folder.exists():
        folder, new = folder.parent, folder
    return new


def remove_run_files(folder: Path, *, created: Path | None = None) -> None:
    """Remove what a run writes (``RUN_FILES``) from ``folder``; anything else stays. ``created``:
    the outermost folder the run made (``first_new_folder`` before it), removed with the ones
    below it down to ``folder`` when they are left empty."""
    folder = Path(folder).absolute()
    _remove_matching(folder, RUN_FILES)
    if created is None:
        return
    for made in [folder, *folder.parents]:
        if made.is_dir() and not any(made.iterdir()):
            made.rmdir()
        if made == created:
            break


@dataclass(frozen=True)
class RunShape:
    """What a resume must match besides the config: it fixes which clips each step sees."""

    train_clips: int
    world_size: int
    # A digest of the training clips' labels in order (``labels_digest``): as many clips labelled
    # otherwise would have one run train on two datasets. "" where unknown (older checkpoints).
    train_labels: str = ""

    def differences(self, saved: dict[str, Any]) -> list[str]:
        # A key the checkpoint lacks (older), or labels unknown on either side, is not checked.
        differ = [
            key
            for key, value in asdict(self).items()
            if saved.get(key, value) != value and value != "" and saved.get(key) != ""
        ]
        return [
            "train_labels: the training clips are labelled otherwise than when saved"
            if key == "train_labels"
            else f"{key}: {saved.get(key)} when saved, {getattr(self, key)} now"
            for key in differ
        ]


def labels_digest(labels: Sequence[int] | None) -> str:
    """A short fingerprint of a training set's labels, in order ("" for none)."""
    if labels is None:
        return ""
    text = ",".join(str(int(label)) for label in labels)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def resume_mismatches(saved_config: dict[str, Any], cfg: Config) -> list[str]:
    """``key: saved -> now`` for every config key that differs and must not.

    A key the saved config lacks was added by a later timematters, whose default is the behaviour
    before it (layer_decay 1, say): the saved run had that default.
    """
    defaults = _flatten(config_to_dict(Config()))
    saved, now = defaults | _flatten(saved_config), _flatten(config_to_dict(cfg))
    keys = sorted((set(saved) | set(now)) - RESUME_FREE)
    return [
        f"{key}: {saved.get(key)!r} when saved, {now.get(key)!r} now"
        for key in keys
        if saved.get(key) != now.get(key)
    ]


# Keys a resume may change that still change the numbers a little: said when changed.
RESUME_NOTED = {
    "data.decoder": "JPEG frames (timematters data frames) are not the decoded video's pixels",
    "train.compile": "compiled kernels round otherwise",
}


def resume_notes(saved_config: dict[str, Any], cfg: Config) -> list[str]:
    """What a resume changes among ``RESUME_NOTED``: it goes on, no longer the very numbers of the
    run never stopped."""
    saved, now = _flatten(saved_config), _flatten(config_to_dict(cfg))
    return [
        f"{key} was {saved[key]!r}, now {now[key]!r}: {why}, so the run goes on close to, not "
        "exactly as, one never stopped"
        for key, why in RESUME_NOTED.items()
        if key in saved and saved[key] != now[key]
    ]


def check_resume(state: dict[str, Any], cfg: Config, shape: RunShape, path: Path) -> None:
    """Raise ``ResumeMismatch`` naming every difference between the checkpoint's run and this one."""
    if "run_shape" not in state or "config" not in state:
        raise ResumeMismatch(
            f"{path} was written by an older timematters and cannot be resumed exactly; start a "
            "new run from its weights with --init-from"
        )
    differences = resume_mismatches(state["config"], cfg) + shape.differences(state["run_shape"])
    if differences:
        saved_world = state["run_shape"].get("world_size")
        processes = (
            f" (torchrun --nproc_per_node={saved_world}, or as many processes over nodes)"
            if saved_world != shape.world_size
            else ""
        )
        raise ResumeMismatch(
            f"cannot resume {path}: the run differs from the one it was written by "
            f"({'; '.join(differences)}). Resume with the same settings{processes}, or start a "
            "new run from its weights with --init-from"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class StopSignals(contextlib.AbstractContextManager):
    """Catches SIGINT and SIGTERM while a run trains: the first asks it to stop after the step it
    is in (``requested`` names the signal), a second one stops the process at once.

    Under torchrun a signal usually comes twice: from the scheduler (Slurm's scancel signals every
    process of the job) or the terminal (Ctrl-C signals the process group), and again from
    torchrun, which forwards what it receives to its workers. A repeat within ``REPEAT_S`` there is
    the same request, not "at once", which would lose the step's checkpoint.

    Installed only in the main thread (Python delivers signals there); elsewhere it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 5.0

    def __init__(self):
        self.requested: signal.Signals | None = None
        self._previous: dict[int, Any] = {}
        self._first_at = 0.0

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:
            forwarded = "TORCHELASTIC_RUN_ID" in os.environ  # a worker of torchrun
            if forwarded and time.monotonic() - self._first_at < self.REPEAT_S:
                return
            signal.signal(signum, signal.SIG_DFL)  # the second signal: stop now, the default way
            signal.raise_signal(signum)
            return
        self.requested = signal.Signals(signum)
        self._first_at = time.monotonic()
        if is_main_process():  # torchrun signals every rank: one says it
            print(
                f"\ntimematters: {self.requested.name} received; stopping after this step with a "
                "checkpoint (send it again to stop at once)",
                flush=True,
            )
