"""The flow labeller: every option that turns a clip into flow labels (Eq. 9-10), in one object.

A ``FlowLabeller`` is frozen and picklable, so the same object labels clips in DataLoader workers
(OpenCV, ``labeller(clip)``), whole batches on the training device (the torch Farnebäck,
``labeller.batch(video)``) and is what a dataset takes; nothing downstream restates thresholds,
Farnebäck parameters or the normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from einops import rearrange

from timematters.config import FarnebackParams, FlowConfig
from timematters.flow.farneback import consecutive_flows
from timematters.flow.labels import (
    clip_to_grey,
    farneback_opencv,
    flow_to_direction_labels,
    video_to_grey,
)


@dataclass(frozen=True)
class FlowLabeller:
    """Flow labels [T-1, S] per clip, with the released conventions by default.

    patch_size: the model's patch side; labels are per token (S = (H / p) * (W / p)).
    frame_step: input frames per token frame (a model's temporal tubelet; 1 for TIME's models).
        The labels are those of frames 0, step, 2 * step, ...: the flow from the first frame of
        one tubelet to the first frame of the next, one label map per pair of consecutive token
        frames (not in the paper, whose models embed every frame alone).
    farneback: the Farnebäck parameters (the released ones by default).
    threshold: "relative" (released): a patch moves iff r >= r_min + relative_fraction *
        (r_max - r_min) over its frame pair's patches; "absolute": iff r >= absolute_tau pixels.
    mean, std: the normalisation of float clips (the released grey scale is computed from the
        [-1, 1] frames); uint8 clips need none.
    """

    patch_size: int
    frame_step: int = 1
    farneback: FarnebackParams = field(default_factory=FarnebackParams)
    threshold: Literal["relative", "absolute"] = "relative"
    relative_fraction: float = 0.01
    absolute_tau: float = 0.5
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        # Checked as a config file's flow section is: a labeller built in Python is too.
        if self.patch_size < 1 or self.frame_step < 1:
            raise ValueError(
                f"patch_size and frame_step must be >= 1, got {self.patch_size}, {self.frame_step}"
            )
        if self.threshold not in ("relative", "absolute"):
            raise ValueError(f"threshold must be 'relative' or 'absolute', got {self.threshold!r}")
        if not 0 <= self.relative_fraction <= 1 or not self.absolute_tau >= 0:
            raise ValueError(
                f"relative_fraction must be in [0, 1] and absolute_tau >= 0, got "
                f"{self.relative_fraction}, {self.absolute_tau}"
            )

    @classmethod
    def from_config(
        cls,
        flow: FlowConfig,
        *,
        patch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        frame_step: int = 1,
    ) -> FlowLabeller:
        return cls(
            patch_size=patch_size,
            frame_step=frame_step,
            farneback=flow.farneback,
            threshold=flow.threshold,
            relative_fraction=flow.relative_fraction,
            absolute_tau=flow.absolute_tau,
            mean=tuple(mean),
            std=tuple(std),
        )

    def directions(self, flow: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Dense flow [N, H, W, 2] -> token labels [N, S] int64 in {0..8}."""
        return flow_to_direction_labels(
            flow,
            self.patch_size,
            threshold=self.threshold,
            relative_fraction=self.relative_fraction,
            absolute_tau=self.absolute_tau,
        )

    def __call__(self, clip: torch.Tensor | np.ndarray) -> torch.Tensor:
        """One clip, OpenCV's Farnebäck (the reference): uint8 [T, H, W, 3] or a normalised float
        [C, T, H, W] -> labels [T' - 1, S] int64, T' = T / frame_step."""
        grey = clip_to_grey(clip, self.mean, self.std)[:: self.frame_step]
        flows = [
            farneback_opencv(grey[j], grey[j + 1], self.farneback) for j in range(len(grey) - 1)
        ]
        return self.directions(np.stack(flows))

    def batch(self, video: torch.Tensor) -> torch.Tensor:
        """A normalised batch [B, C, T, H, W], the torch Farnebäck on the batch's own device ->
        labels [B, T' - 1, S] int64, T' = T / frame_step."""
        grey = video_to_grey(video, self.mean, self.std)[:, :: self.frame_step].contiguous()
        if grey.shape[1] < 2:  # as __call__ says: no frame pair, nothing to label
            raise ValueError(f"flow needs two frames or more, got {grey.shape[1]}")
        flow = consecutive_flows(grey, self.farneback)
        labels = self.directions(rearrange(flow, "b t h w c -> (b t) h w c"))
        return rearrange(labels, "(b t) s -> b t s", b=video.shape[0])


def clip_flow_labels(clip: torch.Tensor | np.ndarray, patch_size: int, **options) -> torch.Tensor:
    """``FlowLabeller(patch_size, **options)(clip)``: one clip's labels [T-1, S] with OpenCV."""
    return FlowLabeller(patch_size, **options)(clip)


def batch_flow_labels(video: torch.Tensor, patch_size: int, **options) -> torch.Tensor:
    """``FlowLabeller(patch_size, **options).batch(video)``: a batch's labels [B, T-1, S]."""
    return FlowLabeller(patch_size, **options).batch(video)
