"""Backbone registry: every video backbone honours ``VideoBackbone`` (see ``protocol.py``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from timematters.backbones.normalisation import InputNormalisation, clips_normalised
from timematters.backbones.protocol import VideoBackbone, VideoTokens

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a size variant under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"backbone {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone; keyword arguments override the variant's defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    return _REGISTRY[name](**kwargs)


def backbone_arguments(name: str) -> list[str]:
    """The keyword arguments a registered backbone's constructor takes."""
    return list(backbone_parameters(name))


def backbone_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The parameters of a registered backbone's constructor, with their defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    # Size variants forward **kwargs to their class: the class's signature is the real one.
    cls = inspect.signature(_REGISTRY[name]).return_annotation
    if isinstance(cls, str):  # postponed annotations
        cls = _REGISTRY[name].__globals__[cls]
    parameters = inspect.signature(cls).parameters
    return {key: p for key, p in parameters.items() if key != "self"}


# Explicit imports fill the registry.
from timematters.backbones import motionformer, timesformer, vit, xvit  # noqa: E402, F401

__all__ = [
    "InputNormalisation",
    "VideoBackbone",
    "VideoTokens",
    "backbone_arguments",
    "backbone_parameters",
    "clips_normalised",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
