"""Debiasing: the classifier's output on a frame-shuffled clip is pushed to uniform (Eq. 8).

The shuffled clip goes through the backbone in train mode (dropout and drop-path on, gradients
into the whole backbone) and through the task classifier; nothing here owns parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from timematters.losses.inputs import LossInputs
from timematters.losses.shuffle import shuffle_frames


class DebiasLoss(nn.Module):
    name = "debias"
    # The objective runs the backbone on ``shuffled_view`` of the clips as well.
    requires = frozenset({"shuffled_logits"})

    def __init__(self, *, shuffle: str = "per_batch", form: str = "uniform_ce"):
        super().__init__()
        if form not in ("uniform_ce", "kl"):
            raise ValueError(f"debias form must be 'uniform_ce' or 'kl', got {form!r}")
        self.shuffle = shuffle
        self.form = form

    def shuffled_view(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The clips [B, C, T, H, W] with their frames permuted (Eq. 8)."""
        return shuffle_frames(video, self.shuffle, generator)[0]

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        if inputs.shuffled_logits is None:
            raise ValueError("the debias loss needs the logits of the shuffled clips")
        log_probs = F.log_softmax(inputs.shuffled_logits.float(), dim=-1)
        # Cross-entropy to the uniform distribution, -(1/K) sum_c log p_c, as released; it equals
        # KL(U || p) + log K, so both forms have the same gradient.
        loss = -log_probs.mean(dim=-1).mean()
        if self.form == "kl":
            loss = loss - math.log(log_probs.shape[-1])
        return {"debias_loss": loss}
