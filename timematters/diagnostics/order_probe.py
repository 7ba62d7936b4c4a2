"""Per-block temporal-order probe: how much frame-position information each block keeps (paper
Sec. 3.2, Eq. 6-7, Fig. 1b).

The backbone is frozen. Each block's patch tokens are averaged over space (Eq. 6) into one feature
per frame, and a linear classifier is fit to say which slot t each frame feature came from (the
cross-entropy of Eq. 7), then scored on held-out clips. Accuracy near 100% means the block still
knows the order of the frames; near 1/T (chance) means the order was lost. ``final`` is the same
probe on the final, normed patch tokens that TIME's order head reads.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from timematters.backbones.protocol import (
    check_blocks,
    check_clip_sizes,
    check_tokens,
    lacking_members,
    tokens_with_blocks,
)
from timematters.engine.evaluate import as_batch
from timematters.progress import progress_bar


@torch.no_grad()
def frame_features(
    models: Sequence[nn.Module],
    loader: Iterable[dict],
    *,
    max_clips: int | None = None,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Per model: ``{"block1": [N, T', D], ..., "final": [N, T, D]}`` spatially averaged tokens
    of the first ``max_clips`` clips (all by default).

    All models read each batch once, so the clips are decoded once however many are compared.
    With several test views per clip, the first view is used.
    """
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    stores = [defaultdict(list) for _ in models]
    seen = 0
    for batch in progress_bar(loader, desc="probe features", leave=False, disable=not progress):
        batch = as_batch(batch)
        if "video" not in batch:  # every clip of the batch failed to decode
            continue
        video = batch["video"].to(device, non_blocking=True)
        if video.ndim == 6:
            video = video[:, 0]  # [B, V, C, T, H, W] -> first view
        if max_clips is not None:
            video = video[: max_clips - seen]
        for model, store in zip(models, stores, strict=True):
            # A user's module, sized as the protocol says: its clips and its tokens' layout, or
            # the probe would classify patch positions and call them frame order. (Adapters
            # check their clips and convert their tokens themselves.)
            check = not seen and not lacking_members(model)
            if check:
                check_clip_sizes(model, video)
            with autocast:
                tokens = tokens_with_blocks(model, video)
            if check and not callable(getattr(model, "check_input", None)):
                check_tokens(tokens, model, len(video), frames=video.shape[2])
                check_blocks(tokens, model, len(video))
            for i, block in enumerate(tokens.blocks or ()):  # none: the final tokens alone
                store[f"block{i + 1}"].append(block.float().mean(dim=2).cpu())  # Eq. 6
            store["final"].append(tokens.frame_features.float().cpu())
        seen += len(video)
        if max_clips is not None and seen >= max_clips:
            break
    for model, mode in zip(models, modes, strict=True):
        model.train(mode)
    return [{name: torch.cat(chunks) for name, chunks in store.items()} for store in stores]


def fit_order_probe(fit: torch.Tensor, held_out: torch.Tensor, l2: float = 1e-3) -> float:
    """Fit a linear frame-position classifier on ``fit`` [N, T, D]; top-1 (%) on ``held_out``.

    Multinomial logistic regression on standardised features with a small L2 penalty: a strictly
    convex problem with one optimum, which full-batch L-BFGS reaches in a few dozen steps from a
    zero start, so the probe does not depend on a seed or a step budget.
    """
    T, D = fit.shape[1:]
    mean, std = fit.mean(dim=(0, 1)), fit.std(dim=(0, 1)) + 1e-6

    def rows(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = rearrange((features - mean) / std, "n t d -> (n t) d")
        return x, repeat(torch.arange(T), "t -> (n t)", n=features.shape[0])

    x, y = rows(fit)
    probe = nn.Linear(D, T)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    x, y = rows(held_out)
    with torch.no_grad():
        return float(100.0 * (probe(x).argmax(dim=1) == y).float().mean())


def order_probe(
    models: Sequence[nn.Module],
    loader: Iterable[dict],
    *,
    fit_clips: int,
    held_out_clips: int,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    l2: float = 1e-3,
) -> list[dict[str, Any]]:
    """Per model: the probe fit on the first ``fit_clips`` clips of ``loader`` and scored on the
    ``held_out_clips`` after them (same preprocessing, disjoint clips). ``l2``: the probe's
    penalty (0: the paper's plain cross-entropy, whose optimum need not be unique).

    Each result holds ``accuracy`` (top-1 %, per block and ``final``), ``frames`` (token frames
    of each block, for its chance level 100 / frames) and ``skipped`` (block -> why it was not
    probed: one token frame has no order to find, no clips to fit or none held out). A model that
    cannot give per-block tokens has only ``unsupported``, its reason. ``device``: where the
    models run (default: where the first one's parameters are).
    """
    if device is None:
        device = next(next(iter(models)).parameters(), torch.empty(0)).device
    results: list[dict[str, Any] | None] = []
    probed = []
    for model in models:
        reason = getattr(model, "unsupported", {}).get("order_probe")
        results.append({"unsupported": reason} if reason else None)
        if not reason:
            probed.append(model)
    features = frame_features(
        probed,
        loader,
        max_clips=fit_clips + held_out_clips,
        device=device,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )
    per_model = iter(features)
    for i, result in enumerate(results):
        if result is not None:
            continue
        blocks = next(per_model)
        accuracy, frames, skipped = {}, {}, {}
        for name, feature in blocks.items():
            frames[name] = int(feature.shape[1])
            if feature.shape[1] < 2:
                skipped[name] = "one token frame: no order to find"
                continue
            fit, held_out = feature[:fit_clips], feature[fit_clips:]
            if len(fit) == 0:  # a probe fit on nothing predicts slot 0 always: exactly chance
                skipped[name] = "no clips to fit the probe on"
                continue
            if len(held_out) == 0:
                skipped[name] = "no held-out clips left"
                continue
            accuracy[name] = fit_order_probe(fit, held_out, l2=l2)
        results[i] = {"accuracy": accuracy, "frames": frames, "skipped": skipped}
    return results
