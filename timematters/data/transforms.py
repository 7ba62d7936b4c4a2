"""Clip transforms (torchvision v2): decoder frames uint8 [T, H, W, 3] -> normalised float clips.

This is the one place where decoder output becomes the model's layout [C, T, H, W].

Train preset (REFERENCE.md): RandAugment with 2 ops at magnitude 10 on timm's 0..10 scale, the same
ops and magnitudes on every frame of the clip, grey fill; short side resized to a random size in
[256, 320]; one random 224 crop for the whole clip; optional horizontal flip (never for SSv2: it has
left/right class pairs); mean = std = 0.5. The v2 transforms draw their parameters once per call and
apply them to every leading index of a ``Video`` [T, C, H, W], which is what keeps a clip's frames
consistent. Eval preset: short side 224, then ``num_crops`` crops along the long side.

``data.random_erase`` (not in the released recipe; VideoMAE's and DeiT's 0.25): with that chance, one
box of the normalised clip becomes normal noise, the same box and noise on every frame (VideoMAE
erases each frame at its own place, which makes the clip flicker); the flow labels, made from the
final clip, see a still box.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

GREY = 128


def frames_to_video(frames: np.ndarray | torch.Tensor) -> tv_tensors.Video:
    """Decoder frames uint8 [T, H, W, 3] -> torchvision video uint8 [T, 3, H, W]."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    return tv_tensors.Video(rearrange(frames, "t h w c -> t c h w"))


def normalise(video: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [..., T, 3, H, W] -> normalised float [..., C, T, H, W]."""
    unit = video.as_subclass(torch.Tensor).float() / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return rearrange((unit - mean_t) / std_t, "... t c h w -> ... c t h w").contiguous()


def random_erase(clip: torch.Tensor, eraser: v2.RandomErasing) -> torch.Tensor:
    """A normalised clip [C, T, H, W] through ``eraser``, one box for all frames."""
    video = eraser(tv_tensors.Video(rearrange(clip, "c t h w -> t c h w")))
    return rearrange(video.as_subclass(torch.Tensor), "t c h w -> c t h w").contiguous()


def make_eraser(probability: float) -> v2.RandomErasing | None:
    """torchvision's random erasing with timm's defaults (area 2-33%, per-pixel normal noise)."""
    return v2.RandomErasing(p=probability, value="random") if probability > 0 else None


def make_randaugment(num_ops: int = 2, magnitude: int = 10) -> v2.RandAugment:
    """RandAugment on timm's magnitude scale (0..10, 10 = strongest), grey fill.

    torchvision spreads each op's strength over ``num_magnitude_bins`` values; 11 bins make its
    magnitude index equal timm's level (timm's ``m20`` is clipped to 10, its maximum). timm's
    magnitude noise (``mstd0.5``) has no torchvision counterpart.
    """
    if not 0 <= magnitude <= 10:
        raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
    return v2.RandAugment(
        num_ops=num_ops,
        magnitude=magnitude,
        num_magnitude_bins=11,
        interpolation=v2.InterpolationMode.BILINEAR,
        fill=GREY,
    )


class TrainTransform:
    """Training clip: RandAugment -> short-side jitter -> random crop (-> flip) -> normalise
    (-> random erasing)."""

    def __init__(
        self,
        crop_size: int = 224,
        short_side: tuple[int, int] = (256, 320),
        randaugment_ops: int = 2,
        randaugment_magnitude: int = 10,
        hflip: bool = False,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        random_erase: float = 0.0,
    ):
        low, high = short_side
        if not crop_size <= low <= high:
            raise ValueError(
                f"need crop_size <= short side range, got {crop_size} and {short_side}"
            )
        steps: list[v2.Transform] = []
        if randaugment_ops > 0:
            steps.append(make_randaugment(randaugment_ops, randaugment_magnitude))
        # RandomResize samples from [min, max): + 1 includes the upper end.
        steps += [v2.RandomResize(low, high + 1, antialias=True), v2.RandomCrop(crop_size)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        self.augment = v2.Compose(steps)
        self.eraser = make_eraser(random_erase)
        self.crop_size = crop_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> float [C, T, crop, crop]."""
        clip = normalise(self.augment(frames_to_video(frames)), self.mean, self.std)
        return clip if self.eraser is None else random_erase(clip, self.eraser)


class EvalTransform:
    """Test clip: short side resized, ``num_crops`` crops along the long side, normalised."""

    def __init__(
        self,
        crop_size: int = 224,
        short_side: int = 224,
        num_crops: int = 3,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
    ):
        if crop_size > short_side:
            raise ValueError(f"crop_size {crop_size} is larger than the short side {short_side}")
        if num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        self.crop_size = crop_size
        self.short_side = short_side
        self.num_crops = num_crops
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> float [num_crops, C, T, crop, crop]."""
        video = F.resize(frames_to_video(frames), [self.short_side], antialias=True)
        height, width = video.shape[-2:]
        crops = [
            F.crop(video, top, left, self.crop_size, self.crop_size)
            for top, left in self.crop_origins(height, width)
        ]
        return normalise(torch.stack(crops), self.mean, self.std)

    def crop_origins(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of each crop: evenly spaced along the long side, centred on the short."""
        room = max(height, width) - self.crop_size
        along = np.linspace(0, room, self.num_crops) if self.num_crops > 1 else [room / 2]
        centre = (min(height, width) - self.crop_size) // 2
        if width >= height:
            return [(centre, int(round(a))) for a in along]
        return [(int(round(a)), centre) for a in along]
