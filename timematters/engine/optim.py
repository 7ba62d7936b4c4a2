"""Optimiser and learning-rate schedule of the released recipe (REFERENCE.md).

AdamW with amsgrad; weight decay on every parameter with two or more dimensions (weights,
embeddings and CLS alike, as released; ``optim.decay_embeddings=false`` spares the embeddings and
CLS, as DeiT does), none on biases and norms; step decay at fixed epochs, or cosine with
linear warm-up. The schedule is a pure function of the (fractional) epoch.

``optim.layer_decay`` (not in the paper; 1.0 keeps the released recipe) is the layer-wise learning
rate decay of BEiT / MAE / VideoMAE fine-tuning: with L blocks, block i trains at
``lr * decay ** (L - i)``, what the forward pass runs before the first block (patch embedding, CLS,
position and time embeddings) at ``lr * decay ** (L + 1)``, what it runs between two blocks with
the block it feeds (Swin3D's patch merging, as timm groups a stage's downsampling; VideoPrism's
mid norm and temporal embeddings) and everything after the last (final norm, classifier, the TIME
heads) at ``lr``. Each group carries its ``lr_scale``; ``set_lr`` applies it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from timematters.backbones.protocol import depth_blocks, model_name
from timematters.config import ConfigError, OptimConfig


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    layer_decay: float = 1.0,
    decay_embeddings: bool = True,
) -> list[dict]:
    """AdamW's groups: decayed (>= 2-D) and not, for each learning-rate scale.

    ``model`` is the backbone, or a module holding it as ``backbone`` (``TimeModel``), whose
    other parameters (the TIME heads) count as after the last block. With ``layer_decay`` 1 there
    are the released recipe's two groups and no scales. ``decay_embeddings=False`` leaves the
    class token and the position and time embeddings undecayed, as DeiT does.
    """
    trainable = [param for param in model.parameters() if param.requires_grad]
    scales = layer_scales(model, layer_decay) if layer_decay != 1 else {}
    undecayed = set() if decay_embeddings else embedding_parameters(model)
    groups = []
    for lr_scale in sorted(set(scales.values())) or [1.0]:
        for decayed in (True, False):
            params = [
                param
                for param in trainable
                if scales.get(param, 1.0) == lr_scale
                and (param.ndim >= 2 and param not in undecayed) == decayed
            ]
            group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
            if scales:
                group["lr_scale"] = lr_scale
            if params or not scales:  # the released two groups even if one is empty
                groups.append(group)
    return groups


# The last part of an embedding's name: ours and timm's (cls_token, pos_embed, time_embed,
# temp_embed, dist_token), transformers' (position_embeddings, time_embeddings).
EMBEDDING_NAMES = (
    "cls_token",
    "dist_token",
    "pos_embed",
    "time_embed",
    "temp_embed",
    "position_embeddings",
    "time_embeddings",
)


def embedding_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The backbone's class token and position / time embeddings: what its ``no_weight_decay()``
    names where it has one (timm's convention), else the parameters named as embeddings."""
    backbone = getattr(model, "backbone", model)
    named = dict(backbone.named_parameters())
    declared = getattr(backbone, "no_weight_decay", None)
    if callable(declared):
        return {named[name] for name in declared() if name in named}
    return {param for name, param in named.items() if name.split(".")[-1] in EMBEDDING_NAMES}


def layer_scales(model: nn.Module, layer_decay: float) -> dict[nn.Parameter, float]:
    """Each parameter's learning-rate scale under layer-wise decay (see the module docstring).

    The blocks are the backbone's own (``depth_blocks``); a parameter outside them takes the place
    of its module in the forward pass. That order is the backbone's ``modules_in_forward_order()``
    where it declares one (an adapter whose network registers its parts out of order), else the
    order of ``parameters()``: every backbone of ours registers its parts in forward order.
    """
    backbone = getattr(model, "backbone", model)
    blocks = depth_blocks(backbone)
    if not blocks:
        name = model_name(backbone)
        raise ConfigError(
            f"optim.layer_decay={layer_decay} needs a model whose blocks are known; {name} names "
            "none (a `blocks` ModuleList or block_modules()): set optim.layer_decay=1"
        )
    depth = len(blocks)
    block_layer: dict[nn.Parameter, int] = {}
    for i, block in enumerate(blocks):
        for param in block.parameters():
            block_layer.setdefault(param, i + 1)
    declared = getattr(backbone, "modules_in_forward_order", None)
    # The declared parts first; then the whole model, for what they leave out (the TIME heads).
    in_order = [*(declared() if callable(declared) else []), model]
    layer: dict[nn.Parameter, int] = {}
    last_block = 0  # the deepest block met so far; 0: none yet
    for module in in_order:
        for param in module.parameters():
            if param in block_layer:
                last_block = max(last_block, block_layer[param])
                layer.setdefault(param, block_layer[param])
            else:  # 0 before the first block; after block i, block i + 1's (L + 1: lr)
                layer.setdefault(param, last_block + 1 if last_block else 0)
    return {param: layer_decay ** (depth + 1 - i) for param, i in layer.items()}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters, on the device they are on (``optim.fused``)."""
    groups = parameter_groups(
        model,
        cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        decay_embeddings=cfg.decay_embeddings,
    )
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
        group["lr"] = lr * group.get("lr_scale", 1.0)
