"""A user's own model, named ``pkg.module:factory``: any importable callable returning a module.

A module that already honours ``VideoBackbone`` (``forward_features``, ``forward_head``, the size
attributes) is used as it is: every diagnostic and loss applies. Any other module that maps
``[B, C, T, H, W]`` clips to logits (a tensor, or an object with ``.logits``) is wrapped: the
shuffle test, the confidence gap and the debias loss apply, and the report says why the rest
does not. Optional attributes it may declare: ``mean``, ``std`` (the normalisation it wants),
``num_frames``, ``classes`` (its class names).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

import torch
from torch import nn

from timematters.backbones.adapters.base import DEFAULT_INPUT, Adapter
from timematters.backbones.protocol import VideoBackbone, VideoTokens


def load_module_model(spec: str, **sizes: Any) -> nn.Module:
    """Import ``pkg.module:factory`` and call it with the ``sizes`` (num_classes, num_frames,
    img_size) its signature names."""
    module_name, _, attribute = spec.partition(":")
    # The working folder is searched too, as `python -m` and `python script.py` do: the
    # `timematters` script alone would not find a my_models.py next to the user's data.
    if os.getcwd() not in map(os.path.abspath, sys.path):
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{spec}: cannot import {module_name} ({error}); run from the folder that holds it "
            "or add that folder to PYTHONPATH"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"{spec}: {module_name} has no callable {attribute!r}")
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in sizes.items() if v is not None and (takes_any or k in parameters)}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return as_video_backbone(model, source=spec, num_frames=sizes.get("num_frames") or 0)


def as_video_backbone(model: nn.Module, *, source: str, num_frames: int = 0) -> nn.Module:
    """``model`` itself when it honours ``VideoBackbone`` (ours, an adapter, a user's), else the
    logits-only ``ModuleAdapter`` around it."""
    if isinstance(model, VideoBackbone):
        return model
    return ModuleAdapter(model, source=source, num_frames=num_frames)


class ModuleAdapter(Adapter):
    """Logits only: ``forward_features`` carries the logits as the clip token."""

    family = "module"
    flexible_size = True

    def __init__(self, model: nn.Module, *, source: str, num_frames: int):
        mean = tuple(getattr(model, "mean", DEFAULT_INPUT[0]))
        std = tuple(getattr(model, "std", DEFAULT_INPUT[1]))
        super().__init__(
            model,
            num_frames=getattr(model, "num_frames", num_frames),
            img_size=getattr(model, "img_size", 0),
            patch_size=1,
            embed_dim=0,
            num_classes=getattr(model, "num_classes", 0),
            token_frames=1,
            mean=mean,
            std=std,
            class_names=list(getattr(model, "classes", [])) or None,
            source=source,
        )
        reason = (
            f"{type(model).__name__} gives logits only (add forward_features / forward_head and "
            "the VideoBackbone attributes for token diagnostics)"
        )
        self.unsupported.update(order_probe=reason, gradcam=reason, flow=reason, order=reason)

    def check_input(self, video: torch.Tensor) -> None:
        if self.num_frames and video.shape[2] != self.num_frames:
            super().check_input(video)

    def features(self, video: torch.Tensor) -> VideoTokens:
        out = self.model(video)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        return VideoTokens(cls=logits, patches=logits[:, None, None])

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return cls
