"""Clip transforms (torchvision v2): decoder frames uint8 [T, H, W, 3] -> normalised float clips.

This is the one place where decoder output becomes the model's layout [C, T, H, W].

Train preset (REFERENCE.md): timm's RandAugment ``rand-m20-mstd0.5-inc1`` (2 ops, each applied with
chance 0.5, at magnitude 10: m20 is clipped to timm's maximum), the same ops and magnitudes on every
frame of the clip, grey fill; short side resized to a random size in [256, 320]; one random 224 crop
for the whole clip; optional horizontal flip (never for SSv2: it has left/right class pairs); mean =
std = 0.5. The v2 transforms draw their parameters once per call and apply them to every leading
index of a ``Video`` [T, C, H, W], which is what keeps a clip's frames consistent; timm's
RandAugment takes one image, so its draws are repeated for each frame. Eval preset: short side
224, then ``num_crops`` crops along the long side.

``data.random_erase`` (not in the released recipe; VideoMAE's and DeiT's 0.25): with that chance, one
box of the normalised clip becomes normal noise, the same box and noise on every frame (VideoMAE
erases each frame at its own place, which makes the clip flicker); the flow labels, made from the
final clip, see a still box.
"""

from __future__ import annotations

import random
from typing import Literal

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


RandAugmentBackend = Literal["timm", "torchvision"]


class TimmRandAugment:
    """timm's RandAugment (``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1``, the
    policy of the released video code, DeiT and VideoMAE) with the same operations and
    magnitudes on every frame: uint8 images [..., 3, H, W] in, the same out.

    Each op is applied with chance 0.5 from timm's "increasing" set (15 ops, Invert and
    SolarizeAdd among them; Posterize at magnitude 10 keeps no bits, a black clip, as released),
    bicubic, translations up to 0.45 of each side, empty areas filled with ``fill``. timm
    draws from Python's and NumPy's global generators, which the training loader seeds per clip;
    restoring both before each frame repeats the clip's draws on every frame.
    """

    def __init__(
        self, num_ops: int, magnitude: int, *, magnitude_std: float = 0.0, fill: tuple = (GREY,) * 3
    ):
        self.policy = f"rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1"
        self.fill = tuple(fill)
        self._augment = None

    def _build(self):
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        # The "increasing" set translates by a fraction of each side (TranslateXRel / YRel, up to
        # 0.45 of the width and of the height at full magnitude, as released), so one transform
        # serves every frame size: timm's translate_const is for the absolute ops, not drawn here.
        augment = rand_augment_transform(
            self.policy, {"img_mean": self.fill, "interpolation": Image.BICUBIC}
        )
        for op in augment.ops:
            if op.name == "PosterizeIncreasing":
                op.aug_fn = _posterize
        return augment

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        if self._augment is None:  # built in the loader's worker, on first use
            self._augment = self._build()
        frames = rearrange(images.as_subclass(torch.Tensor), "... c h w -> (...) h w c").numpy()
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for frame in frames:
            random.setstate(py_state)
            np.random.set_state(np_state)
            out.append(np.asarray(self._augment(Image.fromarray(frame))))
        result = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).reshape(images.shape)
        return (
            tv_tensors.wrap(result, like=images)
            if isinstance(images, tv_tensors.TVTensor)
            else result
        )


def _posterize(image, bits_to_keep: int, **_):
    """timm's Posterize, also at 0 bits: a black image, as released. Pillow 13 refuses 0 bits,
    which timm's increasing Posterize asks for at magnitude 10."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def make_randaugment(
    num_ops: int = 2,
    magnitude: int = 10,
    *,
    backend: RandAugmentBackend = "timm",
    magnitude_std: float = 0.0,
    fill: tuple = (GREY,) * 3,
) -> TimmRandAugment | v2.RandAugment:
    """RandAugment on timm's magnitude scale (0..10, 10 = strongest; the released ``m20`` is
    clipped to 10).

    ``backend="torchvision"`` (faster, tensors throughout): torchvision's RandAugment, 11
    magnitude bins so that its index equals timm's level; it always applies both ops, draws from
    14 ops (Identity instead of Invert and SolarizeAdd), keeps 4 bits in Posterize at 10, and has
    no magnitude noise.
    """
    if not 0 <= magnitude <= 10:
        raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
    if backend == "timm":
        return TimmRandAugment(num_ops, magnitude, magnitude_std=magnitude_std, fill=fill)
    if magnitude_std:
        raise ValueError("torchvision's RandAugment has no magnitude noise: use backend timm")
    return v2.RandAugment(
        num_ops=num_ops,
        magnitude=magnitude,
        num_magnitude_bins=11,
        interpolation=v2.InterpolationMode.BILINEAR,
        fill=list(fill),
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
        randaugment_backend: RandAugmentBackend = "timm",
        randaugment_magnitude_std: float = 0.0,
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
            steps.append(
                make_randaugment(
                    randaugment_ops,
                    randaugment_magnitude,
                    backend=randaugment_backend,
                    magnitude_std=randaugment_magnitude_std,
                )
            )
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
    """Test clip: short side resized (bilinear, or ``bicubic`` as ImageNet-9's evaluation),
    ``num_crops`` crops along the long side, normalised."""

    def __init__(
        self,
        crop_size: int = 224,
        short_side: int = 224,
        num_crops: int = 3,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        interpolation: str = "bilinear",
    ):
        if crop_size > short_side:
            raise ValueError(f"crop_size {crop_size} is larger than the short side {short_side}")
        if num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        self.crop_size = crop_size
        self.short_side = short_side
        self.num_crops = num_crops
        self.mean, self.std = tuple(mean), tuple(std)
        self.interpolation = v2.InterpolationMode(interpolation)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> float [num_crops, C, T, crop, crop]."""
        video = F.resize(
            frames_to_video(frames),
            [self.short_side],
            interpolation=self.interpolation,
            antialias=True,
        )
        height, width = video.shape[-2:]
        crops = [
            F.crop(video, top, left, self.crop_size, self.crop_size)
            for top, left in self.crop_origins(height, width)
        ]
        return normalise(torch.stack(crops), self.mean, self.std)

    def crop_origins(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of each crop: evenly spaced along the long side, centred on the short."""
        room = max(height, width) - self.crop_size
        # One crop is centred as transformers' processors centre it (an odd room rounded down,
        # as on the short side), so an exported model's processor makes the same clip.
        along = np.linspace(0, room, self.num_crops) if self.num_crops > 1 else [room // 2]
        centre = (min(height, width) - self.crop_size) // 2
        if width >= height:
            return [(centre, int(round(a))) for a in along]
        return [(int(round(a)), centre) for a in along]
