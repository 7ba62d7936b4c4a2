"""The task loss: cross-entropy of the classifier on the original clips (L^ce of Eq. 15)."""

from __future__ import annotations

import torch
from torch import nn

from timematters.losses.inputs import LossInputs
from timematters.losses.mixing import mixed_cross_entropy


class CrossEntropyLoss(nn.Module):
    name = "ce"
    requires: frozenset[str] = frozenset()

    def __init__(self, smoothing: float = 0.2):
        super().__init__()
        self.smoothing = smoothing  # released: 0.2 on ce, order and flow alike

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        # After Mixup / CutMix (batch["mix"]), against the clip's and its partner's labels.
        batch = inputs.batch
        loss = mixed_cross_entropy(
            inputs.logits, batch["label"], batch.get("mix"), smoothing=self.smoothing
        )
        return {"ce_loss": loss}
