"""Farnebäck flow labels: frame pairs per second, OpenCV against the batched torch port.

Rows for each batch of pairs (224², released parameters): OpenCV on one core (a serial loop, as one
loader worker does), OpenCV in a process pool over all cores, torch on the CPU with each thread
count asked for, and torch on a GPU when there is one. Each row times flow plus the token labels
under both thresholds, and reports how many tokens agree with OpenCV's one-core labels and the
mean end-point difference of its flow from OpenCV's. The pairs are consecutive frames of generated
photo-like clips (1/f texture, camera pan/rotation/zoom, an independently moving object).

    python benchmarks/flow.py [--pairs 8 64 448] [--threads 1,2|none] [--device auto|cpu|cuda]
                              [--out benchmarks/results/flow.json]

Timings are the best of ``--repeats`` runs; on a shared machine the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import commit

from timematters.flow import (
    FarnebackParams,
    clip_to_grey,
    configure_opencv_threads,
    farneback_opencv,
    farneback_torch,
    flow_to_direction_labels,
)

PARAMS = FarnebackParams()
THRESHOLDS = ("relative", "absolute")
_FRAMES: dict[str, np.ndarray] = {}  # prev, next [N, H, W]; inherited by the forked pool


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like RGB image: 1/f noise plus a few flat discs (edges)."""
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=(3, size, size)) + 1j * rng.normal(size=(3, size, size))) / f
    image = np.real(np.fft.ifft2(spectrum)).transpose(1, 2, 0)
    image = np.ascontiguousarray(np.clip(128 + 45 * (image - image.mean()) / image.std(), 0, 255))
    for _ in range(8):
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        colour = tuple(float(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, centre, int(rng.integers(6, max(7, size // 6))), colour, -1, cv2.LINE_AA)
    return image.astype(np.float32)


def _clip(num_frames: int, size: int, seed: int) -> np.ndarray:
    """uint8 frames [T, size, size, 3]: the camera pans, turns and zooms; one object moves."""
    rng = np.random.default_rng(seed)
    margin = size // 4
    scene = _texture(size + 2 * margin, rng)
    sprite, radius = _texture(size // 4, rng), size // 8
    mask = np.zeros((2 * radius, 2 * radius), np.float32)
    cv2.circle(mask, (radius, radius), radius - 2, 1.0, -1, cv2.LINE_AA)
    pan, turn, zoom = rng.uniform(-3, 3, 2), rng.uniform(-2, 2), rng.uniform(0.98, 1.02)
    position, velocity = rng.uniform(0, size - 2 * radius, 2), rng.uniform(-4, 4, 2)
    centre = (size / 2 + margin, size / 2 + margin)
    frames = []
    for t in range(num_frames):
        camera = cv2.getRotationMatrix2D(centre, turn * t, zoom**t)
        camera[:, 2] += pan * t - margin
        frame = cv2.warpAffine(scene, camera, (size, size), borderMode=cv2.BORDER_REFLECT_101)
        place = np.float32([[1, 0, 0], [0, 1, 0]])
        place[:, 2] = np.clip(position + velocity * t, 0, size - 2 * radius)
        alpha = cv2.warpAffine(mask, place, (size, size))[..., None]
        frame = frame * (1 - alpha) + cv2.warpAffine(sprite, place, (size, size)) * alpha
        frames.append(np.clip(frame, 0, 255).round().astype(np.uint8))
    return np.stack(frames)


def _grey_pairs(pairs: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive frames of 8-frame clips, as grey frames on the released scale [pairs, H, W]."""
    greys = [clip_to_grey(_clip(8, size, seed)) for seed in range(math.ceil(pairs / 7))]
    prev = np.concatenate([g[:-1] for g in greys])[:pairs]
    nxt = np.concatenate([g[1:] for g in greys])[:pairs]
    return prev, nxt


def _labels(flow: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    return {th: flow_to_direction_labels(flow, 16, threshold=th).cpu() for th in THRESHOLDS}


def _opencv_flows(start: int, stop: int) -> np.ndarray:
    prev, nxt = _FRAMES["prev"], _FRAMES["next"]
    return np.stack([farneback_opencv(prev[i], nxt[i], PARAMS) for i in range(start, stop)])


def _opencv_worker_labels(span: tuple[int, int]) -> dict[str, torch.Tensor]:
    return _labels(_opencv_flows(*span))


def _best_time(run, repeats: int, sync=lambda: None) -> tuple[float, list[float], object]:
    """Best wall time of ``repeats`` runs after one warm-up, every time, and the last result."""
    result = run()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times), times, result


def _row(pairs, method, seconds, times, labels, reference_labels, flow=None, reference=None):
    row = {
        "pairs": pairs,
        "method": method,
        "ms_per_pair": 1000 * seconds / pairs,
        "pairs_per_s": pairs / seconds,
        "times_s": times,
    }
    for th in THRESHOLDS:
        agree = (labels[th] == reference_labels[th]).float().mean().item()
        row[f"label_agreement_{th}"] = agree
    if flow is not None:
        row["mean_epe_px"] = float(np.linalg.norm(flow - reference, axis=-1).mean())
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[8, 64, 448])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--threads",
        default="1,2",
        help="torch CPU thread counts, comma-separated; none: no CPU rows",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="OpenCV pool size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/flow.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.size % 16:
        parser.error("--size must be a multiple of the patch size, 16")
    threads = [] if args.threads == "none" else [int(t) for t in args.threads.split(",")]
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    load_before = os.getloadavg()

    # OpenCV's threads are set once, in the parent, before the pool forks (see
    # configure_opencv_threads); the frames are made before the fork so the workers inherit them.
    configure_opencv_threads(1)
    _FRAMES["prev"], _FRAMES["next"] = _grey_pairs(max(args.pairs), args.size)
    pool = multiprocessing.get_context("fork").Pool(
        args.workers, initializer=torch.set_num_threads, initargs=(1,)
    )
    threads_before = torch.get_num_threads()
    rows = []
    for n in args.pairs:
        prev, nxt = _FRAMES["prev"][:n], _FRAMES["next"][:n]  # a batch is the first n pairs
        torch.set_num_threads(1)

        def one_core(n=n):
            flow = _opencv_flows(0, n)
            return flow, _labels(flow)

        seconds, times, (reference, reference_labels) = _best_time(one_core, args.repeats)
        rows.append(_row(n, "opencv 1 core", seconds, times, reference_labels, reference_labels))

        bounds = np.linspace(0, n, min(args.workers, n) + 1).round().astype(int)
        spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))

        def pooled(spans=spans):
            parts = pool.map(_opencv_worker_labels, spans)
            return {th: torch.cat([p[th] for p in parts]) for th in THRESHOLDS}

        seconds, times, labels = _best_time(pooled, args.repeats)
        rows.append(
            _row(n, f"opencv pool x{args.workers}", seconds, times, labels, reference_labels)
        )

        def torch_flow(prev_t, nxt_t):
            flow = farneback_torch(prev_t, nxt_t, PARAMS)
            return flow, _labels(flow)

        runs = [(f"torch cpu {t} thread{'s' * (t > 1)}", t, "cpu") for t in threads]
        if use_cuda:
            runs.append((f"torch {torch.cuda.get_device_name()}", threads_before, "cuda"))
        for method, num_threads, device in runs:
            torch.set_num_threads(num_threads)
            prev_t, nxt_t = torch.from_numpy(prev).to(device), torch.from_numpy(nxt).to(device)
            sync = torch.cuda.synchronize if device == "cuda" else lambda: None
            seconds, times, (flow, labels) = _best_time(
                lambda prev_t=prev_t, nxt_t=nxt_t: torch_flow(prev_t, nxt_t), args.repeats, sync
            )
            flow = flow.cpu().numpy()
            rows.append(_row(n, method, seconds, times, labels, reference_labels, flow, reference))
        torch.set_num_threads(threads_before)
    pool.close()
    pool.join()

    baseline = {r["pairs"]: r["pairs_per_s"] for r in rows if r["method"] == "opencv 1 core"}
    print(
        f"{'pairs':>5}  {'method':<28} {'ms/pair':>8} {'pairs/s':>8} {'vs 1 core':>9} "
        f"{'agree rel':>9} {'agree abs':>9} {'mean EPE':>9}"
    )
    for r in rows:
        r["speedup_vs_opencv_1_core"] = r["pairs_per_s"] / baseline[r["pairs"]]
        epe = f"{r['mean_epe_px']:.1e}" if "mean_epe_px" in r else "-"
        print(
            f"{r['pairs']:>5}  {r['method']:<28} {r['ms_per_pair']:>8.2f} {r['pairs_per_s']:>8.1f} "
            f"{r['speedup_vs_opencv_1_core']:>8.2f}x {100 * r['label_agreement_relative']:>8.2f}% "
            f"{100 * r['label_agreement_absolute']:>8.2f}% {epe:>9}"
        )
    load_after = os.getloadavg()
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in vars(args).items() if k != "out"}
    setting["params"] = vars(PARAMS)
    environment = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "commit": commit(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if use_cuda else None,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    out.write_text(
        json.dumps({"setting": setting, "environment": environment, "results": rows}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
