"""ImageNet-9 and the Backgrounds Challenge (Xiao et al., ICLR 2021): folders, transforms, Table 4.

Layout under ``data.root``: test variations ``<variation>/val/<NN_class>/*`` (``original``,
``only_fg``, ``no_fg``, ``only_bg_b``, ``only_bg_t``, ``mixed_same``, ``mixed_rand``,
``mixed_next``; classes ``00_dog`` ... ``08_fish``) and a training folder
``<data.imagenet9.train_dir>/<NN_class>/*`` (default ``original/train``). Images are read with
torchvision and become one-frame videos ``[C, 1, H, W]``, so the training loop, the losses and the
evaluation serve them as they serve clips.

Transforms (torchvision v2), the DeiT recipe without mixup, cutmix and random erasing unless the
config turns them on (``data.mixup`` / ``cutmix`` / ``random_erase``): RandomResizedCrop, optional
flip, RandAugment, normalisation; evaluation
resizes the short side to ``data.eval_short_side`` and takes the centre crop.

Table 4 reports top-1 on each variation and BG-Gap = acc(mixed_same) − acc(mixed_rand): how much
accuracy a background of another class costs when the foreground stays
(``engine/backgrounds.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from timematters.data.collate import BadVideo
from timematters.data.transforms import (
    RandAugmentBackend,
    make_eraser,
    make_randaugment,
    normalise,
    random_erase,
)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
_CLASS_FOLDER = re.compile(r"^(\d+)_")


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as uint8 RGB [3, H, W]: torchvision's decoders, and PIL for the formats
    they lack (BMP); a 16-bit PNG is brought to 8 bits (it decodes as uint16)."""
    try:
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError:
        if path.suffix.lower() != ".bmp":
            raise
        from PIL import Image

        with Image.open(path) as opened:
            return torch.from_numpy(np.asarray(opened.convert("RGB")).copy()).permute(2, 0, 1)
    if image.dtype != torch.uint8:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)  # 0-65535 -> 0-255
    return image


def read_class_folders(folder: str | Path) -> list[str]:
    """The ``NN_name`` class folders of ``folder``, in label order (folder NN holds label NN)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}{layout_hint(folder)}")
    # Hidden folders (.ipynb_checkpoints, macOS's ._ copies) are no classes.
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class folders (expected 00_<name>, 01_<name>, ...)")
    numbers = [_CLASS_FOLDER.match(name) for name in classes]
    bad = [name for name, m in zip(classes, numbers, strict=True) if m is None]
    if bad:
        raise ValueError(f"{folder}: class folders must be named NN_<name>, got {bad}")
    if [int(m.group(1)) for m in numbers] != list(range(len(classes))):
        raise ValueError(
            f"{folder}: class folders must be numbered 0..{len(classes) - 1}: {classes}"
        )
    return classes


def layout_hint(folder: Path) -> str:
    """What the tree around a missing ``<root>/<variation>/<split>`` folder suggests instead: class
    folders one level up (no split folder), or the variations one folder down (the download's
    own top folder, ``bg_challenge/``)."""
    above, root = folder.parent, folder.parent.parent
    if above.is_dir() and any(_CLASS_FOLDER.match(p.name) for p in above.iterdir() if p.is_dir()):
        return f"; {above} holds class folders: move them into {folder}"
    inside = (
        [p for p in root.iterdir() if (p / above.name / folder.name).is_dir()]
        if root.is_dir()
        else []
    )
    if inside:
        return f"; it is one folder down: data.root={inside[0]}"
    return ""


def check_same_classes(reference: str | Path, folders: list[str | Path]) -> list[str]:
    """The class folders of ``reference``, when every one of ``folders`` has the same: a
    training folder and its test variations, checked before a run trains (a mismatch found at
    its first evaluation costs the epochs before it)."""
    classes = read_class_folders(reference)
    for folder in folders:
        found = read_class_folders(folder)
        if found != classes:
            missing = sorted(set(classes) - set(found)) or "none"
            extra = sorted(set(found) - set(classes)) or "none"
            raise ValueError(
                f"{folder} does not have the classes of {reference}: missing {missing}, extra "
                f"{extra}; every variation needs the same NN_<name> class folders"
            )
    return classes


class ImageFolderDataset(Dataset):
    """Images under ``<folder>/<NN_class>/``, each a one-frame video.

    Items: ``video`` float [C, 1, H, W], ``label``, ``video_id`` (the path below ``folder``),
    ``index``; an image that cannot be decoded comes back as ``BadVideo``.
    """

    def __init__(
        self,
        folder: str | Path,
        transform: Callable[[torch.Tensor], torch.Tensor],
        classes: list[str] | None = None,
    ):
        self.folder = Path(folder)
        found = read_class_folders(self.folder)
        if classes is not None and found != list(classes):
            raise ValueError(f"{self.folder} has classes {found}, expected {list(classes)}")
        self.classes = found
        self.transform = transform
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((self.folder / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise ValueError(f"{self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.missing: list[str] = []  # the folder is the list: nothing can be missing

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def probe(self, index: int) -> tuple[str, str | None]:
        """(path, why it cannot be used or None), for ``data check``."""
        path, label = self.samples[index]
        try:
            read_rgb(path)
        except (RuntimeError, ValueError, OSError) as error:
            return str(path), f"cannot decode: {error}"
        return str(path), None

    def __getitem__(self, index: int) -> dict[str, Any] | BadVideo:
        path, label = self.samples[index]
        try:
            image = read_rgb(path)
        except (RuntimeError, ValueError, OSError) as error:
            return BadVideo(str(path), f"cannot decode: {error}", index, label)
        return {
            "video": self.transform(image),
            "label": label,
            "video_id": path.relative_to(self.folder).as_posix(),
            "index": index,
        }


class ImageTrainTransform:
    """RandomResizedCrop -> (flip) -> RandAugment -> normalise (-> random erasing), in timm's
    order for DeiT, bicubic as there: uint8 [3, H, W] -> [C, 1, crop, crop]."""

    def __init__(
        self,
        crop_size: int = 224,
        min_scale: float = 0.08,
        hflip: bool = True,
        randaugment_ops: int = 2,
        randaugment_magnitude: int = 9,
        randaugment_backend: RandAugmentBackend = "timm",
        randaugment_magnitude_std: float = 0.5,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
        random_erase: float = 0.0,
    ):
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(
                crop_size,
                scale=(min_scale, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            )
        ]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if randaugment_ops > 0:
            # Filled with the mean pixel, as timm's image recipes (DeiT) do.
            fill = tuple(min(255, round(255 * m)) for m in mean)
            augment = make_randaugment(
                randaugment_ops,
                randaugment_magnitude,
                backend=randaugment_backend,
                magnitude_std=randaugment_magnitude_std,
                fill=fill,
            )
            steps.append(augment)
        self.augment = v2.Compose(steps)
        self.eraser = make_eraser(random_erase)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = self.augment(tv_tensors.Image(image))
        clip = normalise(image[None], self.mean, self.std)  # a one-frame video [C, 1, H, W]
        return clip if self.eraser is None else random_erase(clip, self.eraser)


class ImageEvalTransform:
    """Short side to ``short_side`` (bicubic, as timm's DeiT evaluation), centre crop, normalise:
    uint8 [3, H, W] -> [C, 1, crop, crop]."""

    def __init__(
        self,
        crop_size: int = 224,
        short_side: int = 256,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
    ):
        if crop_size > short_side:
            raise ValueError(f"crop_size {crop_size} is larger than the short side {short_side}")
        self.crop_size, self.short_side = crop_size, short_side
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = F.resize(
            tv_tensors.Image(image),
            [self.short_side],
            interpolation=v2.InterpolationMode.BICUBIC,
            antialias=True,
        )
        image = F.center_crop(image, [self.crop_size])
        return normalise(image[None], self.mean, self.std)
