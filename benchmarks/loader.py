"""Data-loading speed: clips per second per DataLoader worker for decode + sample + augment, with
and without flow labels (OpenCV Farnebäck on the final crop), on generated videos shaped like SSv2
(VP9 WebM, 240 px high, 12 fps, 3 s; segment sampling) and Kinetics (H.264 MP4, 256 px high,
30 fps, 10 s; dense sampling, stride 8), and the SSv2-like videos as folders of JPEG frames
(quality 90; ``data.decoder=frames``). The SSv2-like videos also with repeated augmentation
(``data.repeated_augmentation=2``: one decode, two augmented clips), timed as whole items, and
with torchvision's RandAugment in place of timm's (``data.randaugment_backend=torchvision``).

One process with one torch and one OpenCV thread stands for one worker.

    python benchmarks/loader.py [--clips 20] [--out benchmarks/results/loader.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import timm
import torch
import torchvision
from _common import commit

from timematters.data.transforms import TrainTransform
from timematters.data.videolist import VideoListDataset
from timematters.flow import clip_flow_labels

KINDS = {
    # name: (extension, codec, height, width, fps, seconds, sampling)
    "ssv2-like webm": (".webm", "libvpx-vp9", 240, 426, 12, 3, "segment"),
    "kinetics-like mp4": (".mp4", "libx264", 256, 340, 30, 10, "dense"),
    "ssv2-like jpg frames": ("", "jpeg", 240, 426, 12, 3, "segment"),
}


def _scene(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random scene panning right with a square moving down: codec-friendly content."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, (width + 2 * num_frames) // 8, 3), dtype=np.uint8)
    scene = cv2.resize(coarse, (width + 2 * num_frames, height), interpolation=cv2.INTER_CUBIC)
    frames = np.stack([scene[:, 2 * t : 2 * t + width] for t in range(num_frames)])
    for t in range(num_frames):
        y = (height // 4 + 2 * t) % (height - 40)
        frames[t, y : y + 40, width // 2 : width // 2 + 40] = (230, 40, 40)
    return frames


def _write(path: Path, frames: np.ndarray, codec: str, fps: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir()
    for t, frame in enumerate(frames):
        cv2.imwrite(
            str(folder / f"img_{t + 1:05d}.jpg"), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]
        )


def _make_videos(folder: Path, kind: str, count: int) -> Path:
    ext, codec, height, width, fps, seconds, _ = KINDS[kind]
    names = []
    stem = "_".join(kind.split()[:2])
    for i in range(count):
        name = f"{stem}_{i}{ext}"
        frames = _scene(fps * seconds, height, width, seed=i)
        if codec == "jpeg":
            _write_frames(folder / name, frames)
        else:
            _write(folder / name, frames, codec, fps)
        names.append(f"{name} 0\n")
    listing = folder / f"{stem}.txt"
    listing.write_text("".join(names))
    return listing


def _time_clips(dataset: VideoListDataset, clips: int) -> dict[str, float]:
    """Per-stage milliseconds per clip (median) and clips per second over the whole item."""
    stages: dict[str, list[float]] = {"decode": [], "augment": [], "flow": [], "total": []}
    for i in range(clips + 2):
        sample = dataset.samples[i % len(dataset)]
        start = time.perf_counter()
        frames, _ = dataset.read_clips(sample.path)
        decoded = time.perf_counter()
        video = dataset.transform(frames)
        augmented = time.perf_counter()
        if dataset.flow_labels is not None:
            dataset.flow_labels(video)
        done = time.perf_counter()
        if i < 2:  # warm-up
            continue
        stages["decode"].append(decoded - start)
        stages["augment"].append(augmented - decoded)
        stages["flow"].append(done - augmented)
        stages["total"].append(done - start)
    result = {f"{k}_ms": 1000 * statistics.median(v) for k, v in stages.items()}
    result["clips_per_s"] = len(stages["total"]) / sum(stages["total"])
    return result


def _time_items(dataset: VideoListDataset, clips: int) -> dict[str, float]:
    """Clips per second over whole items (each ``dataset.repeats`` clips of one decode)."""
    times = []
    for i in range(clips // dataset.repeats + 2):
        start = time.perf_counter()
        dataset[i % len(dataset)]
        times.append(time.perf_counter() - start)
    times = times[2:]  # warm-up
    return {"clips_per_s": dataset.repeats * len(times) / sum(times)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=20, help="timed clips per setting")
    parser.add_argument("--videos", type=int, default=4, help="generated videos per kind")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/loader.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(0)
    short_side = (round(args.crop_size * 256 / 224), round(args.crop_size * 320 / 224))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (_, codec, *_, sampling) in KINDS.items():
            listing = _make_videos(Path(tmp), kind, args.videos)
            for with_flow in (False, True):
                dataset = VideoListDataset(
                    listing,
                    transform=TrainTransform(crop_size=args.crop_size, short_side=short_side),
                    train=True,
                    num_frames=args.num_frames,
                    sampling=sampling,
                    dense_stride=8,
                    decoder="frames" if codec == "jpeg" else "pyav",
                    flow_labels=(
                        functools.partial(clip_flow_labels, patch_size=args.patch_size)
                        if with_flow
                        else None
                    ),
                )
                row = {"videos": kind, "flow_labels": with_flow, "randaugment": "timm"}
                rows.append({**row, **_time_clips(dataset, args.clips)})
                if kind == "ssv2-like webm" and not with_flow:  # the other RandAugment
                    transform = dataset.transform
                    dataset.transform = TrainTransform(
                        crop_size=args.crop_size,
                        short_side=short_side,
                        randaugment_backend="torchvision",
                    )
                    timed = _time_clips(dataset, args.clips)
                    rows.append({**row, "randaugment": "torchvision", **timed})
                    dataset.transform = transform
                if kind == "ssv2-like webm":  # one decode for two clips, against one each
                    dataset.repeats = 2
                    timed = _time_items(dataset, 2 * args.clips)
                    rows.append({**row, "repeats": 2, **timed})

    print(
        f"{'videos':<21} {'flow':<5} {'RandAugment':<12} {'repeats':>7} {'clips/s/worker':>14} "
        f"{'decode ms':>10} {'augment ms':>11} {'flow ms':>8}"
    )
    for r in rows:
        stages = "".join(
            f"{r[key]:>{width}.1f}" if key in r else " " * width
            for key, width in (("decode_ms", 11), ("augment_ms", 12), ("flow_ms", 9))
        )
        print(
            f"{r['videos']:<21} {'yes' if r['flow_labels'] else 'no':<5} {r['randaugment']:<12} "
            f"{r.get('repeats', 1):>7} {r['clips_per_s']:>14.1f}{stages}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in vars(args).items() if k != "out"}
    environment = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "av": av.__version__,
        "opencv": cv2.__version__,
        "timm": timm.__version__,
        "commit": commit(),
        "cpu": platform.processor() or platform.machine(),
        "threads": 1,
    }
    out.write_text(
        json.dumps({"setting": setting, "environment": environment, "results": rows}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
