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
listed in ``bad_videos.jsonl`` and reported (exit status 1).
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from timematters.config import Config, ConfigError, validate
from timematters.data.build import build_dataset, loader_workers
from timematters.data.dataset import VideoDataset
from timematters.data.video import VideoDecodeError, open_video
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
        try:
            reader = open_video(job.video, self.decoder)
            partial.mkdir(parents=True)
            for start in range(0, reader.num_frames, CHUNK):
                stop = min(start + CHUNK, reader.num_frames)
                frames = reader.get_frames(np.arange(start, stop))
                self._write(frames, partial, first=start + 1)
        except VideoDecodeError as error:
            shutil.rmtree(partial, ignore_errors=True)
            return job.video, error.reason
        partial.rename(folder)
        return job.video, None

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
    out.mkdir(parents=True, exist_ok=True)
    _record_settings(out, {"dataset": data.dataset, "short_side": short_side, "quality": quality})

    datasets = {
        split: build_dataset(cfg, split, flow_labels=False, patch_size=1) for split in splits
    }
    jobs, lists = _plan(cfg, datasets, out, limit)
    todo = [job for job in jobs if not Path(job.folder).is_dir()]
    print(f"{len(jobs)} videos: {len(jobs) - len(todo)} done already, {len(todo)} to extract")
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
    bad_log = out / "bad_videos.jsonl"
    if bad:
        with bad_log.open("a") as handle:
            for video, reason in bad:
                handle.write(json.dumps({"path": video, "reason": reason}) + "\n")
    overrides = f"data.root={out} data.decoder=frames"
    for key, path in lists.items():
        overrides += f" data.{key}={path}"
    print(f"{len(todo) - len(bad)} frame folders written to {out}")
    if bad:
        print(f"{len(bad)} videos could not be decoded and were skipped: {bad_log}")
    print(f"read them with: {overrides}")
    return 1 if bad else 0


def _record_settings(out: Path, settings: dict) -> None:
    """Write ``frames.json``; an earlier extraction's there must have had the same settings, so
    that a resumed extraction does not mix frames of two sizes or qualities in one folder."""
    record = out / RECORD
    if record.is_file():
        earlier = json.loads(record.read_text()).get("settings")
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
    record.write_text(json.dumps({"settings": settings}, indent=2) + "\n")


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
