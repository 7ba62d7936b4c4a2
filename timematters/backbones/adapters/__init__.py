"""Models that are not ours, behind the backbone protocol: one spec syntax for all of them.

- ``hf:DIR_OR_HUB_ID``: a Hugging Face ``transformers`` video classifier (``hf.py``);
- ``torchvision:NAME[:WEIGHTS]``: a torchvision video model (``torchvision.py``);
- ``pkg.module:factory``: a callable returning the user's own module (``module.py``).

A timematters checkpoint path is the fourth kind of spec; the engine loads those
(``engine.model.load_model``). A checkpoint of a trained foreign model records its
``architecture()``, so ``rebuild_foreign_model`` makes it again without its source's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from timematters.backbones.adapters.base import Adapter
from timematters.backbones.adapters.module import as_video_backbone

SPEC_KINDS = ("hf:", "torchvision:")


def is_foreign_spec(name: str) -> bool:
    """Whether ``name`` names a foreign model rather than a registered backbone or a file."""
    if name.startswith(SPEC_KINDS):
        return True
    module, colon, attribute = name.partition(":")
    return bool(
        colon and attribute.isidentifier() and all(p.isidentifier() for p in module.split("."))
    )


def load_foreign_model(
    spec: str,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """The model a foreign spec names, honouring ``VideoBackbone``.

    num_classes: a classifier with this many outputs (a new head if the checkpoint's differs);
    num_frames, img_size: the clips it will see (checked against what the model takes).
    """
    if spec.startswith("hf:"):
        from timematters.backbones.adapters.hf import load_hf_model

        return load_hf_model(spec.removeprefix("hf:"), num_classes=num_classes)
    if spec.startswith("torchvision:"):
        from timematters.backbones.adapters.torchvision import load_torchvision_model

        name, _, weights = spec.removeprefix("torchvision:").partition(":")
        return load_torchvision_model(
            name,
            Path(weights) if weights else None,
            num_classes=num_classes,
            num_frames=num_frames or 16,
            img_size=img_size or 112,
        )
    from timematters.backbones.adapters.module import load_module_model

    return load_module_model(
        spec, num_classes=num_classes, num_frames=num_frames, img_size=img_size
    )


def foreign_model_skeleton(
    spec: str,
    *,
    architecture: dict[str, Any] | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """The model a foreign spec names, for its sizes only (patch, frames, token frames): a Hugging
    Face model is built from its config on the meta device, so its weights are neither read nor
    downloaded twice; any other is loaded (or rebuilt from a checkpoint's ``architecture``)."""
    if spec.startswith("hf:"):
        from timematters.backbones.adapters.hf import load_hf_model, rebuild_hf_model

        with torch.device("meta"):
            if architecture:
                return rebuild_hf_model(architecture, spec)
            return load_hf_model(spec.removeprefix("hf:"), weights=False)
    if architecture:
        return rebuild_foreign_model(
            architecture, source=spec, num_frames=num_frames, img_size=img_size
        )
    return load_foreign_model(spec, num_frames=num_frames, img_size=img_size)


def rebuild_foreign_model(
    architecture: dict[str, Any],
    *,
    source: str,
    num_frames: int | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """The untrained model an adapter's ``architecture()`` describes, named ``source`` (its spec);
    the caller loads the trained weights into it."""
    if architecture["kind"] == "hf":
        from timematters.backbones.adapters.hf import rebuild_hf_model

        return rebuild_hf_model(architecture, source)
    if architecture["kind"] == "torchvision":
        from timematters.backbones.adapters.torchvision import load_torchvision_model

        model = load_torchvision_model(
            architecture["name"],
            num_classes=architecture["num_classes"],
            num_frames=num_frames or 16,
            img_size=img_size or 112,
        )
        model.source = source
        model.meta["weights"] = source  # the caller loads them from there
        return model
    raise ValueError(f"{source}: unknown architecture kind {architecture['kind']!r}")


__all__ = [
    "Adapter",
    "as_video_backbone",
    "foreign_model_skeleton",
    "is_foreign_spec",
    "load_foreign_model",
    "rebuild_foreign_model",
]
