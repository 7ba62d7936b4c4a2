"""The backbone contract: what every video backbone hands to the losses and diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VideoTokens:
    """Final tokens of a video backbone, after its final norm.

    cls:     [B, D]        the clip-level token the classifier reads.
    patches: [B, T, S, D]  one token per frame t and patch s (S = h*w, row-major, patch-embed order).
    blocks:  per-block patch tokens [B, T, S, D] (block outputs before the final norm), only when
             asked for with ``forward_features(video, return_blocks=True)``.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    blocks: tuple[torch.Tensor, ...] | None = None

    @property
    def frame_features(self) -> torch.Tensor:
        """Per-frame mean over the S patch tokens (paper Eq. 6): [B, T, D]."""
        return self.patches.mean(dim=2)
