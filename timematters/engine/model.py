"""Models from configs and checkpoints: building a backbone, loading a saved one, evaluating it.

``build_model`` makes the config's backbone (and loads ``model.pretrained``); a timematters
checkpoint carries its own model config and class names, so ``load_model_from_checkpoint``
rebuilds exactly what was trained; ``evaluate_checkpoint`` runs the one evaluation on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from timematters.backbones import create_backbone
from timematters.backbones.pretrained import load_pretrained
from timematters.config import Config, ModelConfig, backbone_kwargs, merge, validate
from timematters.data.build import build_dataset
from timematters.data.collate import collate_videos
from timematters.data.samplers import Shard
from timematters.engine.checkpoint import load_checkpoint
from timematters.engine.distributed import (
    autocast_dtype,
    cleanup_distributed,
    setup_distributed,
)
from timematters.engine.evaluate import EvalResult, evaluate


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The config's backbone with ``num_classes`` outputs, its pretrained weights loaded."""
    model = create_backbone(cfg.model.name, **backbone_kwargs(cfg, num_classes))
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
    return model


def model_patch_size(cfg: Config) -> int:
    """The backbone's patch size, read from a parameter-free build on the meta device."""
    with torch.device("meta"):
        return create_backbone(cfg.model.name, **backbone_kwargs(cfg, num_classes=1)).patch_size


def load_model_from_checkpoint(cfg: Config, path: str | Path) -> tuple[nn.Module, list[str]]:
    """The backbone saved in a timematters checkpoint, in eval mode, and its class names (empty
    when the checkpoint does not name them).

    The architecture comes from the checkpoint's own saved config when it has one (so checkpoints
    of different backbones can be compared on one dataset); clip length and frame size from ``cfg``.
    """
    state = load_checkpoint(path)
    if "model" not in state:
        raise ValueError(f"{path} is not a timematters checkpoint (no 'model' entry)")
    model_cfg = cfg.model
    if "config" in state:
        model_cfg = merge(ModelConfig(), state["config"]["model"], source=str(path))
        if model_cfg.num_frames != cfg.model.num_frames:
            raise ValueError(
                f"{path} was trained on {model_cfg.num_frames}-frame clips but the config makes "
                f"{cfg.model.num_frames}-frame clips (model.num_frames)"
            )
    classes = list(state.get("classes") or [])
    num_classes = model_cfg.num_classes or len(classes)
    model = create_backbone(
        model_cfg.name, **backbone_kwargs(replace(cfg, model=model_cfg), num_classes)
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # names every mismatched key already; keep it to a paragraph
        raise ValueError(f"{path} does not fit {model_cfg.name}: {error}") from None
    return model.eval(), classes


def check_classes(trained: list[str], dataset: list[str], path: str | Path) -> None:
    """Refuse to score a checkpoint on a dataset whose classes differ from the ones it was trained
    on, in set or in order: its logit k would be compared with another class's label."""
    if not trained or list(trained) == list(dataset):
        return
    missing = [c for c in trained if c not in dataset]
    extra = [c for c in dataset if c not in trained]
    if missing or extra:
        what = "; ".join(
            part
            for part in (
                f"not in the dataset: {', '.join(missing[:5])}" if missing else "",
                f"not in the checkpoint: {', '.join(extra[:5])}" if extra else "",
            )
            if part
        )
        detail = f"other classes ({len(trained)} trained, {len(dataset)} in the dataset; {what})"
    else:
        first = next(i for i, (a, b) in enumerate(zip(trained, dataset, strict=True)) if a != b)
        detail = (
            f"the same classes in another order (class {first} is {trained[first]!r} in the "
            f"checkpoint, {dataset[first]!r} in the dataset)"
        )
    raise ValueError(
        f"{path} was trained on {detail}; its scores would be wrong. Give the dataset the "
        "checkpoint's classes in its order (for a video list: data.class_list, one name per line)"
    )


@dataclass
class BackgroundsResult:
    """Top-1 per ImageNet-9 variation and BG-Gap (Table 4), shaped like an ``EvalResult``."""

    accuracy: dict[str, float]

    def metrics(self) -> dict[str, float]:
        return dict(self.accuracy)

    def table(self, name: str) -> str:
        from timematters.engine.backgrounds import format_backgrounds_table

        return format_backgrounds_table({name: self.accuracy})


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path) -> EvalResult | BackgroundsResult:
    """The evaluation of a saved model on the config's evaluation split: original / shuffled per
    subset, or on ImageNet-9 the Backgrounds Challenge (Table 4)."""
    validate(cfg)
    if cfg.data.dataset == "imagenet9":
        from timematters.engine.backgrounds import evaluate_backgrounds_checkpoint

        return BackgroundsResult(evaluate_backgrounds_checkpoint(cfg, checkpoint))
    info = setup_distributed(cfg.train.device)
    try:
        model, classes = load_model_from_checkpoint(cfg, checkpoint)
        test_set = build_dataset(
            cfg, cfg.eval.split, flow_labels=False, patch_size=model.patch_size
        )
        check_classes(classes, test_set.classes, checkpoint)
        loader = DataLoader(
            test_set,
            batch_size=cfg.eval.batch_size,
            sampler=Shard(len(test_set), info.rank, info.world_size),
            num_workers=cfg.data.num_workers,
            collate_fn=collate_videos,
        )
        return evaluate(
            model.to(info.device),
            loader,
            classes=classes or test_set.classes,
            subsets=getattr(test_set, "subsets", {}),
            settings=cfg.eval,
            device=info.device,
            autocast_dtype=autocast_dtype(cfg.train.precision, info.device),
            progress=cfg.train.progress,
        )
    finally:
        cleanup_distributed()
