"""Dense optical flow -> per-token direction labels (paper Eq. 9-10, released conventions).

A clip's consecutive frames go through Farnebäck flow on grey frames; the flow vectors are
averaged over each patch; the mean vector's angle picks one of 8 45° bins (class 1..8) and patches
that barely move get class 0. Image axes: +x right, +y down; class k covers the angles
[45°·(k-1), 45°·k), so class 1 starts at "right", 3 at "down", 5 at "left", 7 at "up" (motion
exactly along an axis lies on a bin edge and goes either way with rounding, as released).

These are the pure steps; ``labeller.FlowLabeller`` runs them with one set of options.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from timematters.config import FarnebackParams

NUM_FLOW_CLASSES = 9
_GREY_WEIGHTS = (0.299, 0.587, 0.114)


def clip_to_grey(
    clip: torch.Tensor | np.ndarray,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> np.ndarray:
    """A clip -> float32 grey frames [T, H, W] on the released scale.

    The released code takes the normalised [-1, 1] frames and computes
    grey = (0.299 R + 0.587 G + 0.114 B) * 128. Accepted inputs:
      - uint8 [T, H, W, 3] (decoder output, RGB), mapped to [-1, 1] first;
      - float [C, T, H, W] (a normalised clip tensor), un-normalised with ``mean``/``std`` and
        mapped to [-1, 1] (with mean = std = 0.5 this is the identity).
    """
    if isinstance(clip, torch.Tensor):  # numpy has no bfloat16: float32 holds every dtype
        clip = clip.detach().cpu()
        clip = (clip if clip.dtype == torch.uint8 else clip.float()).numpy()
    frames = clip.shape[0 if clip.dtype == np.uint8 else 1] if clip.ndim == 4 else 2
    if frames < 2:  # no frame pair: nothing to label
        raise ValueError(f"flow needs two frames or more, got one: {list(clip.shape)}")
    if clip.dtype == np.uint8:
        if clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"expected a uint8 clip [T, H, W, 3], got shape {clip.shape}")
        rgb = clip.astype(np.float32) / 127.5 - 1.0  # [T, H, W, 3] in [-1, 1]
    else:
        if clip.ndim != 4 or clip.shape[0] != 3:
            raise ValueError(f"expected a float clip [C=3, T, H, W], got shape {clip.shape}")
        m = np.asarray(mean, np.float32)[:, None, None, None]
        s = np.asarray(std, np.float32)[:, None, None, None]
        unit = clip.astype(np.float32) * s + m  # [0, 1]
        rgb = np.moveaxis(unit * 2.0 - 1.0, 0, -1)
    grey = rgb @ np.asarray(_GREY_WEIGHTS, np.float32)
    return np.ascontiguousarray(grey * 128.0, dtype=np.float32)


def video_to_grey(
    video: torch.Tensor,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """A normalised batch [B, C, T, H, W] -> float32 grey frames [B, T, H, W], on its device.

    The batched torch counterpart of ``clip_to_grey``: (0.299 R + 0.587 G + 0.114 B) * 128 of
    the [-1, 1] frames.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected an RGB video [B, 3, T, H, W], got {tuple(video.shape)}")
    as_float32 = {"dtype": torch.float32, "device": video.device}
    m = torch.tensor(mean, **as_float32).view(1, 3, 1, 1, 1)
    s = torch.tensor(std, **as_float32).view(1, 3, 1, 1, 1)
    rgb = (video.float() * s + m) * 2.0 - 1.0  # [-1, 1]
    weights = torch.tensor(_GREY_WEIGHTS, **as_float32)
    return torch.einsum("bcthw,c->bthw", rgb, weights) * 128.0


def farneback_opencv(prev: np.ndarray, nxt: np.ndarray, params: FarnebackParams) -> np.ndarray:
    """OpenCV's dense Farnebäck flow between two float32 grey frames: [H, W, 2] (dx, dy)."""
    import cv2  # here, not at import: the losses import this module and need no OpenCV

    return cv2.calcOpticalFlowFarneback(
        prev=prev,
        next=nxt,
        flow=None,
        pyr_scale=params.pyr_scale,
        levels=params.levels,
        winsize=params.winsize,
        iterations=params.iterations,
        poly_n=params.poly_n,
        poly_sigma=params.poly_sigma,
        flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN if params.gaussian_window else 0,
    )


def flow_to_direction_labels(
    flow: torch.Tensor | np.ndarray,
    patch_size: int,
    *,
    threshold: str = "relative",
    relative_fraction: float = 0.01,
    absolute_tau: float = 0.5,
) -> torch.Tensor:
    """Dense flow [N, H, W, 2] -> token labels [N, S] int64 in {0..8} (Eq. 10).

    threshold="relative" (released): a patch moves iff r >= r_min + fraction * (r_max - r_min) over
    that frame pair's patches, and none does when r_max == r_min. threshold="absolute": it moves
    iff r >= absolute_tau pixels.
    """
    flow = torch.as_tensor(flow, dtype=torch.float32)
    N, H, W, _ = flow.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"frame size {H}x{W} is not a multiple of patch_size {patch_size}")
    # Mean flow *vector* per patch, row-major like the patch embedding: [N, S, 2].
    mean = rearrange(flow, "n (h p) (w q) c -> n (h w) (p q) c", p=patch_size, q=patch_size).mean(2)
    dx, dy = mean.unbind(-1)
    r = torch.sqrt(dx * dx + dy * dy)
    direction = _octant(dx, dy) + 1
    if threshold == "relative":
        r_min = r.amin(dim=1, keepdim=True)
        r_max = r.amax(dim=1, keepdim=True)
        # A pair whose patches all move alike (frozen or black frames: all 0) is still, as in the
        # released code, whose min-max normalisation gives zeros for a constant input.
        moving = (r >= r_min + relative_fraction * (r_max - r_min)) & (r_max > r_min)
    elif threshold == "absolute":
        moving = r >= absolute_tau
    else:
        raise ValueError(f"threshold must be 'relative' or 'absolute', got {threshold!r}")
    return torch.where(moving, direction, torch.zeros_like(direction))


def _octant(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """floor(φ / 45°) of the angle φ in [0°, 360°) of (dx, dy), y down as in the image, by exact
    comparisons: float atan2 put vectors within ~1e-7 rad of a bin edge on either side (motion
    along an axis, (-3e-9, 3), went to the bin before the axis). (0, 0) is 0, as atan2 gives."""
    # The quadrant (φ in [0°, 90°) is 0, ...), and the vector turned back by it into the first.
    turns = [(dx, dy), (dy, -dx), (-dx, -dy), (-dy, dx)]
    quadrant = torch.zeros_like(dx, dtype=torch.long)
    for index, condition in enumerate(((dx <= 0) & (dy > 0), (dx < 0) & (dy <= 0))):
        quadrant = torch.where(condition, index + 1, quadrant)
    quadrant = torch.where((dx >= 0) & (dy < 0), 3, quadrant)
    u = torch.stack([turn[0] for turn in turns]).gather(0, quadrant[None])[0]
    v = torch.stack([turn[1] for turn in turns]).gather(0, quadrant[None])[0]
    upper_half = (v >= u) & (u > 0)  # 45° and above within its quadrant
    return 2 * quadrant + upper_half.long()
