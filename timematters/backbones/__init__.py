"""Backbone registry: every video backbone returns ``VideoTokens`` (see ``tokens.py``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from timematters.backbones.tokens import VideoTokens

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


# Explicit imports fill the registry.
from timematters.backbones import motionformer, timesformer, vit, xvit  # noqa: E402, F401

__all__ = ["VideoTokens", "create_backbone", "list_backbones", "register_backbone"]
