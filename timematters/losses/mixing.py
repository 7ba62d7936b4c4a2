"""Mixup and CutMix of clips (not in the paper; ``data.mixup`` / ``data.cutmix``), and the targets
they make for the losses that read labels.

The recipe of DeiT, VideoMAE and MViT, one draw per batch as timm's default: each clip is mixed
with its partner in the flipped batch (clip b with clip B-1-b), by a blend (mixup, weight λ ~
Beta(α, α) on its own clip) or by pasting the partner's box into it, on every frame alike
(CutMix). The box is cut on the model's patch grid, so that every token is wholly one clip's:
then the flow loss's per-token labels stay exact (the partner's inside the box), where timm's
pixel boxes would split patches. λ is then the share of the clip's own tokens.

Targets, with ``mix`` the batch's ``Mix``: the task loss is λ·CE(own label) + (1-λ)·CE(partner's),
which is cross-entropy against the mixed (smoothed) one-hot targets; the flow loss takes the
partner's labels inside a CutMix box, and after mixup the same λ-weighted sum per token. The order
and debias losses need nothing: every clip's frames keep their positions, and a shuffled mixed
clip is still to be classified uniformly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from timematters.backbones.protocol import check_clips


@dataclass(frozen=True)
class Mix:
    """How a batch was mixed: every clip with its partner in the flipped batch."""

    lam: float  # the share of each clip that is its own (pixels for mixup, tokens for CutMix)
    # CutMix: [S] True for the tokens (row-major on the model's patch grid) inside the box, the
    # partner's. A tensor, not the box's corners, so that a compiled step is not specialised on them.
    partner_tokens: torch.Tensor | None = None

    def partner(self, values: torch.Tensor) -> torch.Tensor:
        """The partner clips' labels (or anything per clip): the batch flipped."""
        return values.flip(0)


def mix_clips(
    batch: dict[str, Any],
    *,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    patch_size: int = 1,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The batch with its clips mixed and ``batch["mix"]`` saying how (or unchanged).

    ``mixup`` / ``cutmix`` are the Beta distributions' α (0: that kind is off); with both on, a
    batch is cut with probability ``switch_prob`` and blended otherwise; ``prob`` is the chance
    that a batch is mixed at all. ``patch_size`` is the model's: CutMix boxes are cut on its grid.
    Flow labels are left as they are; the flow loss reads them through ``batch["mix"]``.
    """
    check_clips(batch["video"])  # uint8 clips would leave as floats in [0, 255]
    if (mixup <= 0 and cutmix <= 0) or rng.random() >= prob:
        return batch
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    video = batch["video"]  # [B, C, T, H, W]
    if not use_cutmix:
        lam = float(rng.beta(mixup, mixup))
        mixed = video * lam + video.flip(0) * (1 - lam)
        return {**batch, "video": mixed, "mix": Mix(lam=lam)}
    height, width = video.shape[-2] // patch_size, video.shape[-1] // patch_size
    top, left, box_h, box_w = _cut_box(height, width, float(rng.beta(cutmix, cutmix)), rng)
    mixed = video.clone()
    rows = slice(top * patch_size, (top + box_h) * patch_size)
    cols = slice(left * patch_size, (left + box_w) * patch_size)
    mixed[..., rows, cols] = video.flip(0)[..., rows, cols]
    lam = 1 - box_h * box_w / (height * width)
    partner_tokens = torch.zeros(height, width, dtype=torch.bool, device=video.device)
    partner_tokens[top : top + box_h, left : left + box_w] = True
    mix = Mix(lam=lam, partner_tokens=partner_tokens.flatten())
    return {**batch, "video": mixed, "mix": mix}


def _cut_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A box of about (1 - λ) of the grid's area around a uniform centre, clipped to the grid.

    Its sides are rounded to whole tokens before it is placed (timm halves them first, so that
    on a small grid an odd side loses a token and a side of one vanishes)."""
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = round(height * ratio), round(width * ratio)
    centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top, left = centre_y - cut_h // 2, centre_x - cut_w // 2
    bottom, right = min(top + cut_h, height), min(left + cut_w, width)
    top, left = max(top, 0), max(left, 0)
    return top, left, bottom - top, right - left


def mixed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mix: Mix | None, *, smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [B, ..., K] against ``labels`` [B, ...] (batch first),
    mixed with the partners' labels as ``mix`` says (None: the labels alone). Entries labelled
    -100 are left out; with none labelled the loss is 0."""

    def cross_entropy(targets: torch.Tensor) -> torch.Tensor:
        flat, targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
        loss = F.cross_entropy(flat, targets, label_smoothing=smoothing)
        # A batch with no labelled entry (-100, the ignore_index, everywhere) has no mean: it adds
        # nothing instead of NaN. torch.where keeps the step free of a device sync, and its
        # gradient through the unused mean is exactly zero.
        return torch.where((targets != -100).any(), loss, loss.new_zeros(()))

    if mix is None:
        return cross_entropy(labels)
    return mix.lam * cross_entropy(labels) + (1 - mix.lam) * cross_entropy(mix.partner(labels))
