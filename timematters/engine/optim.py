"""Optimiser and learning-rate schedule of the released recipe (REFERENCE.md).

AdamW with amsgrad; weight decay on every parameter with two or more dimensions (weights,
embeddings and CLS alike), none on biases and norms; step decay at fixed epochs, or cosine with
linear warm-up. The schedule is a pure function of the (fractional) epoch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from timematters.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters, on the device they are on (``optim.fused``)."""
    groups = parameter_groups(model, cfg.weight_decay)
    fused = cfg.fused
    if fused is None:
        fused = all(p.is_cuda for group in groups for p in group["params"]) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, amsgrad=cfg.amsgrad, fused=fused)


def lr_at(epoch: float, cfg: OptimConfig, total_epochs: int) -> float:
    """Learning rate at a fractional epoch."""
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    span = max(total_epochs - cfg.warmup_epochs, 1e-8)
    progress = min(max((epoch - cfg.warmup_epochs) / span, 0.0), 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
