"""Temporal order: each frame's spatially averaged final tokens predict its position (Eq. 6-7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from timematters.losses.inputs import LossInputs


class OrderLoss(nn.Module):
    name = "order"
    requires: frozenset[str] = frozenset()

    def __init__(self, embed_dim: int, num_frames: int, smoothing: float = 0.2):
        super().__init__()
        self.temp_head = nn.Linear(embed_dim, num_frames)  # released name
        self.smoothing = smoothing

    def predict(self, frame_features: torch.Tensor) -> torch.Tensor:
        """[B, T, D] per-frame features -> [B, T, T] position logits."""
        return self.temp_head(frame_features)

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        logits = self.predict(inputs.tokens.frame_features)
        B, T, positions = logits.shape
        if positions != T:  # e.g. built with the input frames of a model whose tubelets halve them
            raise ValueError(
                f"the order head predicts {positions} positions but the tokens have {T} frames: "
                "build it with the model's token_frames"
            )
        target = torch.arange(T, device=logits.device).repeat(B)  # frame j is labelled j
        loss = F.cross_entropy(
            rearrange(logits, "b t k -> (b t) k").float(), target, label_smoothing=self.smoothing
        )
        return {"order_loss": loss}
