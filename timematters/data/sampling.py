"""Which frames of a video form a clip: segment sampling (SSv2) and dense strided sampling (Kinetics).

Segment sampling splits the video's N frames into T equal segments and takes one frame from each: a
uniformly random one in training, the centre in testing. Dense sampling takes T frames ``stride``
apart from a start that is random in training. Test views: V temporal views of segment sampling
take the points (v + 0.5) / V through every segment (V = 1: the centre); V views of dense sampling
start evenly between the first and the last possible start. Randomness uses torch's generator,
which the DataLoader seeds differently in every worker (numpy's global one it does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

Sampling = Literal["segment", "dense"]


def sample_segment_indices(
    num_video_frames: int,
    num_frames: int,
    train: bool,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """One frame per segment of T = ``num_frames`` equal segments: int64 [T]."""
    _check_counts(num_video_frames, num_frames)
    bounds = np.arange(num_frames + 1) * (num_video_frames / num_frames)
    starts = np.floor(bounds[:-1]).astype(np.int64)
    if train:
        # A segment covers frames [start, end); shorter videos give 1-frame segments (repeats).
        ends = np.maximum(np.floor(bounds[1:]).astype(np.int64), starts + 1)
        offsets = torch.rand(num_frames, generator=generator).numpy()
        indices = starts + np.floor(offsets * (ends - starts)).astype(np.int64)
    else:
        _check_view(view, num_views)
        position = (view + 0.5) / num_views
        indices = np.floor(bounds[:-1] + position * (bounds[1] - bounds[0])).astype(np.int64)
    return np.minimum(indices, num_video_frames - 1)


def sample_dense_indices(
    num_video_frames: int,
    num_frames: int,
    stride: int,
    train: bool,
    view: int = 0,
    num_views: int = 1,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """T = ``num_frames`` frames ``stride`` apart: int64 [T].

    A video shorter than the clip's span repeats its last frame.
    """
    _check_counts(num_video_frames, num_frames)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (num_frames - 1) * stride + 1
    latest_start = max(num_video_frames - span, 0)
    if train:
        start = int(torch.randint(latest_start + 1, (), generator=generator))
    else:
        _check_view(view, num_views)
        fraction = view / (num_views - 1) if num_views > 1 else 0.5
        start = round(latest_start * fraction)
    indices = start + stride * np.arange(num_frames, dtype=np.int64)
    return np.minimum(indices, num_video_frames - 1)


def sample_clip_indices(
    sampling: Sampling,
    num_video_frames: int,
    num_frames: int,
    train: bool,
    stride: int = 8,
    num_views: int = 1,
    generator: torch.Generator | None = None,
) -> list[np.ndarray]:
    """The clips to decode: one random clip in training, ``num_views`` fixed clips in testing."""
    views = range(1 if train else num_views)
    if sampling == "segment":
        return [
            sample_segment_indices(num_video_frames, num_frames, train, v, num_views, generator)
            for v in views
        ]
    if sampling == "dense":
        return [
            sample_dense_indices(
                num_video_frames, num_frames, stride, train, v, num_views, generator
            )
            for v in views
        ]
    raise ValueError(f"unknown sampling {sampling!r}; choose segment or dense")


@dataclass(frozen=True)
class EvalClip:
    """How evaluation makes the views of a video: which frames (``temporal_views`` clips), the
    short side they are resized to (None: the crop size), ``spatial_crops`` crops of each, and
    how the views' logits become one prediction. A run's ``data`` and ``eval`` settings;
    ``predict`` makes its clips so, as the run was evaluated."""

    sampling: Sampling = "segment"
    dense_stride: int = 8
    short_side: int | None = None
    temporal_views: int = 1
    spatial_crops: int = 1
    aggregation: str = "logits"
    interpolation: str = "bilinear"  # of the resize; ImageNet-9's evaluation is bicubic
    freeze_frame: int | None = None  # the frame the freeze test repeats (None: the middle one)

    @classmethod
    def of(cls, data: Any, evaluation: Any = None) -> EvalClip:
        """From a ``DataConfig`` (and ``EvalConfig``) or a checkpoint's saved ``data`` (and
        ``eval``) dicts; a setting missing from an older checkpoint takes one view."""

        def reader(section: Any):
            if isinstance(section, dict) or section is None:
                return (section or {}).get
            return lambda key, default: getattr(section, key, default)

        get, settings = reader(data), reader(evaluation)
        # The built-in benchmark and ImageNet-9 make one view of each item whatever the fields.
        one_view = get("dataset", None) in ("synthetic", "imagenet9")
        # The built-in benchmark renders its frames at the crop size: no resize before the crop.
        rendered = get("dataset", None) == "synthetic"
        return cls(
            get("sampling", "segment"),
            get("dense_stride", 8),
            get("crop_size", None) if rendered else get("eval_short_side", None),
            temporal_views=1 if one_view else get("test_temporal_views", 1),
            spatial_crops=1 if one_view else get("test_spatial_crops", 1),
            aggregation=settings("aggregation", "logits"),
            interpolation="bicubic" if get("dataset", None) == "imagenet9" else "bilinear",
            freeze_frame=settings("freeze_frame", None),
        )

    def indices(self, num_video_frames: int, num_frames: int) -> np.ndarray:
        """The frames of one clip (the middle of the video's, as a single view takes them): int64
        [T]."""
        return sample_clip_indices(
            self.sampling, num_video_frames, num_frames, train=False, stride=self.dense_stride
        )[0]

    def view_indices(self, num_video_frames: int, num_frames: int) -> list[np.ndarray]:
        """The frames of each temporal view, as evaluation reads them: ``temporal_views`` int64
        arrays [T]."""
        return sample_clip_indices(
            self.sampling,
            num_video_frames,
            num_frames,
            train=False,
            stride=self.dense_stride,
            num_views=self.temporal_views,
        )


def _check_counts(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames < 1 or num_frames < 1:
        raise ValueError(f"need >= 1 frames, got video {num_video_frames}, clip {num_frames}")


def _check_view(view: int, num_views: int) -> None:
    if not 0 <= view < num_views:
        raise ValueError(f"view {view} out of range for {num_views} views")
