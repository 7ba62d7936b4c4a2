"""What the losses read: one forward pass' tokens and logits, and the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from timematters.backbones.protocol import VideoTokens


@dataclass
class LossInputs:
    tokens: VideoTokens  # the original clips' tokens
    logits: torch.Tensor  # [B, K] task logits on the original clips
    batch: dict[str, Any]  # label [B], flow_labels [B, T-1, S] when the flow loss is on
    shuffled_logits: torch.Tensor | None = None  # [B, K] on the frame-shuffled clips (debias)
