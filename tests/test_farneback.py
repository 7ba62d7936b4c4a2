"""The batched torch Farnebäck against OpenCV's, on photo-like frames under known motions."""

import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch

from timematters.flow import (
    FarnebackParams,
    batch_flow_labels,
    clip_flow_labels,
    clip_to_grey,
    farneback_opencv,
    farneback_torch,
    flow_to_direction_labels,
)

MAX_MEAN_EPE = 0.01  # pixels, the bar
MIN_LABEL_AGREEMENT = 0.995
MOTIONS = ("translate", "rotate", "scale", "objects", "objects on a still background")
RELEASED = FarnebackParams()


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB image [H, W, 3] float32 in [0, 255]: 1/f noise (the power spectrum of
    natural images) with a few flat discs for sharp edges."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=(3, height, width)) + 1j * rng.normal(size=(3, height, width))) / f
    image = np.real(np.fft.ifft2(spectrum)).transpose(1, 2, 0)
    image = np.ascontiguousarray(np.clip(128 + 45 * (image - image.mean()) / image.std(), 0, 255))
    for _ in range(6):
        colour = tuple(float(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(
            image, centre, int(rng.integers(4, max(5, height // 6))), colour, -1, cv2.LINE_AA
        )
    return image.astype(np.float32)


def _warp(image: np.ndarray, matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def _frame_pair(motion: str, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 RGB frames [H, W, 3]: a crop of a larger texture, then the moved crop."""
    margin = 24
    big = _texture(height + 2 * margin, width + 2 * margin, seed)
    crop = np.float32([[1, 0, -margin], [0, 1, -margin]])
    first = _warp(big, crop, height, width)
    rng = np.random.default_rng(seed + 1)
    centre = ((width + 2 * margin) / 2, (height + 2 * margin) / 2)
    if motion == "translate":
        shift = crop + np.float32([[0, 0, rng.uniform(-3, 3)], [0, 0, rng.uniform(-3, 3)]])
        second = _warp(big, shift, height, width)
    elif motion in ("rotate", "scale"):
        angle, scale = (
            (rng.uniform(2, 5), 1.0) if motion == "rotate" else (0.0, rng.uniform(1.03, 1.06))
        )
        moved = _warp(big, cv2.getRotationMatrix2D(centre, angle, scale), *big.shape[:2])
        second = _warp(moved, crop, height, width)
    else:  # three objects moving their own ways on a still or slowly drifting background
        drift = (0.0, 0.0) if "still" in motion else (0.7, 0.4)
        second = _warp(big, crop + np.float32([[0, 0, drift[0]], [0, 0, drift[1]]]), height, width)
        side = min(height, width) // 3
        texture = _texture(side, side, seed + 2)
        mask = np.zeros((side, side), np.float32)
        cv2.circle(mask, (side // 2, side // 2), side // 2 - 2, 1.0, -1, cv2.LINE_AA)
        for step in ((3.2, 1.1), (-2.5, 2.0), (0.5, -3.0)):
            x, y = rng.integers(0, width - side), rng.integers(0, height - side)
            for frame, (dx, dy) in ((first, (0.0, 0.0)), (second, step)):
                place = np.float32([[1, 0, x + dx], [0, 1, y + dy]])
                alpha = cv2.warpAffine(mask, place, (width, height))[..., None]
                frame[:] = (
                    frame * (1 - alpha) + cv2.warpAffine(texture, place, (width, height)) * alpha
                )
    return tuple(np.clip(f, 0, 255).round().astype(np.uint8) for f in (first, second))


def _grey_pairs(motion: str, height: int, width: int, seeds) -> tuple[np.ndarray, np.ndarray]:
    """Grey frames on the released scale: prev, next [N, H, W] float32."""
    greys = [clip_to_grey(np.stack(_frame_pair(motion, height, width, s))) for s in seeds]
    return np.stack([g[0] for g in greys]), np.stack([g[1] for g in greys])


def _opencv_flows(prev: np.ndarray, nxt: np.ndarray, params=RELEASED) -> np.ndarray:
    return np.stack([farneback_opencv(p, n, params) for p, n in zip(prev, nxt, strict=True)])


def _torch_flows(prev: np.ndarray, nxt: np.ndarray, params=RELEASED, device="cpu"):
    flow = farneback_torch(
        torch.from_numpy(prev).to(device), torch.from_numpy(nxt).to(device), params
    )
    return flow.cpu().numpy()


def _assert_flows_close(reference: np.ndarray, flow: np.ndarray) -> None:
    epe = np.linalg.norm(flow - reference, axis=-1)
    assert epe.mean() <= MAX_MEAN_EPE, f"mean end-point difference {epe.mean():.4f} px"


def _assert_matches(reference: np.ndarray, flow: np.ndarray, patch_size: int | None) -> None:
    assert np.linalg.norm(reference, axis=-1).mean() > 0.3  # the motion is real
    _assert_flows_close(reference, flow)
    if patch_size is None:
        return
    for threshold in ("relative", "absolute"):
        expected = flow_to_direction_labels(reference, patch_size, threshold=threshold)
        got = flow_to_direction_labels(flow, patch_size, threshold=threshold)
        agreement = (expected == got).float().mean().item()
        assert agreement >= MIN_LABEL_AGREEMENT, f"{threshold}: {agreement:.4f} of tokens agree"


@pytest.mark.parametrize("motion", MOTIONS)
def test_matches_opencv_under_motion(motion):
    prev, nxt = _grey_pairs(motion, 96, 96, seeds=(0, 1, 2))
    _assert_matches(_opencv_flows(prev, nxt), _torch_flows(prev, nxt), patch_size=8)


def test_matches_opencv_at_224_with_released_patches():
    prev, nxt = _grey_pairs("objects", 224, 224, seeds=(3,))
    _assert_matches(_opencv_flows(prev, nxt), _torch_flows(prev, nxt), patch_size=16)


# Level sizes 100x76 and 50x38; 38x50 (37.5 and 50.5 round half to even); 45x65.
@pytest.mark.parametrize("size", [(200, 152), (75, 101), (90, 130)])
def test_matches_opencv_at_sizes_off_the_16_grid(size):
    prev, nxt = _grey_pairs("rotate", *size, seeds=(4,))
    _assert_matches(_opencv_flows(prev, nxt), _torch_flows(prev, nxt), patch_size=None)


@pytest.mark.parametrize(
    "params",
    [
        FarnebackParams(gaussian_window=True),
        FarnebackParams(pyr_scale=0.6, levels=4, winsize=21, poly_n=7, poly_sigma=1.5),
        FarnebackParams(winsize=10, iterations=1, gaussian_window=True),
        FarnebackParams(levels=0, winsize=9),
    ],
)
def test_matches_opencv_with_other_parameters(params):
    prev, nxt = _grey_pairs("objects", 96, 96, seeds=(5,))
    _assert_matches(_opencv_flows(prev, nxt, params), _torch_flows(prev, nxt, params), None)


def test_batch_equals_pairs_one_at_a_time_for_any_thread_count():
    prev, nxt = (torch.from_numpy(a) for a in _grey_pairs("translate", 64, 80, seeds=range(6)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_by_one = torch.cat([farneback_torch(prev[i : i + 1], nxt[i : i + 1]) for i in range(6)])
        batched_one_thread = farneback_torch(prev, nxt)
        torch.set_num_threads(2)  # torch's two intra-op threads split the same operations
        batched_two_threads = farneback_torch(prev, nxt)
    finally:
        torch.set_num_threads(threads)
    assert batched_one_thread.shape == (6, 64, 80, 2)
    torch.testing.assert_close(batched_one_thread, one_by_one, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched_two_threads, batched_one_thread, rtol=0, atol=1e-5)
    assert farneback_torch(prev[:0], nxt[:0]).shape == (0, 64, 80, 2)


def test_still_and_flat_frames():
    # Still frames: flow only where OpenCV's border handling creates some (both agree on it).
    still = _grey_pairs("translate", 64, 64, seeds=(9,))[0]
    _assert_flows_close(_opencv_flows(still, still), _torch_flows(still, still))
    flat = torch.full((1, 64, 64), 20.0)
    assert torch.equal(farneback_torch(flat, flat), torch.zeros(1, 64, 64, 2))


def _disc_on_still_background(seed: int, centre: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grey frames prev, next [64, 64]: a still photo-like background and a textured disc of
    radius 8 at ``centre`` (x, y) that moves by (2.5, -1.5) px, like the synthetic clips at 64²."""
    size, radius = 64, 8
    background = _texture(size, size, seed)
    disc = _texture(2 * radius + 1, 2 * radius + 1, seed + 1)
    mask = np.zeros(disc.shape[:2], np.float32)
    cv2.circle(mask, (radius, radius), radius - 1, 1.0, -1, cv2.LINE_AA)
    frames = []
    for dx, dy in ((0.0, 0.0), (2.5, -1.5)):
        place = np.float32([[1, 0, centre[0] - radius + dx], [0, 1, centre[1] - radius + dy]])
        alpha = cv2.warpAffine(mask, place, (size, size))[..., None]
        frame = background * (1 - alpha) + cv2.warpAffine(disc, place, (size, size)) * alpha
        frames.append(np.clip(frame, 0, 255).round().astype(np.uint8))
    grey = clip_to_grey(np.stack(frames))
    return grey[0], grey[1]


# A disc near the left edge, then near the top edge: the top row and left column see a still
# background there, where the off-image rule hinges on the sign of a flow of exactly 0.
@pytest.mark.parametrize("centre", [(20, 44), (44, 20)])
def test_still_background_at_64_matches_opencv_at_every_pixel(centre):
    pairs = [_disc_on_still_background(seed, centre) for seed in range(4)]
    prev, nxt = np.stack([p for p, _ in pairs]), np.stack([n for _, n in pairs])
    reference = _opencv_flows(prev, nxt)
    assert np.linalg.norm(reference, axis=-1).max() > 1.0  # the disc moves
    # OpenCV is not at the mercy of its own rounding here: transposed frames give the same flow.
    transposed = _opencv_flows(*(np.ascontiguousarray(f.transpose(0, 2, 1)) for f in (prev, nxt)))
    transposed = transposed.transpose(0, 2, 1, 3)[..., ::-1]
    assert np.linalg.norm(transposed - reference, axis=-1).max() < 1e-3
    # So the torch flow must match it at every pixel, not only on average: before exact Δb = 0 on
    # still content it was up to ~0.1 px off near the top and left edges.
    epe = np.linalg.norm(_torch_flows(prev, nxt) - reference, axis=-1)
    assert epe.max() < 1e-3, f"max end-point difference {epe.max():.4f} px"


def test_rejects_mismatched_frames():
    with pytest.raises(ValueError, match="frame stacks"):
        farneback_torch(torch.zeros(2, 32, 32), torch.zeros(2, 32, 33))


def _normalised_clips(mean, std, seeds) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Clips of 4 frames under different motions: the uint8 clips and the normalised batch."""
    clips = []
    for seed, motion in zip(seeds, MOTIONS, strict=False):
        first, second = _frame_pair(motion, 64, 64, seed)
        third, fourth = _frame_pair(MOTIONS[(seed + 1) % 4], 64, 64, seed + 10)
        clips.append(np.stack([first, second, third, fourth]))
    m, s = torch.tensor(mean).view(3, 1, 1, 1), torch.tensor(std).view(3, 1, 1, 1)
    video = torch.stack([(torch.from_numpy(c).permute(3, 0, 1, 2) / 255.0 - m) / s for c in clips])
    return video, clips


@pytest.mark.parametrize(
    "mean, std", [((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
)
def test_batch_flow_labels_match_clip_flow_labels(mean, std):
    video, _ = _normalised_clips(mean, std, seeds=(0, 1, 2))
    labels = batch_flow_labels(video, patch_size=8, mean=mean, std=std)
    assert labels.shape == (3, 3, 64) and labels.dtype == torch.int64
    for threshold in ("relative", "absolute"):
        labels = batch_flow_labels(video, 8, threshold=threshold, mean=mean, std=std)
        for clip, clip_labels in zip(video, labels, strict=True):
            expected = clip_flow_labels(clip, 8, threshold=threshold, mean=mean, std=std)
            agreement = (clip_labels == expected).float().mean().item()
            assert agreement >= MIN_LABEL_AGREEMENT, f"{threshold}: {agreement:.4f}"


_FORKED_LOADER = """
import numpy as np, cv2, torch
from torch.utils.data import DataLoader, Dataset
from timematters.flow import clip_flow_labels, configure_opencv_threads

configure_opencv_threads(1)
# The parent uses OpenCV's thread pool (augmentations, say) before the workers fork.
cv2.resize(cv2.GaussianBlur(np.random.rand(2000, 2000).astype(np.float32), (31, 31), 5), (500, 500))

class Clips(Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        clip = np.random.default_rng(i).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
        return clip_flow_labels(clip, 16)

def worker_init(_):
    cv2.setNumThreads(1)  # what hangs forever when the parent has not set it
    configure_opencv_threads(1)  # allowed: the parent did

loader = DataLoader(Clips(), batch_size=2, num_workers=2, multiprocessing_context="fork",
                    worker_init_fn=worker_init)
assert [tuple(b.shape) for b in loader] == [(2, 2, 16), (2, 2, 16)]
print("finished")
"""

_FORKED_WITHOUT_PARENT = """
import os
from timematters.flow import configure_opencv_threads

pid = os.fork()
if pid == 0:
    try:
        configure_opencv_threads(1)
    except RuntimeError:
        os._exit(0)
    os._exit(1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "a forked child was allowed to set threads"
print("refused")
"""


@pytest.mark.parametrize(
    "script, expected", [(_FORKED_LOADER, "finished"), (_FORKED_WITHOUT_PARENT, "refused")]
)
def test_opencv_threads_in_forked_workers(script, expected):
    # A subprocess with a timeout, so that a deadlock fails the test instead of hanging the suite.
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matches_opencv_on_gpu():
    prev, nxt = _grey_pairs("objects", 224, 224, seeds=(10, 11))
    on_gpu = _torch_flows(prev, nxt, device="cuda")
    _assert_matches(_opencv_flows(prev, nxt), on_gpu, patch_size=16)
    one_at_a_time = [_torch_flows(prev[i : i + 1], nxt[i : i + 1], device="cuda") for i in range(2)]
    np.testing.assert_allclose(np.concatenate(one_at_a_time), on_gpu, rtol=0, atol=1e-5)
    video, _ = _normalised_clips((0.5,) * 3, (0.5,) * 3, seeds=(0, 1))
    labels = batch_flow_labels(video.cuda(), patch_size=8)
    assert labels.device.type == "cuda"
    agreement = (labels.cpu() == batch_flow_labels(video, patch_size=8)).float().mean().item()
    assert agreement >= MIN_LABEL_AGREEMENT
