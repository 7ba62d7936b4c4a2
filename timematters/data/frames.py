"""``timematters data frames``: a dataset's videos as folders of JPEG frames.

Reading 8 frames from a folder of images is much cheaper than decoding them from a video
(README, Benchmarks: 4.7 against 18.4 ms a clip for SSv2's webm), which is why many training codes
keep their datasets that way. Each listed video becomes the folder its path names without the
extension (``<root>/abseiling/x.mp4`` -> ``<out>/abseiling/x/``), holding every frame the video
decoder gives, in order, as ``img_00001.jpg`` ...: so the frame folder's frame i is the video's
frame i and clips sample the same frames from either. The datasets then read the folders with
``data.root=OUT data.decoder=frames``; a video list gets new lists that name the folders.

A folder is written under a temporary name and renamed when complete, so a killed extraction
resumes where it stopped (finished folders are kept); a video that cannot be decoded is skipped,
listed in ``bad_videos.jsonl`` and reported (exit status 1). Its folder holds ``bad_video.json``
instead of frames, and it stays in the new lists, so that training on the frames counts it as a
bad video (``data.max_bad_fraction`` judges the same share as on the videos), not a missing one;
a resumed extraction tries it again. The new lists (``train.csv``, ``val.csv``) are written only
where they replace no file but an earlier extraction's, which ``frames.json`` names.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from timematters.config import Config, ConfigError, validate
from timematters.data.build import build_dataset, loader_workers
from timematters.data.dataset import VideoDataset
from timematters.data.text import counted
from timematters.data.video import EXTRACTION_FAILED, VideoDecodeError, open_video
from timematters.progress import progress_bar

FRAME_NAME = "img_{:05d}.jpg"
CHUNK = 256  # frames decoded at once: bounded memory for long videos
PARTIAL = ".partial"
RECORD = "frames.json"  # the settings of the frames in a folder (engine.runs knows it by it)


@dataclass(frozen=True)
class _Job:
    video: str
    folder: str


class _Extraction(Dataset):
    """Writes one video's frames per item (in DataLoader workers); returns (video, reason)."""

    def __init__(self, jobs: list[_Job], decoder: str, short_side: int, quality: int):
        self.jobs, self.decoder = jobs, decoder
        self.short_side, self.quality = short_side, quality

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[str, str | None]:
        job = self.jobs[index]
        folder, partial = Path(job.folder), Path(job.folder + PARTIAL)
        shutil.rmtree(partial, ignore_errors=True)  # what a killed extraction left
        partial.mkdir(parents=True)
        reason = None
        try:
            reader = open_video(job.video, self.decoder)
            for start in range(0, reader.num_frames, CHUNK):
                stop = min(start + CHUNK, reader.num_frames)
                frames = reader.get_frames(np.arange(start, stop))
                self._write(frames, partial, first=start + 1)
        except VideoDecodeError as error:
            reason = error.reason
            # No frames, and why: the folder is a bad video for the datasets that read it.
            shutil.rmtree(partial)
            partial.mkdir()
            failure = {"path": job.video, "reason": reason}
            (partial / EXTRACTION_FAILED).write_text(json.dumps(failure) + "\n")
        if _failed(folder):  # an earlier extraction's record of this video, tried again
            (folder / EXTRACTION_FAILED).unlink()
            folder.rmdir()
        partial.rename(folder)
        return job.video, reason

    def _write(self, frames: np.ndarray, folder: Path, first: int) -> None:
        from torchvision.io import encode_jpeg
        from torchvision.transforms.v2.functional import resize

        images = torch.from_numpy(frames).permute(0, 3, 1, 2)
        if self.short_side and min(images.shape[-2:]) > self.short_side:
            images = resize(images, [self.short_side], antialias=True)
        encoded = encode_jpeg(list(images.contiguous()), quality=self.quality)
        for number, data in enumerate(encoded, first):
            (folder / FRAME_NAME.format(number)).write_bytes(data.numpy().tobytes())


def extract_frames(
    cfg: Config,
    out: str | Path,
    splits: tuple[str, ...] = ("train", "val"),
    short_side: int = 0,
    quality: int = 95,
    workers: int | None = None,
    limit: int = 0,
) -> int:
    """Write the frame folders of ``splits``' videos under ``out``; returns the exit status (0, or
    1 when a video could not be decoded). ``short_side`` > 0 resizes larger frames to it;
    ``limit`` > 0 takes the first ``limit`` videos of each split."""
    validate(cfg)
    data = cfg.data
    if data.dataset in ("synthetic", "imagenet9"):
        raise ConfigError(f"data.dataset={data.dataset} has no video files to extract frames from")
    if data.decoder == "frames":
        raise ConfigError("the videos are frame folders already (data.decoder=frames)")
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality {quality}: a JPEG quality is 1 to 100")
    if short_side < 0:
        raise ConfigError(f"--short-side {short_side}: give a size in pixels, or 0 to keep frames")
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers {workers}: give 0 (this process) or more")
    out = Path(out)
    list_names = [f"{split}.csv" for split in splits] if data.dataset == "videolist" else []
    _refuse_replacing_lists(cfg, out, list_names)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": data.dataset, "short_side": short_side, "quality": quality}
    _check_settings(out, settings)  # recorded once the plan is made: a refused one leaves none

    datasets = {split: build_dataset(cfg, split) for split in splits}
    jobs, lists = _plan(cfg, datasets, out, limit)
    # The lists are this command's now: a later extraction may replace them.
    _record_settings(out, settings, lists=[path.name for path in lists.values()])
    # A video that failed before is tried again: it may have been replaced since.
    todo = [job for job in jobs if not Path(job.folder).is_dir() or _failed(Path(job.folder))]
    bad_log = out / "bad_videos.jsonl"
    earlier_bad = _read_bad_log(bad_log)  # read now: an unreadable one is refused before the work
    print(
        f"{counted(len(jobs), 'video')}: {len(jobs) - len(todo)} done already, {len(todo)} to extract"
    )
    loader = DataLoader(
        _Extraction(todo, data.decoder, short_side, quality),
        batch_size=None,
        num_workers=loader_workers(data.num_workers if workers is None else workers),
    )
    bad = [
        (video, reason)
        for video, reason in progress_bar(loader, total=len(todo), desc="frames", disable=None)
        if reason is not None
    ]
    _update_bad_log(bad_log, earlier_bad, tried={job.video for job in todo}, bad=bad)
    overrides = f"data.root={out} data.decoder=frames"
    for key, path in lists.items():
        overrides += f" data.{key}={path}"
    print(f"{counted(len(todo) - len(bad), 'frame folder')} written to {out}")
    if bad:
        print(
            f"{counted(len(bad), 'video')} could not be decoded: their folders hold no frames, so "
            f"training counts them as bad videos; the reasons are in {bad_log}"
        )
    print(f"read them with: {overrides}")
    return 1 if bad else 0


def _update_bad_log(
    bad_log: Path, earlier: list[dict], tried: set[str], bad: list[tuple[str, str]]
) -> None:
    """``bad_videos.jsonl``: each video that could not be decoded, once. An earlier extraction's
    entries stay unless their video was tried again (then this one's outcome counts)."""
    entries = [entry for entry in earlier if entry.get("path") not in tried]
    entries += [{"path": video, "reason": reason} for video, reason in bad]
    if entries:
        bad_log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    elif bad_log.is_file():  # every video it listed has its frames now
        bad_log.unlink()


def _read_bad_log(bad_log: Path) -> list[dict]:
    if not bad_log.is_file():
        return []
    lines = [line for line in bad_log.read_text().splitlines() if line.strip()]
    try:
        entries = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        raise ConfigError(
            f"{bad_log} is not a list of bad videos (JSON lines) this command wrote: move it, or "
            "choose another --out"
        ) from None
    return [entry for entry in entries if isinstance(entry, dict)]


def _failed(folder: Path) -> bool:
    """Whether ``folder`` is an earlier extraction's record of a video it could not decode."""
    return (folder / EXTRACTION_FAILED).is_file()


def _refuse_replacing_lists(cfg: Config, out: Path, names: list[str]) -> None:
    """The new lists may replace an earlier extraction's (``frames.json`` names them), never a
    file of the user's, such as the list being read."""
    data = cfg.data
    read = [Path(p) for p in (data.annotations, data.val_annotations) if p and Path(p).is_file()]
    ours = _recorded(out).get("lists", [])
    for name in names:
        path = out / name
        if not path.exists():
            continue
        if any(path.resolve() == listed.resolve() for listed in read):
            raise ConfigError(
                f"--out {out}: the list of the frame folders would replace {path}, the video list "
                "being read; choose another --out"
            )
        if name not in ours:
            raise ConfigError(
                f"--out {out}: the list of the frame folders would replace {path}, which this "
                f"command did not write; choose another --out (or move {name} away)"
            )


def _recorded(out: Path) -> dict:
    """An earlier extraction's ``frames.json`` in ``out`` ({} if none)."""
    record = out / RECORD
    if not record.is_file():
        return {}
    try:
        recorded = json.loads(record.read_text())
    except json.JSONDecodeError:
        raise ConfigError(
            f"{record} is not the record of an extraction (JSON): move it, or choose another --out"
        ) from None
    return recorded if isinstance(recorded, dict) else {}


def _record_settings(out: Path, settings: dict, lists: Sequence[str] = ()) -> None:
    """Write ``frames.json``: the settings, and the list files written (``lists`` added to the
    earlier ones)."""
    recorded = _check_settings(out, settings)
    lists = sorted({*recorded.get("lists", []), *lists})
    record = out / RECORD
    record.write_text(json.dumps({"settings": settings, "lists": lists}, indent=2) + "\n")


def _check_settings(out: Path, settings: dict) -> dict:
    """``frames.json``'s record ({} without one), refused when its settings are not
    ``settings``: a resumed extraction must not mix frames of two sizes or qualities in one
    folder."""
    recorded = _recorded(out)
    if recorded:
        earlier = recorded.get("settings") or {}
        if earlier != settings:
            differ = [
                f"{key} {earlier.get(key)!r}"
                for key in settings
                if earlier.get(key) != settings[key]
            ]
            raise ConfigError(
                f"{out} holds frames extracted with {', '.join(differ)}: give the same settings "
                "to go on with them, or another --out"
            )
    return recorded


def _plan(
    cfg: Config, datasets: dict[str, VideoDataset], out: Path, limit: int
) -> tuple[list[_Job], dict[str, Path]]:
    """A job per listed video (each once), and for a video list the lists of its folders."""
    jobs: dict[str, _Job] = {}
    rows: dict[str, list[tuple[str, str]]] = {}
    for split, dataset in datasets.items():
        samples = dataset.samples[:limit] if limit > 0 else dataset.samples
        rows[split] = []
        for sample in samples:
            folder = out / _relative_folder(sample.path, _base(cfg, split))
            jobs.setdefault(sample.path, _Job(sample.path, str(folder)))
            rows[split].append((str(folder.relative_to(out)), dataset.classes[sample.label]))
    _refuse_shared_folders(list(jobs.values()))
    lists: dict[str, Path] = {}
    if cfg.data.dataset == "videolist":
        for split, split_rows in rows.items():
            key = "annotations" if split == "train" else "val_annotations"
            lists[key] = out / f"{split}.csv"
            with lists[key].open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "label"])
                writer.writerows(split_rows)
    return list(jobs.values()), lists


def _refuse_shared_folders(jobs: list[_Job]) -> None:
    """Two videos named alike but for their extension (a.mp4, a.webm) would share one folder."""
    by_folder: dict[str, list[str]] = {}
    for job in jobs:
        by_folder.setdefault(job.folder, []).append(job.video)
    shared = [videos for videos in by_folder.values() if len(videos) > 1]
    if shared:
        raise ConfigError(
            f"{len(shared)} frame folders would hold two videos each, e.g. {' and '.join(shared[0])} "
            "(the same name but for the extension): rename one of them"
        )


def _base(cfg: Config, split: str) -> Path:
    """The folder the videos' paths are relative to: the root, or a video list's folder."""
    data = cfg.data
    if data.root:
        return Path(data.root)
    return Path(data.annotations if split == "train" else data.val_annotations).parent


def _relative_folder(video: str, base: Path) -> Path:
    """``video``'s path below ``base`` without its extension (its name alone if not below it)."""
    path = Path(video)
    try:
        relative = path.resolve().relative_to(base.resolve())
    except ValueError:
        relative = Path(path.name)
    return relative.with_suffix("")
