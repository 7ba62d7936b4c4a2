"""The clip pipeline every video dataset shares: decode -> sample -> transform (-> flow labels).

``VideoDataset`` turns a list of (path, label) samples into training or test items; SSv2, Kinetics
and video lists only find their samples and classes. A video that cannot be used comes back as a
``BadVideo`` marker for ``collate_videos`` to drop and count. Also here: the helpers those datasets
share to find videos on disk and report the missing ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from timematters.data.collate import BadVideo
from timematters.data.sampling import Sampling, sample_clip_indices
from timematters.data.video import (
    EXTRACTION_FAILED,
    IMAGE_EXTENSIONS,
    Backend,
    PyAVReader,
    VideoDecodeError,
    open_video,
    require_backend,
)

log = logging.getLogger(__name__)

# The containers PyAV (FFmpeg) reads that hold videos: phones', cameras', broadcast and web ones.
VIDEO_EXTENSIONS = (
    *(".webm", ".mp4", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts"),
    *(".3gp", ".wmv", ".flv", ".ogv", ".gif"),
)


@dataclass(frozen=True)
class VideoSample:
    path: str
    label: int
    video_id: str


class VideoDataset(Dataset):
    """Decode -> sample -> transform (-> flow labels) over labelled videos.

    Items: ``video`` float [C, T, H, W] in training, [V, C, T, H, W] otherwise (V = temporal views
    x the transform's spatial crops, temporal-major); ``label``; ``video_id``; ``index``; and
    ``flow_labels`` int64 [T-1, S] when ``flow_labels`` (a clip -> labels function) is given.

    ``repeats`` > 1 (training; repeated augmentation, ``data.repeated_augmentation``): the video's
    frames are decoded once and augmented that many times, ``video`` [N, C, T, H, W] and
    ``flow_labels`` [N, T-1, S] with ``repeats`` N in the item; ``collate_videos`` makes them N
    clips of the batch.
    """

    def __init__(
        self,
        samples: Sequence[VideoSample],
        classes: Sequence[str],
        *,
        transform: Callable[[np.ndarray], torch.Tensor],
        train: bool,
        num_frames: int = 8,
        sampling: Sampling = "segment",
        dense_stride: int = 8,
        temporal_views: int = 1,
        decoder: Backend = "pyav",
        flow_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
        min_frames: int | None = None,
        subsets: dict[str, list[int]] | None = None,
        missing: Sequence[str] = (),
        repeats: int = 1,
    ):
        if not samples:
            raise ValueError("the dataset has no videos")
        if repeats != 1 and not train:
            raise ValueError("repeated augmentation is for training clips only")
        if flow_labels is not None and not train:
            raise ValueError("flow labels are made for training clips only")
        require_backend(decoder)
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.train = train
        self.num_frames = num_frames
        self.sampling = sampling
        self.dense_stride = dense_stride
        self.temporal_views = temporal_views
        self.decoder = decoder
        self.flow_labels = flow_labels
        self.min_frames = num_frames if min_frames is None else min_frames
        self.subsets = subsets or {}
        self.missing = list(missing)
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any] | BadVideo:
        sample = self.samples[index]
        try:
            frames, num_views = self.read_clips(sample.path)
        except VideoDecodeError as error:
            return BadVideo(sample.path, error.reason, index, sample.label)
        item = {"label": sample.label, "video_id": sample.video_id, "index": index}
        if not self.train:
            views = [self.transform(clip) for clip in np.split(frames, num_views)]
            # An eval transform gives [crops, C, T, H, W]; a single-crop one [C, T, H, W].
            return {"video": torch.cat([v if v.ndim == 5 else v[None] for v in views]), **item}
        clips = [self.transform(frames) for _ in range(self.repeats)]
        flows = [self.flow_labels(clip) for clip in clips] if self.flow_labels else []
        # One clip as it is; N repeated ones stacked, for collate_videos to unfold.
        join = torch.stack if self.repeats > 1 else (lambda tensors: tensors[0])
        item["video"] = join(clips)
        if flows:
            item["flow_labels"] = join(flows)
        if self.repeats > 1:
            item["repeats"] = self.repeats
        return item

    def probe(self, index: int) -> tuple[str, str | None]:
        """(path, why it cannot be used or None): every frame of item ``index`` decoded, as the
        clips of all epochs may draw any of them (the same answer every time)."""
        path = self.samples[index].path
        try:
            reader = open_long_enough(path, self.decoder, self.min_frames)
            if isinstance(reader, PyAVReader):
                # One pass decodes every frame from the first to the last, keeping those two.
                reader.get_frames([0, reader.num_frames - 1])
            else:  # frame files (or a decoder that seeks to each frame): all of them, in turn
                sizes = set()
                for start in range(0, reader.num_frames, 16):
                    chunk = reader.get_frames(range(start, min(start + 16, reader.num_frames)))
                    sizes.add(chunk.shape[1:3])
                if len(sizes) > 1:
                    shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
                    raise VideoDecodeError(path, f"frames of different sizes ({shown})")
        except VideoDecodeError as error:
            return path, error.reason
        return path, None

    def read_clips(self, path: str) -> tuple[np.ndarray, int]:
        """Decoded frames of every clip to make from ``path``: uint8 [V*T, H, W, 3], and V."""
        reader = open_long_enough(path, self.decoder, self.min_frames)
        views = sample_clip_indices(
            self.sampling,
            reader.num_frames,
            self.num_frames,
            self.train,
            stride=self.dense_stride,
            num_views=self.temporal_views,
        )
        return reader.get_frames(np.concatenate(views)), len(views)


def open_long_enough(path: str | Path, decoder: Backend, min_frames: int):
    """``open_video``, refusing a video of fewer than ``min_frames`` frames as too short (a
    ``VideoDecodeError``, as training, evaluation and ``data check`` skip it)."""
    reader = open_video(path, decoder)
    if reader.num_frames < min_frames:
        raise VideoDecodeError(
            path, f"too short: {reader.num_frames} frames, at least {min_frames} needed"
        )
    return reader


def split_missing(
    samples: Sequence[VideoSample], where: str, listed_in: str = "", folders: bool = False
) -> tuple[list[VideoSample], list[str]]:
    """(present, missing paths); warns about missing files (``folders``: frame folders), fails
    when none is present.

    Only an absent path is missing: a frame folder among video files (``open_video`` reads it),
    or a file in a list of frame folders, is there, and one that cannot be read is a bad video,
    counted as such. Only when none is of the kind ``folders`` says is the list refused, naming
    the data.decoder setting that reads them.
    """
    present = [s for s in samples if os.path.exists(s.path)]
    missing = [s.path for s in samples if not os.path.exists(s.path)]
    expected = os.path.isdir if folders else os.path.isfile
    if present and not any(expected(s.path) for s in present):
        missing, present = [s.path for s in samples], []
    as_folders = not present and not folders and any(Path(p).is_dir() for p in missing[:20])
    as_files = not present and folders and any(Path(p).is_file() for p in missing[:20])
    report_missing(
        missing, len(samples), where, listed_in, frame_folders=as_folders, video_files=as_files
    )
    return present, missing


def find_named_videos(
    root: str | Path,
    entries: Sequence[tuple[str, int]],
    listed_in: str,
    frames: bool = False,
    shown: Callable[[str, int], str] = lambda name, label: name,
    extension: str = ".mp4",
) -> tuple[list[VideoSample], list[str]]:
    """(samples, missing) of (name, label) entries whose video is ``<name>.<any video extension>``
    anywhere under ``root`` (class folders, split folders or flat: datasets are laid out all three
    ways), or with ``frames`` the frame folder ``<name>/``. A missing video is listed as
    ``shown(name, label)`` + ``extension`` (or "/") and reported (``report_missing``); none found
    is an error.
    """
    videos = index_videos(root, recursive=True, frames=frames)
    samples = [VideoSample(videos[name], label, name) for name, label in entries if name in videos]
    ending = "/" if frames else extension
    missing = [shown(name, label) + ending for name, label in entries if name not in videos]
    # None found: are they there as the other kind (data.decoder=frames forgotten, or not meant)?
    other = index_videos(root, recursive=True, frames=not frames) if not samples else {}
    folders = not frames and any(name in other for name, _ in entries)
    files = frames and any(name in other for name, _ in entries)
    report_missing(
        missing,
        len(entries),
        str(root),
        listed_in=listed_in,
        frame_folders=folders,
        video_files=files,
    )
    return samples, missing


FRAMES_HINT = "; they are folders: for folders of frame images set data.decoder=frames"
FILES_HINT = (
    "; they are video files: data.decoder=frames reads folders of frame images, leave it out "
    "(or set data.decoder=pyav) to decode the files"
)


def report_missing(
    missing: Sequence[str],
    total: int,
    where: str,
    listed_in: str = "",
    frame_folders: bool = False,
    video_files: bool = False,
) -> None:
    """Warn that ``missing`` of ``total`` videos listed in ``listed_in`` are not under ``where``.

    The list file is named because a run reads two (training and evaluation) and the notice must
    say which one to fix. It is logged ("timematters" logger), not printed, so that a run's
    train.log can keep it. ``frame_folders``: none was found as a file, but they are there as
    folders (frame-extracted videos read without data.decoder=frames): the error says so;
    ``video_files`` the other way round.
    """
    listed = f"videos listed in {listed_in}" if listed_in else "listed videos"
    if total and len(missing) == total:
        hint = FRAMES_HINT if frame_folders else FILES_HINT if video_files else ""
        raise FileNotFoundError(
            f"none of the {total} {listed} were found under {where} (first: {missing[0]}){hint}"
        )
    if missing:
        are = "is" if len(missing) == 1 else "are"
        log.warning(
            f"{len(missing)} of {total} {listed} {are} missing under {where} and {are} left out "
            f"(first: {missing[0]})"
        )


def index_videos(root: str | Path, recursive: bool = False, frames: bool = False) -> dict[str, str]:
    """File stem -> path of the video files in ``root`` (and its subfolders if ``recursive``).
    ``frames``: the videos are frame folders, so folder name -> folder: the folders in ``root``,
    or with ``recursive`` every folder below it that holds frame images (or is empty: a bad
    video, not a missing one).

    One directory listing instead of a file-system query per listed video.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video root not found: {root}")
    if frames:
        return _index_frame_folders(root, recursive)
    folders = (
        ((folder, names) for folder, _, names in os.walk(root))
        if recursive
        else [(str(root), [entry.name for entry in os.scandir(root) if entry.is_file()])]
    )
    index: dict[str, str] = {}
    for folder, names in folders:
        for name in names:
            stem, extension = os.path.splitext(name)
            if extension.lower() in VIDEO_EXTENSIONS:
                index.setdefault(stem, os.path.join(folder, name))
    return index


def _index_frame_folders(root: Path, recursive: bool) -> dict[str, str]:
    """Folder name -> frame folder. Recursively: the folders holding frame images, then, for names
    not taken by one, the empty folders (an empty frame folder, or one whose video ``data frames``
    could not decode), which are bad videos rather than missing ones."""
    if not recursive:  # one listing: a folder's frames are read when its video is
        return {entry.name: entry.path for entry in os.scandir(root) if entry.is_dir()}
    index: dict[str, str] = {}
    empty: list[str] = []
    for folder, subfolders, names in os.walk(root):
        if any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for name in names):
            index.setdefault(os.path.basename(folder), folder)
        elif not subfolders and folder != str(root) and all(_no_frame(name) for name in names):
            empty.append(folder)
    for folder in empty:
        index.setdefault(os.path.basename(folder), folder)
    return index


def _no_frame(name: str) -> bool:
    """A file an empty frame folder may hold: a hidden one, or ``data frames``' record of why
    its video gave no frames."""
    return name.startswith(".") or name == EXTRACTION_FAILED
