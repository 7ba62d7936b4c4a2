"""Small real videos for the data tests, written with PyAV: VP9 WebM, H.264 MP4 and MPEG-4 AVI."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import torch

CODECS = {".webm": "libvpx-vp9", ".mp4": "libx264", ".avi": "mpeg4"}  # AVI: UCF101, HMDB51
# Fast settings; a short GOP on MP4 makes the reader seek past the first keyframe.
OPTIONS = {
    ".webm": {"deadline": "realtime", "cpu-used": "8"},
    ".mp4": {"g": "5", "preset": "fast"},
    ".avi": {},
}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 12,
    *,
    codec: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode uint8 frames [T, H, W, 3] (H, W even) to ``path`` (.webm, .mp4 or .avi), with the
    extension's codec and options unless given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec or CODECS[path.suffix], rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = OPTIONS[path.suffix] if options is None else options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(
    folder: str | Path, frames: np.ndarray, name: str = "img_{:05d}", ext: str = ".png"
) -> Path:
    """Write uint8 frames [T, H, W, 3] as images ``name.format(i + 1) + ext`` in ``folder``
    (the layout of frame-extracted datasets)."""
    from torchvision.io import encode_jpeg, encode_png

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encode = encode_png if ext == ".png" else lambda image: encode_jpeg(image, quality=95)
    for i, frame in enumerate(frames):
        data = encode(torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1))
        (folder / f"{name.format(i + 1)}{ext}").write_bytes(data.numpy().tobytes())
    return folder


def level_of(index: int) -> int:
    """Grey level that identifies frame ``index`` (flat frames survive compression well)."""
    return 16 + 7 * index


def numbered_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Flat frames whose brightness encodes their index (up to 33 frames)."""
    return np.stack([np.full((height, width, 3), level_of(i), np.uint8) for i in range(num_frames)])


def frame_numbers(frames: np.ndarray | object) -> list[int]:
    """Recover the indices of decoded ``numbered_frames`` from their brightness."""
    means = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1).mean(1)
    return [int(round((m - 16) / 7)) for m in means]


def moving_square_frames(
    num_frames: int, height: int = 48, width: int = 64, step: tuple[int, int] = (2, 0)
) -> np.ndarray:
    """A textured square on a textured background moving ``step`` = (dx, dy) pixels per frame."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    square = rng.integers(130, 256, (16, 16, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    for t in range(num_frames):
        x, y = 8 + step[0] * t, 8 + step[1] * t
        frames[t, y : y + 16, x : x + 16] = square
    return frames


def write_ssv2_tree(
    tmp: Path,
    classes: list[str],
    per_class: int = 2,
    old_names: bool = False,
    num_frames: int = 20,
    as_frames: bool = False,
) -> tuple[Path, Path]:
    """An SSv2-shaped dataset: webm videos in one folder (``as_frames``: ``<id>/`` folders of PNG
    frames), labels.json + train/validation lists.

    Video ids are numbers; video ``i`` belongs to class ``i % len(classes)``. Returns (root, annotations).
    """
    root, annotations = tmp / "videos", tmp / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    prefix = "something-something-v2-" if old_names else ""
    labels = {name: str(i) for i, name in enumerate(classes)}
    (annotations / f"{prefix}labels.json").write_text(json.dumps(labels))
    splits = {"train": [], "validation": []}
    frames = numbered_frames(num_frames)
    for i in range(per_class * len(classes) * 2):
        video_id = str(1000 + i)
        template = _template(classes[i % len(classes)])
        split = "train" if i < per_class * len(classes) else "validation"
        splits[split].append(
            {"id": video_id, "label": "x", "template": template, "placeholders": []}
        )
        if as_frames:
            write_frame_folder(root / video_id, frames)
        else:
            write_video(root / f"{video_id}.webm", frames)
    for split, entries in splits.items():
        (annotations / f"{prefix}{split}.json").write_text(json.dumps(entries))
    return root, annotations


def _template(name: str) -> str:
    """The list files write templates with bracketed placeholders."""
    return name.replace("something", "[something]")
