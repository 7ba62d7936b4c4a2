"""A procedural benchmark of short clips: temporal and static classes plus a spatial shortcut.

A miniature of the paper's SSv2 setting (Table 3, Appendix A), small enough to train on a CPU:

- **Temporal classes** come in time-reversed pairs (two things moving closer / apart, something
  moving towards / away from the camera, covering / uncovering). Each pair renders one event as a
  function of its progress p in [0, 1]; one class plays p forwards, its partner backwards, from the
  same random draws. A clip of one class, reversed, is exactly a clip of its partner, so the *set*
  of frames says nothing about which class of the pair it shows: only their order does.
- **Static classes** show one drifting object whose shape (square, triangle, cross, ring) names
  the class; the drift is drawn independently of the class, so order carries no information.
- **The spurious cue**: every class owns a background texture. In the training split
  ``spurious_rate`` of each class's clips show their class's background and the rest show the
  other backgrounds evenly; in the val and test splits every class shows every background equally
  often. A model that learns the background instead of the action loses accuracy on test, as a
  model that learns scenes instead of time does on SSv2.

Backgrounds are textured (stripes, checkers, dots, waves, smoothed noise); objects are saturated
and carry a shallower texture (``object_contrast``), so Farnebäck flow has edges and structure to
track while the objects stay easy to segment: at full contrast the demo's tiny ViT, trained from
scratch, learns little of them in its budget (25% top-1 without the background cue, against 38% at
the default 0.3). Objects move a few pixels per frame at 64². A clip is a pure function of (label,
background, seed), so DataLoader workers render clips on demand; and, the same every epoch, a clip
and its flow labels are made once and kept (``cache``).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from timematters.data.transforms import frames_to_video, normalise

CLASSES = (
    "moving something and something closer to each other",
    "moving something and something away from each other",
    "moving something towards the camera",
    "moving something away from the camera",
    "covering something with something",
    "uncovering something",
    "showing a square",
    "showing a triangle",
    "showing a cross",
    "showing a ring",
)
TEMPORAL = (0, 1, 2, 3, 4, 5)
STATIC = (6, 7, 8, 9)
PAIRS = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4}
_REVERSED = {1, 3, 5}  # these classes play their pair's event backwards
_STATIC_SHAPES = {6: "square", 7: "triangle", 8: "cross", 9: "ring"}

# Background c is class c's scene cue: (pattern, dark colour, light colour), muted so that the
# saturated objects stand out. Phase, angle and period vary per clip; pattern and palette do not.
BACKGROUNDS = (
    ("stripes", (0.30, 0.22, 0.16), (0.62, 0.50, 0.38)),
    ("stripes", (0.16, 0.24, 0.32), (0.42, 0.54, 0.66)),
    ("checkers", (0.22, 0.28, 0.14), (0.52, 0.58, 0.36)),
    ("checkers", (0.30, 0.18, 0.28), (0.62, 0.44, 0.58)),
    ("blotches", (0.20, 0.30, 0.24), (0.48, 0.62, 0.52)),
    ("blotches", (0.36, 0.32, 0.22), (0.72, 0.66, 0.50)),
    ("dots", (0.14, 0.30, 0.32), (0.44, 0.66, 0.66)),
    ("dots", (0.34, 0.18, 0.14), (0.70, 0.44, 0.36)),
    ("waves", (0.24, 0.24, 0.30), (0.56, 0.56, 0.66)),
    ("waves", (0.34, 0.28, 0.10), (0.70, 0.60, 0.30)),
)
_SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Layer:
    """One sprite and where it is in each frame."""

    sprite: np.ndarray  # premultiplied RGBA [n, n, 4] float32, object radius n/2 - 1 pixels
    centres: np.ndarray  # [T, 2] (x, y) in pixels
    radii: np.ndarray  # [T] on-screen radius in pixels


def render_clip(
    label: int,
    background: int,
    seed: int | Sequence[int],
    *,
    img_size: int = 64,
    num_frames: int = 8,
    object_contrast: float = 0.3,
) -> np.ndarray:
    """One clip of class ``label`` on background ``background``: uint8 RGB [T, H, W, 3].

    A pure function of its arguments. The two classes of a temporal pair consume the same random
    draws, so ``render_clip(a, b, s)[::-1]`` equals ``render_clip(PAIRS[a], b, s)`` exactly.
    ``object_contrast`` is the depth of the objects' texture: 0 paints them flat, 1 spans their
    dark-to-light palette.
    """
    if not 0.0 <= object_contrast <= 1.0:
        raise ValueError(f"object_contrast must be in [0, 1], got {object_contrast}")
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    if not 0 <= background < len(BACKGROUNDS):
        raise ValueError(f"background must be in [0, {len(BACKGROUNDS)}), got {background}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2, got {num_frames}")
    rng = np.random.default_rng(seed)
    frame = background_texture(background, img_size, rng)
    progress = np.arange(num_frames) / (num_frames - 1)  # the same floats in both directions
    if label in _REVERSED:
        progress = progress[::-1]
    if label in (0, 1):
        layers = _closer(progress, img_size, rng, object_contrast)
    elif label in (2, 3):
        layers = _towards_camera(progress, img_size, rng, object_contrast)
    elif label in (4, 5):
        layers = _covering(progress, img_size, rng, object_contrast)
    else:
        layers = _drifting(_STATIC_SHAPES[label], num_frames, img_size, rng, object_contrast)
    return composite_layers(frame, layers, num_frames)


def _closer(
    progress: np.ndarray, size: int, rng: np.random.Generator, contrast: float
) -> list[Layer]:
    """Two objects on a line through a fixed midpoint; their gap shrinks as p goes 0 -> 1."""
    radius_a, radius_b = rng.uniform(0.12, 0.16, 2) * size
    axis = rng.uniform(0, math.pi)
    direction = np.array([math.cos(axis), math.sin(axis)])
    near = radius_a + radius_b + rng.uniform(0.01, 0.04) * size
    far = near + rng.uniform(0.34, 0.42) * size  # each moves 1.5-2 px per frame at 64²
    extent = far / 2 * np.abs(direction) + max(radius_a, radius_b)  # keep both in frame at p = 0
    midpoint = _uniform_in_frame(extent, size, rng)
    offsets = (far + (near - far) * progress)[:, None] / 2 * direction  # [T, 2]
    steady = np.ones(len(progress))
    return [
        Layer(
            object_sprite("ellipse", radius_a, rng, contrast),
            midpoint - offsets,
            radius_a * steady,
        ),
        Layer(
            object_sprite("ellipse", radius_b, rng, contrast),
            midpoint + offsets,
            radius_b * steady,
        ),
    ]


def _towards_camera(
    progress: np.ndarray, size: int, rng: np.random.Generator, contrast: float
) -> list[Layer]:
    """One object that grows steadily (its edge moves ~2 px per frame at 64²) as p goes 0 -> 1."""
    radius_near = rng.uniform(0.26, 0.32) * size
    radius_far = rng.uniform(0.07, 0.10) * size
    start = rng.uniform(0.35, 0.65, 2) * size
    drift = rng.uniform(-0.08, 0.08, 2) * size
    radii = radius_far + (radius_near - radius_far) * progress
    centres = start + progress[:, None] * drift
    return [Layer(object_sprite("ellipse", radius_near, rng, contrast), centres, radii)]


def _covering(
    progress: np.ndarray, size: int, rng: np.random.Generator, contrast: float
) -> list[Layer]:
    """A still object and a large square cloth that slides over it as p goes 0 -> 1."""
    radius = rng.uniform(0.10, 0.14) * size
    centre = rng.uniform(0.3, 0.7, 2) * size
    cloth_radius = rng.uniform(0.26, 0.32) * size  # its inscribed circle still hides the thing
    angle = rng.uniform(0, 2 * math.pi)
    travel = rng.uniform(0.40, 0.48) * size  # ~4 px per frame at 64²
    offset = travel * np.array([math.cos(angle), math.sin(angle)])
    thing = Layer(
        object_sprite("ellipse", radius, rng, contrast),
        np.tile(centre, (len(progress), 1)),
        np.full(len(progress), radius),
    )
    cloth = Layer(
        object_sprite("square", cloth_radius, rng, contrast),
        centre + (1 - progress)[:, None] * offset,
        np.full(len(progress), cloth_radius),
    )
    return [thing, cloth]


def _drifting(
    shape: str, num_frames: int, size: int, rng: np.random.Generator, contrast: float
) -> list[Layer]:
    """One object drifting at a constant velocity drawn independently of its class."""
    radius = rng.uniform(0.13, 0.18) * size
    angle = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(0.01, 0.035) * size  # pixels per frame
    velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    middle = rng.uniform(0.35, 0.65, 2) * size
    steps = np.arange(num_frames) - (num_frames - 1) / 2
    centres = middle + steps[:, None] * velocity
    return [
        Layer(object_sprite(shape, radius, rng, contrast), centres, np.full(num_frames, radius))
    ]


def _uniform_in_frame(extent: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A point drawn so that a box of half-size ``extent`` (x, y) around it stays in the frame."""
    low = np.minimum(extent, (size - 1) / 2)
    return rng.uniform(low, size - 1 - low)


def composite_layers(frame: np.ndarray, layers: list[Layer], num_frames: int) -> np.ndarray:
    """Paste each layer's sprite (bilinear, sub-pixel) over the still background, in order."""
    import cv2  # here: importing the benchmark (as data/build.py does) needs no OpenCV

    size = frame.shape[0]
    clip = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        canvas = frame.copy()
        for layer in layers:
            n = layer.sprite.shape[0]
            scale = layer.radii[t] / (n / 2 - 1)
            x, y = layer.centres[t]
            # Sprite pixel (i, j) lands at centre + scale * ((i, j) - sprite centre).
            warp = np.array(
                [[scale, 0.0, x - scale * (n - 1) / 2], [0.0, scale, y - scale * (n - 1) / 2]]
            )
            rgba = cv2.warpAffine(
                layer.sprite,
                warp,
                (size, size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            canvas = canvas * (1 - rgba[..., 3:]) + rgba[..., :3]
        clip[t] = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
    return clip


def background_texture(index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Background ``index`` with a fresh phase: float32 RGB [H, W, 3] in [0, 1]."""
    pattern, dark, light = BACKGROUNDS[index]
    period = rng.uniform(0.14, 0.22) * size
    mix = _pattern(pattern, size, period, rng)[..., None]
    dark, light = np.asarray(dark, np.float32), np.asarray(light, np.float32)
    grain = 0.03 * rng.standard_normal((size, size, 1)).astype(np.float32)
    return np.clip(dark + (light - dark) * mix + grain, 0, 1)


def object_sprite(
    shape: str, radius: float, rng: np.random.Generator, contrast: float
) -> np.ndarray:
    """A textured, anti-aliased object of on-screen radius ``radius``: premultiplied RGBA.

    The texture spans ``contrast`` of the way from the light colour to the dark one.
    """
    n = 2 * math.ceil(radius) + 2
    # Shape on a 2x supersampled grid in units of the object radius, then 2x2 box-averaged.
    fine = (np.arange(2 * n) / 2 - 0.25 - (n - 1) / 2) / (n / 2 - 1)
    u, v = np.meshgrid(fine, fine)
    rotation = rng.uniform(0, 2 * math.pi)
    u, v = (
        u * math.cos(rotation) + v * math.sin(rotation),
        v * math.cos(rotation) - u * math.sin(rotation),
    )
    if shape == "ellipse":
        aspect = rng.uniform(0.75, 1.0)
        inside = u**2 + (v / aspect) ** 2 <= 0.95**2
    elif shape == "square":  # 0.68 * sqrt(2) < 1: its corners stay on the sprite at any angle
        inside = np.maximum(np.abs(u), np.abs(v)) <= 0.68
    elif shape == "triangle":
        corners = [math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]
        inside = np.all([u * math.cos(a) + v * math.sin(a) <= 0.48 for a in corners], axis=0)
    elif shape == "cross":
        au, av = np.abs(u), np.abs(v)
        inside = ((au <= 0.3) & (av <= 0.92)) | ((av <= 0.3) & (au <= 0.92))
    elif shape == "ring":
        inside = (u**2 + v**2 >= 0.5**2) & (u**2 + v**2 <= 0.95**2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    alpha = inside.reshape(n, 2, n, 2).mean(axis=(1, 3), dtype=np.float32)

    hue = rng.uniform()
    light = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.9), rng.uniform(0.85, 1.0))
    dark = colorsys.hsv_to_rgb(
        (hue + rng.uniform(-0.08, 0.08)) % 1, rng.uniform(0.7, 1.0), rng.uniform(0.25, 0.45)
    )
    kind = ("stripes", "checkers", "blotches")[rng.integers(3)]
    mix = _pattern(kind, n, rng.uniform(0.5, 0.8) * radius, rng)[..., None]
    dark, light = np.asarray(dark, np.float32), np.asarray(light, np.float32)
    colour = light + (dark - light) * contrast * (1 - mix)
    return np.concatenate([colour * alpha[..., None], alpha[..., None]], axis=-1).astype(np.float32)


def _pattern(kind: str, size: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """A texture of feature size ``period`` pixels: float32 [size, size] in [0, 1]."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    phase_a, phase_b = rng.uniform(0, 2 * math.pi, 2)
    k = 2 * math.pi / period
    along = k * (x * math.cos(angle) + y * math.sin(angle))
    across = k * (y * math.cos(angle) - x * math.sin(angle))
    if kind == "stripes":
        mix = 0.5 + 0.5 * np.sin(along + phase_a)
    elif kind == "checkers":
        mix = 0.5 + 0.5 * np.tanh(4 * np.sin(along + phase_a) * np.sin(across + phase_b))
    elif kind == "dots":
        mix = np.clip((np.cos(along + phase_a) + np.cos(across + phase_b) - 0.6) / 0.8, 0, 1)
    elif kind == "waves":  # rings around a centre that may lie outside the frame
        cx, cy = rng.uniform(-0.5, 1.5, 2) * size
        mix = 0.5 + 0.5 * np.sin(k * np.hypot(x - cx, y - cy) + phase_a)
    elif kind == "blotches":
        import cv2

        noise = cv2.GaussianBlur(
            rng.standard_normal((size, size)).astype(np.float32), (0, 0), period / 4
        )
        mix = 0.5 + 0.5 * np.tanh(3 * (noise - noise.mean()) / (noise.std() + 1e-6))
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return mix.astype(np.float32)


def _assign_scenes(
    num_clips: int, spurious_rate: float | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and backgrounds of a split: two int64 arrays [num_clips].

    Classes are balanced (counts differ by at most one). With ``spurious_rate`` (training), that
    share of each class's clips gets the class's own background (the split as a whole matches it
    to within one clip) and the rest cycle over the other backgrounds; with None (evaluation),
    each class cycles over all backgrounds, so background and class are independent. Exact
    shares rather than coin flips keep small splits faithful to the rate.
    """
    K = len(CLASSES)
    labels = rng.permutation(np.arange(num_clips) % K)
    counts = np.bincount(labels, minlength=K)
    if spurious_rate is not None:
        matched = np.floor(spurious_rate * counts).astype(int)
        rounding = np.flatnonzero(spurious_rate * counts > matched)
        matched[
            rng.choice(rounding, round(spurious_rate * num_clips) - matched.sum(), replace=False)
        ] += 1
    backgrounds = np.empty(num_clips, np.int64)
    for c in range(K):
        if spurious_rate is None:
            cue = (np.arange(counts[c]) + rng.integers(K)) % K
        else:
            others = np.delete(np.arange(K), c)
            spread = (np.arange(counts[c] - matched[c]) + rng.integers(K - 1)) % (K - 1)
            cue = np.concatenate([np.full(matched[c], c), others[spread]])
        backgrounds[labels == c] = rng.permutation(cue)
    return labels.astype(np.int64), backgrounds


class SyntheticVideoDataset(Dataset):
    """The synthetic benchmark as a map-style dataset; clips are rendered on demand.

    Items: ``video`` float [C, T, H, W] normalised with ``mean`` and ``std``, ``label``,
    ``video_id``, ``index`` and, with a ``flow_labels`` labeller (a clip -> labels callable such as
    ``FlowLabeller``), ``flow_labels`` int64 [T-1, S] of the clip as rendered (it needs no
    augmentation, so it is the final input).
    """

    def __init__(
        self,
        split: str,
        num_clips: int,
        *,
        img_size: int = 64,
        num_frames: int = 8,
        spurious_rate: float = 0.5,
        seed: int = 0,
        object_contrast: float = 0.3,
        flow_labels: Callable[[np.ndarray], torch.Tensor] | None = None,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        cache: bool = False,
    ):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
        if not 0.0 <= spurious_rate <= 1.0:
            raise ValueError(f"spurious_rate must be in [0, 1], got {spurious_rate}")
        self.split = split
        self.img_size = img_size
        self.num_frames = num_frames
        self.seed = seed
        self.object_contrast = object_contrast
        self.flow_labels = flow_labels
        self.mean, self.std = mean, std
        # index -> (clip, flow labels or None), filled on first use. Per process: a DataLoader
        # worker keeps its own for the epoch it lives (the training loader is rebuilt each epoch),
        # so the saving is whole at num_workers 0, the demo's setting.
        self.cache: dict[int, tuple[np.ndarray, torch.Tensor | None]] | None = {} if cache else None
        self.classes = list(CLASSES)
        self.subsets = {"temporal": list(TEMPORAL), "static": list(STATIC)}
        self.pairs = dict(PAIRS)
        rng = np.random.default_rng([seed, _SPLITS[split]])
        self.labels, self.backgrounds = _assign_scenes(
            num_clips, spurious_rate if split == "train" else None, rng
        )

    def __len__(self) -> int:
        return len(self.labels)

    def background_of(self, index: int) -> int:
        """The background shown by clip ``index``; background c is class c's scene cue."""
        return int(self.backgrounds[index])

    def clip(self, index: int) -> np.ndarray:
        """Clip ``index`` as uint8 RGB [T, H, W, 3]."""
        return render_clip(
            int(self.labels[index]),
            int(self.backgrounds[index]),
            (self.seed, _SPLITS[self.split], index),
            img_size=self.img_size,
            num_frames=self.num_frames,
            object_contrast=self.object_contrast,
        )

    def __getitem__(self, index: int) -> dict:
        if self.cache is not None and index in self.cache:
            clip, flow_labels = self.cache[index]
        else:
            clip = self.clip(index)
            flow_labels = self.flow_labels(clip) if self.flow_labels is not None else None
            if self.cache is not None:
                self.cache[index] = (clip, flow_labels)
        item = {
            "video": normalise(frames_to_video(clip), self.mean, self.std),
            "label": int(self.labels[index]),
            "video_id": f"synthetic-{self.split}-{index:05d}",
            "index": index,
        }
        if flow_labels is not None:
            item["flow_labels"] = flow_labels.clone()
        return item
