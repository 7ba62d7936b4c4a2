"""The TIME objective (Eq. 14-15): total = ce + λ_order·order + λ_debias·debias + λ_flow·flow.

A loss whose weight is 0 is not built: no head, no shuffled forward pass, no flow labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from timematters.backbones.tokens import VideoTokens
from timematters.config import LossConfig
from timematters.losses.ce import CrossEntropyLoss
from timematters.losses.debias import DebiasLoss
from timematters.losses.flow import FlowLoss
from timematters.losses.image import spatial_loss_candidates
from timematters.losses.inputs import LossInputs
from timematters.losses.order import OrderLoss


@dataclass
class ObjectiveOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]  # every unweighted term: ce_loss, order_loss, ...
    logits: torch.Tensor  # [B, K] on the original clips
    tokens: VideoTokens


class Objective(nn.Module):
    """Runs a backbone on a batch and combines the losses it was built with.

    ``losses`` maps a name to a loss module; ``weights`` gives each one's λ (ce defaults to 1).
    The backbone only needs ``forward_features(video) -> VideoTokens`` and ``forward_head(cls)``.
    """

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float] | None = None):
        super().__init__()
        weights = weights or {}
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}
        self.losses = nn.ModuleDict({n: m for n, m in losses.items() if self.weights[n] != 0})

    @property
    def needs_flow_labels(self) -> bool:
        return "flow" in self.losses

    def forward(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        video = batch["video"]
        B = video.shape[0]
        debias = self.losses["debias"] if "debias" in self.losses else None  # noqa: SIM401 (ModuleDict has no get)
        if debias is not None:
            # Both views in one forward pass: every layer works per clip, so this equals two passes
            # and runs the backbone once (which DistributedDataParallel requires).
            video = torch.cat([video, debias.shuffled_view(video, generator)])
        tokens = model.forward_features(video)
        logits = model.forward_head(tokens.cls)
        shuffled_logits = None
        if debias is not None:
            tokens = VideoTokens(cls=tokens.cls[:B], patches=tokens.patches[:B])
            logits, shuffled_logits = logits[:B], logits[B:]

        inputs = LossInputs(tokens, logits, batch, shuffled_logits)
        terms: dict[str, torch.Tensor] = {}
        for loss in self.losses.values():
            terms.update(loss(inputs))
        total = sum(self.weights[name] * terms[f"{name}_loss"] for name in self.losses)
        return ObjectiveOutput(total=total, terms=terms, logits=logits, tokens=tokens)


def build_objective(
    cfg: LossConfig,
    embed_dim: int,
    num_frames: int,
    grid: tuple[int, int] | None = None,
    patch_size: int | None = None,
) -> Objective:
    """The paper's objective from a ``LossConfig`` (all λ = 1 and smoothing 0.2 by default).

    ``grid`` and ``patch_size`` (the model's) are needed only by the image losses (axis = space).
    """
    candidates = {
        "ce": (1.0, lambda: CrossEntropyLoss(cfg.ce.smoothing)),
        "order": (cfg.order.weight, lambda: OrderLoss(embed_dim, num_frames, cfg.order.smoothing)),
        "debias": (cfg.debias.weight, lambda: DebiasLoss(cfg.debias.shuffle, cfg.debias.form)),
        "flow": (cfg.flow.weight, lambda: FlowLoss(embed_dim, cfg.flow.smoothing)),
    }
    if "space" in (cfg.order.axis, cfg.debias.axis):
        candidates.update(spatial_loss_candidates(cfg, embed_dim, grid, patch_size))
    losses = {name: make() for name, (weight, make) in candidates.items() if weight != 0}
    return Objective(losses, {name: weight for name, (weight, _) in candidates.items()})
