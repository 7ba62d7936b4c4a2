"""A procedural miniature of ImageNet-9 and the Backgrounds Challenge, written as an IN-9 folder tree.

The image counterpart of ``data/synthetic.py``, and built from its sprites and textures:

- **Foreground = class**: one flat-coloured object whose shape names the class (ellipse, square,
  triangle, cross, ring); its size, rotation, position and colour are drawn independently of the
  class, so only the shape (the arrangement of patches) identifies it.
- **Background = a shortcut**: class c owns a background texture (a pattern and palette of the
  video benchmark). In the training folder and in the ``original`` test variation, as in natural
  ImageNet photos, ``spurious_rate`` of each class's images show their class's background and the
  rest show the other backgrounds evenly.
- **Test variations** (the Backgrounds Challenge's): every variation shows the same test
  foregrounds on other backgrounds. ``only_fg``: black; ``mixed_same``: a fresh background of the
  object's class; ``mixed_rand``: a background of a uniformly random class; ``mixed_next``: of
  class c+1; ``only_bg_t``: the ``original`` background without the object.

``write_backgrounds_tree`` writes PNGs in the layout ``data/imagenet9.py`` reads
(``original/train/<NN_class>/`` and ``<variation>/val/<NN_class>/``), so the demo runs the same
reader, training loop and Table 4 evaluation as real IN-9 does. Every image is a pure function of
(seed, split, index, variation).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_png

from timematters.data.synthetic import Layer, background_texture, composite_layers, object_sprite

SHAPES = ("ellipse", "square", "triangle", "cross", "ring")
CLASSES = tuple(f"{i:02d}_{shape}" for i, shape in enumerate(SHAPES))
# Class c's background: a distinct pattern and palette of the video benchmark for each class.
CLASS_BACKGROUNDS = (0, 2, 4, 6, 8)
VARIATIONS = ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next", "only_bg_t")
_SPLITS = {"train": 0, "val": 1}


def render_foreground(label: int, rng: np.random.Generator, img_size: int = 64) -> Layer:
    """The object of one image: class ``label``'s shape in one random colour, and where it lies."""
    radius = rng.uniform(0.25, 0.35) * img_size
    centre = rng.uniform(radius, img_size - radius, 2)
    # The shape, randomly rotated (its alpha; the texture depth does not change the draws).
    alpha = object_sprite(SHAPES[label], radius, rng, contrast=0.0)[..., 3:]
    # One flat colour: the benchmark's textured fill hides the outline from a tiny ViT trained
    # for minutes, and the outline is what tells the classes apart.
    colour = np.array(
        colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 0.9), rng.uniform(0.8, 1))
    )
    sprite = np.concatenate([colour.astype(np.float32) * alpha, alpha], axis=-1)
    return Layer(sprite, centre[None], np.array([radius]))


def render_background(
    texture_class: int | None, rng: np.random.Generator, img_size: int = 64
) -> np.ndarray:
    """Class ``texture_class``'s background texture, or black for None: float32 RGB [H, W, 3] in
    [0, 1]."""
    if texture_class is None:
        return np.zeros((img_size, img_size, 3), np.float32)
    return background_texture(CLASS_BACKGROUNDS[texture_class], img_size, rng)


def compose(background: np.ndarray, foreground: Layer | None) -> np.ndarray:
    """The object pasted over the background: uint8 RGB [H, W, 3]."""
    return composite_layers(
        background, [foreground] if foreground is not None else [], num_frames=1
    )[0]


def assign_backgrounds(
    labels: np.ndarray, spurious_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Each image's background class: exactly ``spurious_rate`` of every class's images (rounded)
    get their own class's, the rest cycle over the other classes."""
    K = len(CLASSES)
    backgrounds = np.empty(len(labels), np.int64)
    for c in range(K):
        where = rng.permutation(np.flatnonzero(labels == c))
        own = round(spurious_rate * len(where))
        others = np.delete(np.arange(K), c)
        spread = (np.arange(len(where) - own) + rng.integers(K - 1)) % (K - 1)
        backgrounds[where] = np.concatenate([np.full(own, c), others[spread]])
    return backgrounds


def background_class(variation: str, label: int, own: int, rng: np.random.Generator) -> int | None:
    """Which class's background a test variation puts behind an object of class ``label``."""
    if variation in ("original", "only_bg_t"):
        return own
    if variation == "only_fg":
        return None
    if variation == "mixed_same":
        return label
    if variation == "mixed_rand":
        return int(rng.integers(len(CLASSES)))
    if variation == "mixed_next":
        return (label + 1) % len(CLASSES)
    raise ValueError(f"unknown variation {variation!r}; choose from {', '.join(VARIATIONS)}")


def write_backgrounds_tree(
    root: str | Path,
    num_train: int = 3000,
    num_test: int = 500,
    img_size: int = 64,
    spurious_rate: float = 0.8,
    seed: int = 0,
    variations: tuple[str, ...] = VARIATIONS,
) -> Path:
    """Write the miniature under ``root`` in the IN-9 layout; returns ``root``."""
    if not 0.0 <= spurious_rate <= 1.0:
        raise ValueError(f"spurious_rate must be in [0, 1], got {spurious_rate}")
    root = Path(root)
    for split, count in (("train", num_train), ("val", num_test)):
        rng = np.random.default_rng([seed, _SPLITS[split]])
        labels = rng.permutation(np.arange(count) % len(CLASSES))
        own = assign_backgrounds(labels, spurious_rate, rng)
        for variation in ("original",) if split == "train" else variations:
            folder = root / variation / split
            for name in CLASSES:
                (folder / name).mkdir(parents=True, exist_ok=True)
            # only_bg_t shows the original background itself; the others draw their own.
            scene_id = 0 if variation in ("original", "only_bg_t") else VARIATIONS.index(variation)
            for index, (label, background) in enumerate(zip(labels, own, strict=True)):
                image_seed = (seed, _SPLITS[split], index)
                scene_rng = np.random.default_rng((*image_seed, 1, scene_id))
                texture = background_class(variation, int(label), int(background), scene_rng)
                scene = render_background(texture, scene_rng, img_size)
                fg = None
                if variation != "only_bg_t":
                    fg = render_foreground(int(label), np.random.default_rng(image_seed), img_size)
                image = torch.from_numpy(compose(scene, fg)).permute(2, 0, 1).contiguous()
                write_png(image, str(folder / CLASSES[label] / f"{index:05d}.png"))
    return root
