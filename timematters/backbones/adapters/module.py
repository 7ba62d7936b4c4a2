"""A user's own model, named ``pkg.module:factory``: any importable callable returning a module.

A module that already honours ``VideoBackbone`` (``forward_features``, ``forward_head``, the size
attributes) is used as it is: every diagnostic and loss applies; to take clips normalised
otherwise than the data's, it converts them itself (``InputNormalisation``), or is refused. Any other module that maps
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
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from timematters.backbones.adapters.base import LogitsOnlyAdapter
from timematters.backbones.normalisation import declared_normalisation
from timematters.backbones.protocol import VideoBackbone, check_protocol, lacking_members


def load_module_model(spec: str, **sizes: Any) -> nn.Module:
    """Import ``pkg.module:factory`` and call it with the ``sizes`` (num_classes, num_frames,
    img_size) its signature names."""
    factory, kwargs = factory_call(spec, **sizes)
    attribute = spec.partition(":")[2]
    parameters = inspect.signature(factory).parameters
    try:
        model = factory(**kwargs)
    except Exception as error:
        # Chained, so TIMEMATTERS_TRACEBACK=1 still shows the line of the user's code that failed.
        call = f"{attribute}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        hint = _unfilled_hint(parameters, kwargs, offered=sizes)
        raise ValueError(f"{spec}: {call} failed: {_one_line(error)}{hint}") from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    # The clip length is the model's only when it was built for it (or declares it): a module
    # that pools over time takes any number of frames.
    num_frames = kwargs.get("num_frames", 0)
    return as_video_backbone(model, source=spec, num_frames=num_frames)


def factory_call(spec: str, **sizes: Any) -> tuple[Any, dict[str, Any]]:
    """The factory ``pkg.module:factory`` names, and the ``sizes`` (num_classes, num_frames,
    img_size) its signature takes: what ``load_module_model`` calls, and an export's card."""
    module_name, _, attribute = spec.partition(":")
    # The working folder is searched too, as `python -m` and `python script.py` do: the
    # `timematters` script alone would not find a my_models.py next to the user's data.
    if os.getcwd() not in map(os.path.abspath, sys.path):
        sys.path.append(os.getcwd())
    module = _import_user_module(spec, module_name)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        hint = ""
        if module_name.split(".")[0] == "timm":  # timm:NAME, the weights spec, as a model
            hint = (
                "; timm has no video classifiers: timm:NAME names an image ViT / DeiT's "
                "weights, for model.pretrained"
            )
        raise ValueError(f"{spec}: {module_name} has no callable {attribute!r}{hint}")
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in sizes.items() if v is not None and (takes_any or k in parameters)}
    return factory, kwargs


def _import_user_module(spec: str, module_name: str) -> ModuleType:
    """The module ``spec`` names, every failure one line saying which file or package is at fault:
    the module not found, a package it imports not installed, its own code failing."""
    if module_name.endswith(".py"):  # my_models.py:build, a file name where the import name goes
        raise ValueError(f"{spec}: {module_file_hint(spec)}")
    try:
        return importlib.import_module(module_name)
    except SyntaxError as error:  # IndentationError too; the import machinery's frames say nothing
        raise ValueError(f"{spec}: {error.filename} line {error.lineno}: {error.msg}") from error
    except ModuleNotFoundError as error:
        # error.name is what was not found: the module (or its package) itself, or an import
        # inside it, for which the folder advice would be wrong.
        asked_for = error.name is None or module_name == error.name
        if asked_for or module_name.startswith(f"{error.name}."):
            raise ValueError(
                f"{spec}: cannot import {module_name} ({error}); run from the folder that holds "
                "it or add that folder to PYTHONPATH"
            ) from None
        raise ValueError(
            f"{spec}: {module_name} imports {error.name}, which is not installed; install it "
            "in this environment"
        ) from error
    except Exception as error:  # an ImportError of a name, or the module's own code failing
        raise ValueError(f"{spec}: importing {module_name} failed: {_one_line(error)}") from error


def module_file_hint(spec: str) -> str:
    """How to name the module of a ``path/file.py:factory`` spec: by its import name, from the
    folder that holds it."""
    path, _, factory = spec.rpartition(":")
    folder = os.path.dirname(path) or "."
    return (
        f"a module is named by its import name, without .py: give "
        f"{Path(path).stem}:{factory or 'factory'}, run from {folder} (or with PYTHONPATH={folder})"
    )


def _one_line(error: BaseException) -> str:
    """``Type: message``, the message's first line: the CLI prints one line, and
    TIMEMATTERS_TRACEBACK=1 shows the rest."""
    lines = str(error).strip().splitlines()
    return type(error).__name__ + (f": {lines[0]}" if lines else "")


def _unfilled_hint(
    parameters: Mapping[str, inspect.Parameter], kwargs: dict[str, Any], *, offered: dict[str, Any]
) -> str:
    """What to change when the factory has required parameters timematters does not pass."""
    unfilled = [
        name
        for name, p in parameters.items()
        if p.default is p.empty
        and name not in kwargs
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if not unfilled:
        return ""
    return (
        f" (a factory is called with whichever of {', '.join(offered)} it names; give "
        f"{', '.join(unfilled)} a default)"
    )


def as_video_backbone(
    model: nn.Module, *, source: str = "", num_frames: int = 0, img_size: int = 0
) -> nn.Module:
    """``model`` itself when it honours ``VideoBackbone`` (ours, an adapter, a user's); a
    transformers or torchvision video model in its adapter (which holds the model: training the
    adapter trains its weights); else the logits-only ``ModuleAdapter`` around it. ``source``:
    how messages and reports name it (default: its class); ``num_frames`` / ``img_size``: the
    clips a torchvision model will see, for the losses' sizes (0: torchvision's 16 of 112²)."""
    source = source or type(model).__name__
    if isinstance(model, VideoBackbone):
        check_protocol(model)  # its sizes, here rather than as a TypeError deep in a diagnostic
        # A user's module names its classes as any module does (``classes``); reports name it.
        if not getattr(model, "class_names", None) and getattr(model, "classes", None):
            model.class_names = list(model.classes)
        if not getattr(model, "source", ""):
            model.source = source
        return model
    # A transformers or torchvision video model given as an object gets the adapter its spec
    # would: its input layout ([B, T, C, H, W] for transformers), normalisation and tokens.
    kind = type(model).__module__
    if kind.startswith("transformers."):
        from timematters.backbones.adapters.hf import adapt_hf_module

        return adapt_hf_module(model)
    if kind.startswith("torchvision.models.video."):
        from timematters.backbones.adapters.torchvision import adapt_torchvision_module

        return adapt_torchvision_module(model, num_frames=num_frames, img_size=img_size)
    return ModuleAdapter(model, source=source, num_frames=num_frames)


class ModuleAdapter(LogitsOnlyAdapter):
    """Logits only: ``forward_features`` carries the logits as the clip token."""

    family = "module"

    def __init__(self, model: nn.Module, *, source: str, num_frames: int):
        mean, std = declared_normalisation(model)
        num_classes = getattr(model, "num_classes", 0)
        # A module that tried to honour the protocol is told what it lacks.
        lacking = lacking_members(model)
        needs = (
            f"it lacks {', '.join(lacking)}"
            if hasattr(model, "forward_features")
            else "add forward_features / forward_head and the VideoBackbone attributes"
        )
        super().__init__(
            model,
            reason=f"{type(model).__name__} gives logits only ({needs} for token diagnostics)",
            num_frames=getattr(model, "num_frames", num_frames),
            img_size=getattr(model, "img_size", 0),
            embed_dim=num_classes,
            num_classes=num_classes,
            mean=mean,
            std=std,
            class_names=list(getattr(model, "classes", [])) or None,
            source=source,
        )
        self._converts_itself = callable(getattr(model, "set_input_normalisation", None))

    def set_input_normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().set_input_normalisation(mean, std)
        if self._converts_itself:
            self.model.set_input_normalisation(mean, std)

    def renormalise(self, video: torch.Tensor) -> torch.Tensor:
        # A module that converts its clips itself (InputNormalisation) would convert them twice.
        return video if self._converts_itself else super().renormalise(video)

    def logits(self, video: torch.Tensor) -> torch.Tensor:
        try:
            out = self.model(video)
        except torch.cuda.OutOfMemoryError:
            raise  # the batch's size, said by the command that chose it
        except Exception as error:  # whichever: KeyError, AttributeError, NotImplementedError...
            # The user's own code failed on our clips: one line naming it and the clip batch;
            # chained, so TIMEMATTERS_TRACEBACK=1 shows the line that failed.
            raise ValueError(
                f"{self.source} failed on a {list(video.shape)} clip batch [B, C, T, H, W]: "
                f"{_one_line(error)} (TIMEMATTERS_TRACEBACK=1 shows where)"
            ) from error
        logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", out)
        self._check_logits(logits, video)
        return logits

    def _check_logits(self, logits: Any, video: torch.Tensor) -> None:
        """Refuse what is not logits ``[batch, classes]`` where the module returned it, rather
        than as a shape error deep in a loss or a diagnostic (metadata only: no sync, no copy)."""
        expected = (
            "the module must return logits [batch, classes] (a tensor, or an object with .logits)"
        )
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"{self.source} returned a {type(logits).__name__}; {expected}")
        if logits.ndim != 2 or logits.shape[0] != video.shape[0]:
            raise ValueError(
                f"{self.source} returned {list(logits.shape)} for a {list(video.shape)} clip "
                f"batch; {expected}"
            )
