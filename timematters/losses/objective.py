"""The TIME objective (Eq. 14-15): total = ce + λ_order·order + λ_debias·debias + λ_flow·flow.

A loss whose weight is 0 is not built: no head, no shuffled forward pass, no flow labels. Every
loss declares its ``name`` (its term is ``<name>_loss``, its weight ``λ_<name>``) and what it
``requires`` beyond the tokens and logits of the clips: ``"shuffled_logits"`` (the objective then
runs the backbone on that loss's ``shuffled_view`` too) or ``"flow_labels"`` (the batch must carry
them; ``needs_flow_labels`` tells the training loop).

``objective_for_model(model, cfg)`` reads the sizes from a ``VideoBackbone`` and refuses a loss
the model cannot give (a tubelet model has no frame-to-frame flow); ``build_objective`` takes the
sizes by hand. ``TimeModel(backbone, objective)`` is the two as one module: what to hand to
DistributedDataParallel or ``torch.compile``, whose wrappers the objective cannot see through.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from timematters.backbones.protocol import (
    VideoTokens,
    check_clips,
    check_protocol,
    check_tokens,
    frames_per_token_frame,
    lacking_members,
    model_name,
)
from timematters.config import LossConfig, check_losses
from timematters.losses.ce import CrossEntropyLoss
from timematters.losses.debias import DebiasLoss
from timematters.losses.flow import FlowLoss
from timematters.losses.image import PatchDebiasLoss, SpatialOrderLoss
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

    ``losses``: loss modules, each with a distinct ``name``; ``weights`` gives each one's λ by
    name (default 1). The backbone only needs ``forward_features(video) -> VideoTokens`` and
    ``forward_head(cls)``.
    """

    def __init__(self, losses: Sequence[nn.Module], weights: dict[str, float] | None = None):
        super().__init__()
        weights = weights or {}
        names = [loss.name for loss in losses]
        if len(set(names)) != len(names):
            raise ValueError(f"two losses share a name: {names}")
        unknown = sorted(set(weights) - set(names))
        if unknown:  # a misspelt λ would leave its loss at 1 without a word
            raise ValueError(f"weights for no loss: {', '.join(unknown)}; the losses: {names}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in names}
        self.losses = nn.ModuleDict(
            {loss.name: loss for loss in losses if self.weights[loss.name] != 0}
        )
        shufflers = [m for m in self.losses.values() if "shuffled_logits" in m.requires]
        if len(shufflers) > 1:
            raise ValueError("only one loss may ask for the shuffled view")
        self.shuffler = shufflers[0] if shufflers else None

    @property
    def needs_flow_labels(self) -> bool:
        return any("flow_labels" in loss.requires for loss in self.losses.values())

    def forward(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        _refuse_wrappers(model)
        _refuse_other_batches(batch)
        missing = [key for key in ("video", "label") if key not in batch]
        if missing:
            raise KeyError(
                f"the batch has no {' or '.join(map(repr, missing))}: it is a dict with 'video' "
                f"[B, 3, T, H, W] and 'label' [B] (got {', '.join(map(repr, batch)) or 'nothing'})"
            )
        video = batch["video"]
        check_clips(video)
        if not isinstance(batch["label"], torch.Tensor):  # a list of class indices
            _refuse_class_names(batch["label"])
            batch = {**batch, "label": _as_tensor(batch["label"], device=video.device)}
        batch = {**batch, "label": _as_indices(batch["label"], "label", "class indices [B]")}
        if batch.get("flow_labels") is not None:
            flow = _as_tensor(batch["flow_labels"], device=video.device)
            what = "direction classes 0 to 8 [B, T-1, S]"
            batch = {**batch, "flow_labels": _as_indices(flow, "flow_labels", what)}
        B = video.shape[0]
        if self.shuffler is not None:
            # Both views in one forward pass: every layer works per clip, so this equals two passes
            # and runs the backbone once (which DistributedDataParallel requires).
            video = torch.cat([video, self.shuffler.shuffled_view(video, generator)])
        tokens = model.forward_features(video)
        if not lacking_members(model):  # sizes by hand: none to read
            check_tokens(tokens, model, batch_size=len(video), frames=video.shape[2])
        logits = model.forward_head(tokens.cls)
        # It names the label cross-entropy would report as an index error. Only for labels on
        # the CPU: on a GPU it would wait for the device every step, and compiled it would
        # break the graph.
        if batch["label"].device.type == "cpu" and not torch.compiler.is_compiling():
            _check_label_range(batch["label"], outputs=logits.shape[-1], model=model)
        shuffled_logits = None
        if self.shuffler is not None:
            tokens = VideoTokens(cls=tokens.cls[:B], patches=tokens.patches[:B])
            logits, shuffled_logits = logits[:B], logits[B:]

        inputs = LossInputs(tokens, logits, batch, shuffled_logits)
        terms: dict[str, torch.Tensor] = {}
        for loss in self.losses.values():
            terms.update(loss(inputs))
        total = sum(self.weights[name] * terms[f"{name}_loss"] for name in self.losses)
        return ObjectiveOutput(total=total, terms=terms, logits=logits, tokens=tokens)


class TimeModel(nn.Module):
    """A backbone and its objective as one module, ``TimeModel(model, objective)(batch)``: the
    module to wrap in DistributedDataParallel (it then sees every parameter, TIME heads included,
    and all-reduces their gradients) or to ``torch.compile``."""

    def __init__(self, backbone: nn.Module, objective: Objective):
        super().__init__()
        self.backbone = backbone
        self.objective = objective

    def forward(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        return self.objective(self.backbone, batch, generator)


# Wrappers whose forward the objective would bypass (it calls forward_features / forward_head):
# what would go wrong, and the wrapper to build instead.
_WRAPPERS = {
    "DistributedDataParallel": (
        "its gradients would not be all-reduced",
        "DistributedDataParallel",
    ),
    "DataParallel": ("it would run on one device", "DataParallel"),
    "OptimizedModule": ("it would run uncompiled", "torch.compile"),  # torch.compile's
}


def _refuse_wrappers(model: nn.Module) -> None:
    wrapper = type(model).__name__
    if wrapper in _WRAPPERS:
        reason, build = _WRAPPERS[wrapper]
        raise TypeError(
            f"the objective calls the backbone's forward_features, not a {wrapper}'s forward "
            f"({reason}): wrap the backbone and objective together, "
            f"{build}(TimeModel(backbone, objective)), and call it on the batch"
        )


_BATCH = "a dict {'video': clips [B, 3, T, H, W], 'label': class indices [B]}"


def _refuse_other_batches(batch: Any) -> None:
    """One line for a batch that is not our dict, naming its type (its repr holds every tensor)."""
    if isinstance(batch, dict):
        return
    if isinstance(batch, tuple | list) and batch and all(isinstance(b, dict) for b in batch):
        raise TypeError(
            f"the objective takes one batch, {_BATCH}; got a {type(batch).__name__} of "
            f"{len(batch)} such batches: call it on each one, objective(model, batch)"
        )
    if isinstance(batch, tuple | list) and len(batch) == 2:
        raise TypeError(
            f"the objective takes one batch, {_BATCH}; got a {type(batch).__name__} of 2 "
            "items: {'video': video, 'label': label} makes one of a (video, label) pair"
        )
    raise TypeError(f"the objective takes one batch, {_BATCH}; got a {type(batch).__name__}")


def _refuse_class_names(labels: Any) -> None:
    """Labels given as class names: torch would say only "too many dimensions 'str'"."""
    if isinstance(labels, str) or not hasattr(labels, "__iter__"):
        labels = [labels]
    names = [label for label in labels if isinstance(label, str)]  # numpy's str_ too
    if names:
        raise ValueError(
            f"labels are 0-based class indices, got the name {names[0]!r}: map names to indices "
            "with the classifier's order, e.g. [classes.index(name) for name in names]"
        )


def _as_tensor(values: Any, *, device: torch.device) -> torch.Tensor:
    """Labels given as a list, a list of per-clip tensors or a NumPy array, as one tensor."""
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, list | tuple) and values and isinstance(values[0], torch.Tensor):
        return torch.stack([torch.as_tensor(v) for v in values]).to(device)
    return torch.as_tensor(values, device=device)


def _as_indices(labels: torch.Tensor, key: str, what: str) -> torch.Tensor:
    """Integer labels as the int64 cross-entropy takes; float ones (one-hot or soft targets)
    refused with the fix, instead of cross-entropy's size or dtype error."""
    if labels.dtype.is_floating_point:
        soft = (
            " (one-hot or soft targets: give their argmax; timematters.losses.mix_clips "
            "mixes clips and their targets)"
            if key == "label" and labels.ndim == 2
            else ""
        )
        raise ValueError(
            f"batch[{key!r}] holds {labels.dtype} {list(labels.shape)}; it takes {what} as "
            f"integers{soft}"
        )
    return labels if labels.dtype == torch.int64 else labels.long()


def _check_label_range(labels: torch.Tensor, *, outputs: int, model: nn.Module) -> None:
    """Labels a classifier of ``outputs`` classes can be trained on: 0 to outputs - 1."""
    if labels.dtype.is_floating_point or labels.numel() == 0:
        return  # not class indices: cross-entropy says what it expects
    low, high = torch.stack(torch.aminmax(labels)).tolist()
    if low < 0 or high >= outputs:
        source = model_name(model)
        raise ValueError(
            f"label {high if high >= outputs else low} but {source} has {outputs} outputs: labels "
            f"are 0-based class indices, 0 to {outputs - 1}"
        )


def build_objective(
    cfg: LossConfig,
    *,
    embed_dim: int,
    num_frames: int,
    grid: tuple[int, int] | None = None,
    patch_size: int | None = None,
) -> Objective:
    """The paper's objective from a ``LossConfig`` (all λ = 1 and smoothing 0.2 by default).

    ``num_frames`` is the model's token frames. ``grid`` and ``patch_size`` (the model's) are
    needed only by the image losses (axis = space, Eq. 16-17).
    """
    cfg = check_losses(cfg)  # a LossConfig made in Python: a misspelt choice is not "time"
    spatial = "space" in (cfg.order.axis, cfg.debias.axis)
    if spatial and (grid is None or patch_size is None):
        raise ValueError("the spatial order and debias losses need the model's grid and patch_size")
    losses: list[nn.Module] = [CrossEntropyLoss(cfg.ce.smoothing)]
    if cfg.order.weight != 0:
        if cfg.order.axis == "space":
            order = SpatialOrderLoss(embed_dim, grid[0] * grid[1], cfg.order.smoothing)
        else:
            order = OrderLoss(embed_dim, num_frames, cfg.order.smoothing)
        losses.append(order)
    if cfg.debias.weight != 0:
        options = dict(shuffle=cfg.debias.shuffle, form=cfg.debias.form)
        if cfg.debias.axis == "space":
            losses.append(PatchDebiasLoss(patch_size, **options))
        else:
            losses.append(DebiasLoss(**options))
    if cfg.flow.weight != 0:
        losses.append(FlowLoss(embed_dim, cfg.flow.smoothing))
    weights = {loss.name: getattr(cfg, loss.name).weight for loss in losses[1:]}
    return Objective(losses, weights)


def _warn_identity_shuffles(num_frames: int) -> None:
    """``per_batch`` (released) draws one permutation per batch, the identity among them: at 8
    frames once in 40,320 steps, at few frames often enough to matter."""
    orders = math.factorial(num_frames)
    if 2 <= num_frames <= 4:  # (0: a module that does not say)
        logging.getLogger(__name__).warning(
            "with %d frames one step in %d shuffles no frame (loss.debias.shuffle=per_batch, as "
            "released) and pushes the unshuffled clips to uniform: loss.debias.shuffle="
            "per_sample never leaves a clip unshuffled",
            num_frames,
            orders,
        )


def objective_for_model(model: nn.Module, cfg: LossConfig | None = None) -> Objective:
    """The objective for a ``VideoBackbone`` (ours or adapted): its width, token frames, grid and
    patch size, and a ValueError naming the reason when a loss that is on needs what the model
    lacks (the order loss a frame axis in its tokens, the flow loss two token frames or more,
    each of the same number of frames)."""
    cfg = check_losses(cfg or LossConfig())
    _refuse_wrappers(model)
    check_protocol(model)
    unsupported = dict(getattr(model, "unsupported", {}))
    # One frame position to predict: a loss of 0 that teaches nothing (the image variant's order
    # loss, axis=space, predicts patch positions instead).
    if cfg.order.axis == "time" and model.token_frames < 2:
        unsupported.setdefault("order", f"its tokens have {model.token_frames} frame, no order")
    # Tubelets (several frames per token frame) are labelled with the flow between their first
    # frames (FlowLabeller.frame_step); frames that do not split into them evenly cannot be. The
    # order loss still applies there: the token frames keep their order, whichever frames the
    # last tubelet leaves out.
    tubelet = frames_per_token_frame(model)
    if model.token_frames < 2:
        unsupported.setdefault(
            "flow", f"its {model.num_frames} frames become {model.token_frames} token frames"
        )
    elif model.num_frames != tubelet * model.token_frames:
        unsupported.setdefault(
            "flow",
            f"its {model.num_frames} frames do not split into {tubelet}-frame tubelets (it leaves "
            f"out the last {model.num_frames - tubelet * model.token_frames}), so flow labels "
            "between tubelets would not match its token frames",
        )
    # A one-frame clip shuffled is the clip itself: debiasing it would push the real prediction
    # to uniform, against the task loss (the image variant shuffles patches instead).
    if cfg.debias.axis == "time" and model.num_frames == 1:  # (0: a module that does not say)
        unsupported.setdefault("debias", f"its clips have {model.num_frames} frame, no order")
    losses = ("order", "debias", "flow")
    blocked = [n for n in losses if getattr(cfg, n).weight != 0 and n in unsupported]
    if blocked:  # every loss at once, so that one corrected command runs
        source = model_name(model)
        overrides = " ".join(f"loss.{n}.weight=0" for n in blocked)
        if len(blocked) == 1:
            name = blocked[0]
            problem = f"the {name} loss cannot train {source}: {unsupported[name]}; give it"
        else:
            names = ", ".join(blocked[:-1]) + f" and {blocked[-1]}"
            reasons = "; ".join(f"{n}: {unsupported[n]}" for n in blocked)
            problem = f"the {names} losses cannot train {source} ({reasons}); give them"
        images = (
            " (for an image model, the image variant: loss.order.axis=space loss.debias.axis=space)"
            if model.num_frames == 1
            else ""
        )
        raise ValueError(f"{problem} weight 0 ({overrides}){images}")
    if cfg.debias.weight != 0 and cfg.debias.axis == "time" and cfg.debias.shuffle == "per_batch":
        _warn_identity_shuffles(model.num_frames)
    return build_objective(
        cfg,
        embed_dim=model.embed_dim,
        num_frames=model.token_frames,
        grid=model.grid,
        patch_size=model.patch_size,
    )
