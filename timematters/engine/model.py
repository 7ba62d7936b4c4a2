"""Models from configs, checkpoints and specs: build, load, describe, evaluate.

One spec syntax names every model (CLI ``--model``, ``model.name``, Python ``load_model``): a
timematters checkpoint path, ``hf:DIR_OR_HUB_ID``, ``torchvision:NAME[:WEIGHTS]`` or
``pkg.module:factory`` (``backbones/adapters``); in a config, a registered backbone name too.
``build_model`` makes the config's model (and loads ``model.pretrained``); a timematters
checkpoint carries its own model config and class names, so ``load_model_from_checkpoint``
rebuilds exactly what was trained; ``evaluate_checkpoint`` runs the one evaluation on a model.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from timematters.backbones import create_backbone
from timematters.backbones.adapters import (
    foreign_model_skeleton,
    is_foreign_spec,
    load_foreign_model,
    rebuild_foreign_model,
)
from timematters.backbones.adapters.module import module_file_hint
from timematters.backbones.normalisation import (
    DEFAULT_INPUT,
    check_normalisation,
    clips_normalised,
    declared_normalisation,
)
from timematters.backbones.pretrained import key_differences
from timematters.backbones.protocol import frames_per_token_frame
from timematters.config import (
    Config,
    ConfigError,
    ModelConfig,
    backbone_kwargs,
    expand_home_in_spec,
    merge,
    validate,
)
from timematters.data.build import build_dataset, build_eval_loader
from timematters.data.sampling import EvalClip
from timematters.data.text import counted
from timematters.engine.backgrounds import BackgroundsResult, evaluate_backgrounds_checkpoint
from timematters.engine.checkpoint import load_checkpoint, saved_config
from timematters.engine.distributed import (
    autocast_dtype,
    cleanup_distributed,
    is_main_process,
    setup_distributed,
)
from timematters.engine.evaluate import EvalResult, evaluate


def build_model(
    cfg: Config, num_classes: int, *, architecture: dict[str, Any] | None = None
) -> nn.Module:
    """The config's model with ``num_classes`` outputs: a registered backbone, initialised (the
    training loop loads ``model.pretrained`` into it, with its TIME heads), or a foreign spec
    with its own weights (a new classifier when its number of classes differs).

    architecture: a checkpoint's record of a foreign model (a resume loads its weights next), so
    the model is made without its source folder, weights file or a download."""
    return _build(cfg.model, cfg, num_classes, architecture=architecture)


def _build(
    model_cfg: ModelConfig,
    cfg: Config,
    num_classes: int | None,
    architecture: dict[str, Any] | None = None,
) -> nn.Module:
    """architecture: what a checkpoint recorded of a foreign model; it is rebuilt from that, not
    from its source (folder, weights file, hub)."""
    if is_foreign_spec(model_cfg.name):
        sizes = dict(num_frames=model_cfg.num_frames, img_size=cfg.data.crop_size)
        if architecture:
            model = rebuild_foreign_model(architecture, source=model_cfg.name, **sizes)
        else:
            model = load_foreign_model(model_cfg.name, num_classes=num_classes, **sizes)
        if hasattr(model, "set_input_normalisation"):
            model.set_input_normalisation(cfg.data.mean, cfg.data.std)
        check_normalisation(model, cfg.data.mean, cfg.data.std, name=model_cfg.name)
    else:
        model = create_backbone(
            model_cfg.name, **backbone_kwargs(replace(cfg, model=model_cfg), num_classes)
        )
        # Trained on the config's clips: it takes (and is given) their normalisation.
        if hasattr(model, "set_input_normalisation"):
            model.mean, model.std = tuple(cfg.data.mean), tuple(cfg.data.std)
            model.set_input_normalisation(cfg.data.mean, cfg.data.std)
    if model_cfg.grad_checkpointing:
        try:
            if not hasattr(model, "set_grad_checkpointing"):
                raise NotImplementedError
            model.set_grad_checkpointing(True)
        except NotImplementedError:  # neither ours nor a transformers model that supports it
            raise ConfigError(
                f"model.grad_checkpointing: {model_cfg.name} cannot checkpoint its blocks (our "
                "backbones and Hugging Face models can); set model.grad_checkpointing=false"
            ) from None
    return model


def align_classifier(model: nn.Module, classes: list[str]) -> bool:
    """Reorder the outputs of a trained classifier (a foreign model's) that names the data's
    classes in another order, so that output k scores the data's class k and what it learnt of
    each class is kept; a fine-tuning run would otherwise train each row as another class.
    Returns whether it did."""
    names = list(getattr(model, "class_names", None) or [])
    prefix = getattr(model, "classifier_name", "")
    if not prefix or names == list(classes) or sorted(names) != sorted(classes):
        return False
    if len(set(names)) != len(names):
        return False
    order = torch.tensor([names.index(name) for name in classes])
    rows = [
        parameter
        for name, parameter in model.named_parameters()
        if name.startswith(f"{prefix}.") and parameter.shape[:1] == (len(names),)
    ]
    with torch.no_grad():
        for parameter in rows:
            parameter.copy_(parameter[order])
    model.class_names = list(classes)
    return bool(rows)


def model_flow_grid(
    cfg: Config, *, architecture: dict[str, Any] | None = None, refuse_unsupported: bool = False
) -> tuple[int, int]:
    """(patch size, frames per token frame) of the backbone: flow labels are per patch and per
    pair of consecutive token frames. From a parameter-free build on the meta device (a Hugging
    Face model's from its config); another foreign model is loaded for it (or rebuilt from a
    checkpoint's ``architecture``), so ask only when flow labels are to be made.
    ``refuse_unsupported``: a ConfigError with the reason for a model that has no flow labels (a
    3-D CNN's tokens span several frames); training names it with every other loss instead."""
    model = _flow_grid_model(cfg, architecture)
    reason = getattr(model, "unsupported", {}).get("flow", "")
    if refuse_unsupported and reason:
        raise ConfigError(f"{cfg.model.name} has no flow labels: {reason}")
    return model.patch_size, frames_per_token_frame(model)  # the flow loss's own rule


def _flow_grid_model(cfg: Config, architecture: dict[str, Any] | None) -> nn.Module:
    if is_foreign_spec(cfg.model.name):
        sizes = dict(num_frames=cfg.model.num_frames, img_size=cfg.data.crop_size)
        model = foreign_model_skeleton(cfg.model.name, architecture=architecture, **sizes)
    else:
        with torch.device("meta"):
            model = create_backbone(cfg.model.name, **backbone_kwargs(cfg, num_classes=1))
    return model


def load_model(
    spec: str | Path,
    cfg: Config | None = None,
    *,
    num_classes: int | None = None,
    untrained_classes: int | None = None,
) -> nn.Module:
    """The model a spec names, in eval mode, with its ``class_names`` (None when unknown).

    A timematters checkpoint path rebuilds what was trained (architecture and, without ``cfg``,
    clip size from the checkpoint's own config); a foreign spec (``hf:...``, ``torchvision:...``,
    ``pkg.module:factory``) loads that model for ``cfg``'s clips (frames, size, normalisation),
    or without ``cfg`` as it comes (its own clip size: a factory's defaults, torchvision's 16
    frames of 112²).
    num_classes: the classifier's outputs; a trained classifier of another number is replaced by
        a new one (to fine-tune; a timematters checkpoint refuses: train ``--init-from`` it).
    untrained_classes: the outputs of a model that has no trained classifier (torchvision
        without weights, a user's factory) while a trained one keeps its own, as for scoring a
        model on a dataset of that many classes.
    """
    if isinstance(spec, nn.Module):  # its repr as a path would name a file of 80 lines
        raise TypeError(
            f"load_model takes a spec or a checkpoint path, not a {type(spec).__name__}: a model "
            "in memory goes to evaluate / diagnose / predict as it is"
        )
    spec = expand_home_in_spec(str(spec))
    if is_foreign_spec(spec) and not Path(spec).is_file():
        trained = spec.startswith("hf:") or (
            spec.startswith("torchvision:") and spec.count(":") > 1
        )
        outputs = num_classes or (None if trained else untrained_classes)
        if cfg is None:
            model = load_foreign_model(spec, num_classes=outputs)
        else:
            model = _build(replace(cfg.model, name=spec), cfg, outputs)
        exported = Path(spec.removeprefix("hf:")) / "export.json"
        if spec.startswith("hf:") and exported.is_file():  # our export: its run's test clips
            clips = json.loads(exported.read_text()).get("clips", {})
            views = clips.get("test_views", {})
            model.eval_clip = EvalClip(
                clips.get("sampling", "segment"),
                clips.get("dense_stride", 8),
                clips.get("resize_short_side"),
                temporal_views=views.get("temporal", 1),
                spatial_crops=views.get("spatial_crops", 1),
                aggregation=views.get("aggregation", "logits"),
            )
        random_weights = describe_model(model).get("trained_with", "") is None
        if random_weights and is_main_process():  # torchvision without WEIGHTS; said once
            print(
                f"timematters: note: {spec} has random weights (torchvision's default when the "
                f"spec names none); {spec}:DEFAULT loads torchvision's own Kinetics-400 weights",
                file=sys.stderr,
            )
        return model.eval()
    if not Path(spec).is_file():
        last = Path(spec) / "checkpoints" / "last.pth"
        hint = f"; a run folder's checkpoint is {last}" if last.is_file() else ""
        if ".py:" in spec:  # ./models/mine.py:build, a file path where a module name goes
            hint = f"; {module_file_hint(spec)}"
        raise FileNotFoundError(
            f"{spec} is neither a checkpoint file nor a model spec (hf:DIR_OR_ID, "
            f"torchvision:NAME[:WEIGHTS], pkg.module:factory){hint}"
        )
    if cfg is None:
        state = load_checkpoint(spec)
        cfg = Config()  # a state dict that is no checkpoint of ours is named as such below
        saved = saved_config(state, spec)
        if "model" in state and saved is None:
            raise ValueError(f"{spec} holds no config: give the config its clips come from")
        if saved is not None:
            trained = {key: saved[key] for key in ("model", "data")}
            cfg = merge(cfg, trained, source=spec)
    model, _ = load_model_from_checkpoint(cfg, spec)
    outputs = getattr(model, "num_classes", None)
    if num_classes is not None and outputs is not None and num_classes != outputs:
        raise ValueError(
            f"{spec} has a trained classifier of {outputs} classes, not {num_classes}; to "
            "fine-tune it on other classes, start a run from it (train --init-from, or "
            "train(cfg, init_from=...))"
        )
    return model


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Where a model comes from and what it takes, for reports."""
    if hasattr(model, "describe"):
        return model.describe()
    mean, std = declared_normalisation(model)
    return {
        "family": type(model).__name__,
        "source": getattr(model, "source", ""),
        "num_frames": model.num_frames,
        "frame_size": model.grid[0] * model.patch_size,
        "token_frames": model.token_frames,
        "mean": list(mean),
        "std": list(std),
        "unsupported": {},
    }


def class_names_of(model: nn.Module, num_classes: int | None = None) -> list[str]:
    """The model's ``class_names``, or "0".."K-1" when it names none (K: ``num_classes``, else
    the model's own ``num_classes``)."""
    names = getattr(model, "class_names", None)
    if names:
        return list(names)
    count = getattr(model, "num_classes", 0) if num_classes is None else num_classes
    return [str(k) for k in range(count)]


def _misfit(model: nn.Module, given: dict[str, torch.Tensor], shown: int = 3) -> str:
    """How the weights ``given`` differ from ``model``'s, in one line: the keys missing, unexpected
    and of another shape, counted, the first ``shown`` of each named."""
    missing, unexpected, mismatched = key_differences(model.state_dict(), given)
    groups = {
        "missing": missing,
        "unexpected": unexpected,
        "of another shape": [
            f"{key} {list(theirs)}, the model's {list(ours)}"
            for key, (theirs, ours) in mismatched.items()
        ],
    }
    return "; ".join(
        f"{counted(len(keys), 'key')} {what} ({', '.join(keys[:shown])}"
        + (", ...)" if len(keys) > shown else ")")
        for what, keys in groups.items()
        if keys
    )


def load_model_from_checkpoint(cfg: Config, path: str | Path) -> tuple[nn.Module, list[str]]:
    """The backbone saved in a timematters checkpoint, in eval mode, and its class names (empty
    when the checkpoint does not name them).

    The architecture comes from the checkpoint's own saved config when it has one (so checkpoints
    of different backbones can be compared on one dataset), and for a foreign model from the
    architecture it recorded (no original folder, weights file or download needed); clip length
    and frame size from ``cfg``, which must be the ones it was trained on.
    """
    state = load_checkpoint(path)
    if "model" not in state:
        raise ValueError(
            f"{path} is not a timematters checkpoint (no 'model' entry); a state dict of a "
            "torchvision model is --model torchvision:NAME:FILE, a backbone's weights go in "
            "model.pretrained"
        )
    model_cfg, saved = cfg.model, saved_config(state, path)
    if saved is not None:
        model_cfg = merge(ModelConfig(), saved["model"], source=str(path))
        _check_trained_clips(path, saved, model_cfg, cfg)
    classes = list(state.get("classes") or [])
    num_classes = model_cfg.num_classes or len(classes)
    model = _build(model_cfg, cfg, num_classes, architecture=state.get("architecture"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # torch's message is a paragraph: one line, the first keys
        why = _misfit(model, state["model"]) or str(error).strip().splitlines()[0]
        raise ValueError(f"{path} does not fit {model_cfg.name}: {why}") from None
    model.class_names = classes or None
    model.source = str(path)
    if saved is not None:
        # How its run made test clips: predict makes them so.
        model.eval_clip = EvalClip.of(saved["data"], saved.get("eval", {}))
    if saved is not None and not is_foreign_spec(model_cfg.name):
        # The normalisation it learnt with; cfg's clips (told in _build) are converted to it. A
        # foreign model (an adapter, a user's module) keeps its own, which its clips were
        # converted to in training.
        trained = saved["data"]
        model.mean = tuple(trained.get("mean", DEFAULT_INPUT[0]))
        model.std = tuple(trained.get("std", DEFAULT_INPUT[1]))
    return model.eval(), classes


def _check_trained_clips(
    path: str | Path, trained: dict, model_cfg: ModelConfig, cfg: Config
) -> None:
    """Refuse clips of another length, or (our backbones: their embeddings are sized by it)
    another frame size, than the checkpoint's, naming the override that fits it."""
    if model_cfg.num_frames != cfg.model.num_frames:
        raise ValueError(
            f"{path} was trained on {model_cfg.num_frames}-frame clips but the config makes "
            f"{cfg.model.num_frames}-frame clips (set model.num_frames={model_cfg.num_frames})"
        )
    size = trained.get("data", {}).get("crop_size")
    if not is_foreign_spec(model_cfg.name) and size and size != cfg.data.crop_size:
        raise ValueError(
            f"{path} was trained on {size}x{size} frames but the config makes "
            f"{cfg.data.crop_size}x{cfg.data.crop_size} frames (set data.crop_size={size})"
        )


def in_model_classes(cfg: Config, split: str, model: nn.Module, dataset: Dataset) -> Dataset:
    """``dataset``, or the same video list read with the model's classes when the model names
    them, the list's labels are among those names (or are indices) and no ``data.class_list``
    fixes the classes: a Kinetics-400 model scored on a few Kinetics clips labelled by name.
    Its logit k is then compared with class k, and the argmax stays over all its classes.
    A zero-shot video-text model is given the dataset's classes (``model.prompt``)."""
    if getattr(model, "zero_shot", False):  # a video-text model scores the data's own classes
        model.set_class_names(list(dataset.classes), prompt=cfg.model.prompt)
        return dataset
    names = list(getattr(model, "class_names", None) or [])
    labels = list(dataset.classes)
    if cfg.data.dataset != "videolist" or cfg.data.class_list or not names or labels == names:
        return dataset
    indices = all(label.isdigit() for label in labels) and len(labels) <= len(names)
    if not (set(labels) <= set(names) or indices):
        return dataset
    return build_dataset(cfg, split, classes=names)


def check_classes(model: nn.Module, dataset: list[str], where: str | Path) -> None:
    """Refuse to score a model on a dataset whose classes differ from the ones it was trained on,
    in set or in order (its logit k would be compared with another class's label), or whose
    number of classes is not its number of outputs."""
    trained = getattr(model, "class_names", None)
    outputs = getattr(model, "num_classes", None)
    if not trained:
        if outputs and outputs != len(dataset):
            raise ValueError(
                f"{where} has {outputs} outputs but the dataset has {len(dataset)} classes; "
                "give a dataset of its classes (for a video list: data.class_list)"
            )
        # Nothing to check the order against: said, as a video list's classes are sorted names.
        shown = ", ".join(dataset[:3]) + (", ..." if len(dataset) > 3 else "")
        logging.getLogger(__name__).warning(
            f"{where} names no classes: its output k is scored as the data's class k ({shown}); "
            "if it was trained in another order, give it a `classes` attribute (a video list: "
            "data.class_list)"
        )
        return
    if list(trained) == list(dataset):
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
        f"{where} was trained on {detail}; its scores would be wrong. Give the dataset the "
        "checkpoint's classes in its order (for a video list: data.class_list, one name per "
        "line; for SSv2 or Jester, the run's data.subset)"
    )


# A foreign spec's name: ``validate`` leaves its model to be checked when it is loaded.
_GIVEN_MODEL = "torchvision:given_model"


def validate_for_given_model(cfg: Config) -> Config:
    """``validate`` what concerns the data and the evaluation, for a model that a spec or a
    checkpoint gives (eval, diagnose): the config's own model (``model.name``,
    ``model.kwargs``) and training losses are not the one scored, so they are not checked; the
    clips (``model.num_frames``, ``data.crop_size``) are. Returns ``cfg`` unchanged."""
    loss = cfg.loss
    untrained = replace(
        loss,
        order=replace(loss.order, weight=0.0),
        debias=replace(loss.debias, weight=0.0),
        flow=replace(loss.flow, weight=0.0),
    )
    validate(replace(cfg, model=replace(cfg.model, name=_GIVEN_MODEL, kwargs={}), loss=untrained))
    return cfg


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path) -> EvalResult | BackgroundsResult:
    """The evaluation of a model (a checkpoint or any spec) on the config's evaluation split:
    original / shuffled per subset, or on ImageNet-9 the Backgrounds Challenge (Table 4)."""
    validate_for_given_model(cfg)
    if cfg.data.dataset == "imagenet9":
        return evaluate_backgrounds_checkpoint(cfg, checkpoint)
    info = setup_distributed(cfg.train.device)
    try:
        test_set = build_dataset(cfg, cfg.eval.split)
        model = load_model(checkpoint, cfg, untrained_classes=len(test_set.classes))
        test_set = in_model_classes(cfg, cfg.eval.split, model, test_set)
        check_classes(model, test_set.classes, checkpoint)
        loader = build_eval_loader(cfg, test_set, rank=info.rank, world_size=info.world_size)
        with clips_normalised({str(checkpoint): model}, cfg.data.mean, cfg.data.std):
            return evaluate(
                model.to(info.device),
                loader,
                classes=model.class_names or test_set.classes,
                subsets=getattr(test_set, "subsets", {}),
                settings=cfg.eval,
                device=info.device,
                autocast_dtype=autocast_dtype(cfg.train.precision, info.device),
                progress=cfg.train.progress and info.is_main,
            )
    finally:
        cleanup_distributed()
