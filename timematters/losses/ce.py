"""The task loss: cross-entropy of the classifier on the original clips (L^ce of Eq. 15)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timematters.losses.inputs import LossInputs


class CrossEntropyLoss(nn.Module):
    name = "ce"
    requires: frozenset[str] = frozenset()

    def __init__(self, smoothing: float = 0.2):
        super().__init__()
        self.smoothing = smoothing  # released: 0.2 on ce, order and flow alike

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(
            inputs.logits.float(), inputs.batch["label"], label_smoothing=self.smoothing
        )
        return {"ce_loss": loss}
