"""Experiment configuration: nested dataclasses are the single source of defaults.

YAML presets and command-line ``key=value`` overrides (dotted, e.g. ``loss.flow.weight=0``) are
merged on top; an unknown key or a bad value fails with a message naming the valid ones. Presets
ship inside the package (``timematters/configs/``): a config argument is a file path first, then a
preset name such as ``synthetic/time``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class ModelConfig:
    name: str = "timesformer_base_patch16_224"
    num_classes: int = 0  # 0: taken from the dataset
    num_frames: int = 8  # the clip length everywhere: sampling, model, losses
    drop_path_rate: float | None = None  # None: the variant's default
    # A weights file (timm ViT, official, Hugging Face or ours), or one on the Hugging Face hub:
    # timm:NAME (timm's weights of NAME), hf-hub:REPO[:FILE]; fetched once into the hub's cache.
    pretrained: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)  # other backbone keyword arguments
    # Activation checkpointing per block: block activations recomputed in the backward pass,
    # trading a second forward of each block for memory (not in the release).
    grad_checkpointing: bool = False
    # A zero-shot video-text model (hf: X-CLIP) scores each class by its name as text, put
    # into this template ("a video of {}" say); "{}": the name alone.
    prompt: str = "{}"


@dataclass
class CELossConfig:
    smoothing: float = 0.2


@dataclass
class OrderLossConfig:
    weight: float = 1.0
    smoothing: float = 0.2
    # time: frames predict their index (Eq. 6-7); space: patch tokens predict theirs (images, Eq. 16).
    axis: Literal["time", "space"] = "time"


@dataclass
class DebiasLossConfig:
    weight: float = 1.0
    shuffle: Literal["per_batch", "per_sample"] = "per_batch"
    # uniform_ce: -(1/K) sum_c log p_c as released; kl: KL(U || p) = uniform_ce - log K (Eq. 8).
    form: Literal["uniform_ce", "kl"] = "uniform_ce"
    # time: shuffle frames (Eq. 8); space: shuffle the patches of each image (Eq. 17).
    axis: Literal["time", "space"] = "time"


@dataclass
class FlowLossConfig:
    weight: float = 1.0
    smoothing: float = 0.2


@dataclass
class LossConfig:
    ce: CELossConfig = field(default_factory=CELossConfig)
    order: OrderLossConfig = field(default_factory=OrderLossConfig)
    debias: DebiasLossConfig = field(default_factory=DebiasLossConfig)
    flow: FlowLossConfig = field(default_factory=FlowLossConfig)


@dataclass(frozen=True)
class FarnebackParams:
    """``cv2.calcOpticalFlowFarneback`` parameters; the defaults are the released ones."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    gaussian_window: bool = False  # cv2.OPTFLOW_FARNEBACK_GAUSSIAN; the released code uses a box


@dataclass
class FlowConfig:
    """How flow labels are made (paper Eq. 9-10); defaults are the released conventions."""

    backend: Literal["opencv", "torch"] = "opencv"
    threshold: Literal["relative", "absolute"] = "relative"
    relative_fraction: float = 0.01
    absolute_tau: float = 0.5  # pixels, for threshold=absolute
    farneback: FarnebackParams = field(default_factory=FarnebackParams)


@dataclass
class SyntheticConfig:
    """The built-in temporal benchmark (data/synthetic.py); frames are data.crop_size pixels."""

    num_train: int = 1200
    num_test: int = 600
    spurious_rate: float = 0.5  # share of training clips shown with their class's own background
    seed: int = 0
    object_contrast: float = 0.3  # depth of the objects' texture: 0 flat, 1 the full palette
    # Keep each clip and its flow labels once made (98 KB per 8-frame 64² clip): the clips are
    # the same every epoch, so rendering them and computing their labels once is enough.
    cache: bool = True


@dataclass
class ImageNet9Config:
    """ImageNet-9 / Backgrounds Challenge folders under data.root (data/imagenet9.py)."""

    train_dir: str = "original/train"  # training images: <root>/<train_dir>/<NN_class>/*
    test_variation: str = "original"  # the test split: <root>/<test_variation>/val/<NN_class>/*
    # The variations of the Table 4 evaluation; BG-Gap = mixed_same - mixed_rand.
    variations: tuple[str, ...] = ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next")
    min_crop_scale: float = 0.08  # RandomResizedCrop's smallest area fraction (DeiT)


@dataclass
class DataConfig:
    dataset: Literal[
        "synthetic",
        "ssv2",
        "kinetics",
        "diving48",
        "ucf101",
        "hmdb51",
        "jester",
        "ssv1",
        "videolist",
        "imagenet9",
    ] = "ssv2"
    root: str = ""  # folder holding the videos
    # The annotation folder (SSv2, Kinetics, Diving48, UCF101, HMDB51, Jester, SSv1) or list file
    # (videolist).
    annotations: str = ""
    fold: int = 1  # UCF101 / HMDB51: which of the three official train/test splits
    val_annotations: str = ""  # videolist: the evaluation list file
    class_list: str = ""  # videolist: optional file with one class name per line
    subset: Literal["all", "temporal", "static"] = "all"  # SSv2 subsets (paper Appendix A)
    # A subsets file (YAML/JSON: subset name -> class names or indices; "pairs": time-reversed
    # class pairs) that names the subsets every table reports; "" keeps the dataset's own.
    subsets: str = ""
    sampling: Literal["segment", "dense"] = "segment"
    dense_stride: int = 8
    crop_size: int = 224  # the model's input size too
    train_short_side: tuple[int, int] = (256, 320)
    eval_short_side: int = 224
    # RandAugment: ops per frame and magnitude on timm's 0..10 scale (the released m20 is clipped
    # to 10), the same on every frame. timm: timm's RandAugment, as released (each op with chance
    # 0.5, its "increasing" op set); torchvision: faster, and not the same ops (docs/REFERENCE.md).
    randaugment_ops: int = 2
    randaugment_magnitude: int = 10
    randaugment_backend: Literal["timm", "torchvision"] = "timm"
    randaugment_magnitude_std: float = 0.0  # timm's mstd (DeiT's 0.5); 0 for the released m20
    hflip: bool = False  # SSv2 has left/right class pairs: never flip it
    random_erase: float = 0.0  # chance of one erased box per clip, the same on every frame (0: off)
    # Repeated augmentation (VideoMAE, PySlowFast's NUM_SAMPLE; not in the paper): each training
    # video decoded once and augmented this many times, as that many clips of the step (a step
    # then holds train.batch_size x this many clips). 1: off (released).
    repeated_augmentation: int = 1
    # Mixup / CutMix of the training batch (DeiT / VideoMAE recipes; not in the paper): each a
    # Beta distribution's alpha, 0 = off (released). CutMix boxes follow the model's patch grid.
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0  # the chance that a batch is mixed
    mix_switch_prob: float = 0.5  # with both on: the chance that a mixed batch is cut, not blended
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    test_temporal_views: int = 1
    test_spatial_crops: int = 3
    # pyav / torchcodec: video files; frames: each video a folder of frame images.
    decoder: Literal["pyav", "torchcodec", "frames"] = "pyav"
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    max_bad_fraction: float = 0.01
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    imagenet9: ImageNet9Config = field(default_factory=ImageNet9Config)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    amsgrad: bool = True
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = (20, 30)  # epochs, for schedule=step
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # for schedule=cosine
    clip_grad: float = 0.0  # 0: no clipping (released)
    # Layer-wise lr decay (BEiT / VideoMAE fine-tuning; not in the paper): block i of L trains at
    # lr * layer_decay ** (L - i), the embeddings at ** (L + 1), the heads at lr. 1: off (released).
    layer_decay: float = 1.0
    # Weight decay on the class token and the position / time embeddings too, as on every other
    # >= 2-D parameter (released); false spares them, as DeiT / timm's image recipes do.
    decay_embeddings: bool = True
    # AdamW's fused kernel (one launch for all parameters): None uses it on CUDA, where it is
    # fastest, and torch's default elsewhere; the same update up to rounding.
    fused: bool | None = None


@dataclass
class TrainConfig:
    epochs: int = 35
    batch_size: int = 64  # global, over all processes and accumulation steps
    accumulation: int = 1
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: str = "auto"
    seed: int = 0
    max_nonfinite_steps: int = 10
    max_steps: int = 0  # 0: no limit; >0 stops early (smoke runs, benchmarks)
    # torch.compile of the training step's model (backbone + TIME losses); off until it pays on
    # the run's device (benchmarks/train_step.py measures it). Evaluation runs uncompiled.
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile's backend ("aot_eager": no code generation)
    log_every: int = 10
    eval_every_epochs: int = 1  # 0: evaluate only at the end
    save_every_steps: int = 0  # 0: checkpoint at the end of each epoch only
    out: str = "runs/train"
    tensorboard: bool = True  # when the tensorboard package is installed (the run summary says)
    wandb: bool = False  # Weights & Biases (extra [wandb]); WANDB_MODE=offline is honoured
    wandb_project: str = "timematters"
    progress: bool = True


# Temporal perturbations to test (the paper's: shuffle): shuffle, reverse, freeze (the middle
# frame repeated), local (neighbours swapped), freeze_each (each frame in turn, averaged).
Perturbation = Literal["shuffle", "reverse", "freeze", "local", "freeze_each"]
PERTURBATION_NAMES: tuple[str, ...] = typing.get_args(Perturbation)


def check_perturbations(names: Sequence[str], *, where: str) -> None:
    """``names`` all perturbations evaluation knows, or an error naming ``where`` they came from."""
    unknown = [name for name in names if name not in PERTURBATION_NAMES]
    if unknown:
        raise ValueError(
            f"{where}: unknown {', '.join(unknown)}; choose from {', '.join(PERTURBATION_NAMES)}"
        )


@dataclass
class EvalConfig:
    split: Literal["val", "test"] = "val"  # SSv2's "validation" list is the paper's test set
    # Checked when the config is read: a typo fails before training, not at its first evaluation.
    perturbations: tuple[Perturbation, ...] = ("shuffle",)
    freeze_frame: int | None = None  # the frame "freeze" repeats: None the middle one, -1 the last
    shuffle: Literal["per_batch", "per_sample"] = "per_sample"
    # Over a clip's test views: "logits" averages them (the ranking of the released sum;
    # confidences of one view's scale), "softmax" averages the views' probabilities.
    aggregation: Literal["logits", "softmax"] = "logits"
    batch_size: int = 32
    seed: int = 0
    bootstrap_samples: int = 1000  # clip resamples behind every 95% interval (0: none)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    pass


PRESETS = Path(__file__).parent / "configs"
# The datasets read from their official annotation files: data.dataset -> what data.annotations
# names (build_dataset's messages say it too).
OFFICIAL_DATASETS = {
    "ssv2": "the folder of labels.json, train.json and validation.json",
    "kinetics": "the folder of the CSVs, or a CSV",
    "diving48": "the folder of Diving48_V2_{train,test}.json and Diving48_vocab.json",
    "ucf101": "the ucfTrainTestlist folder (classInd.txt, trainlist01.txt, ...)",
    "hmdb51": "the testTrainMulti_7030_splits folder (<class>_test_split1.txt, ...)",
    "jester": "the folder of jester-v1-labels.csv, -train.csv and -validation.csv",
    "ssv1": "the folder of something-something-v1-labels.csv, -train.csv and -validation.csv",
}


def list_presets() -> list[str]:
    """The packaged presets, as names ``find_config`` accepts (``synthetic/time``, ...)."""
    return sorted(
        p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml")
    )


def find_config(name: str | Path) -> Path:
    """A config file: ``name`` as a path if it is a file, else the packaged preset ``name``
    (with or without ``.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / path.with_suffix(".yaml") if path.suffix != ".yaml" else PRESETS / path
    if not path.is_absolute() and preset.is_file():
        return preset
    raise ConfigError(
        f"config file not found: {name} is neither a file nor a preset "
        f"(`timematters configs list` names them)"
    )


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults <- YAML file (a path or a preset name) <- ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        path = find_config(path)
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
            ) from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        cfg = merge(cfg, data, source=str(path))
    return _expand_home(apply_overrides(cfg, overrides))


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping: PyYAML keeps the last
    silently, so a file with two ``loss:`` blocks lost the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        marks: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            # "<<: *defaults" merges keys that this mapping may then override: not a repeat.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key, mark = self.construct_object(key_node), key_node.start_mark
            if key in marks:
                first = marks[key]
                where = (
                    f"lines {first.line + 1} and {mark.line + 1}"
                    if first.line != mark.line
                    else f"line {mark.line + 1}, columns {first.column + 1} and {mark.column + 1}"
                )
                raise yaml.constructor.ConstructorError(
                    problem=f"the key {key!r} is given twice ({where}); YAML would keep only "
                    "the last: merge them into one"
                )
            marks[key] = mark
        return super().construct_mapping(node, deep=deep)


# The fields that name files or folders. "~" is the shell's, and neither YAML nor the shell
# (in train.out=~/x) expands it here: Path would make a folder named "~".
_PATH_KEYS = (
    "train.out",
    "data.root",
    "data.annotations",
    "data.val_annotations",
    "data.class_list",
    "data.subsets",
    "model.pretrained",
)


def _expand_home(cfg: Config) -> Config:
    for key in _PATH_KEYS:
        section, name = key.split(".")
        part = getattr(cfg, section)
        setattr(part, name, os.path.expanduser(getattr(part, name)))
    cfg.model.name = expand_home_in_spec(cfg.model.name)
    return cfg


def expand_home_in_spec(spec: str) -> str:
    """``spec`` with a leading ``~`` expanded in its path: a checkpoint, ``hf:~/folder``,
    ``torchvision:name:~/weights.pth``. The shell expands none of them inside a ``key=value``
    word or after ``hf:``; no hub id or module name starts with ``~``."""
    if spec.startswith("hf:"):
        return "hf:" + os.path.expanduser(spec.removeprefix("hf:"))
    if spec.startswith("torchvision:"):
        name, colon, weights = spec.removeprefix("torchvision:").partition(":")
        return f"torchvision:{name}{colon}{os.path.expanduser(weights)}"
    return os.path.expanduser(spec)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what, and where (1-based line and column)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem}{where}"


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(
                f"override {item!r}: not a YAML value: {_yaml_problem(error)}"
            ) from None
        _refuse_yaml11_numbers(item, raw, value)
        path, value = _into_mapping(cfg, key.strip().split("."), value)
        nested: dict[str, Any] = {}
        node = nested
        *parents, leaf = path
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        cfg = merge(cfg, nested, source="command line")
    return cfg


def _into_mapping(cfg: Config, path: list[str], value: Any) -> tuple[list[str], Any]:
    """An override of a key inside a mapping field (``model.kwargs.depth=2``) as the field's path
    and its mapping with that key set: it adds to a preset's kwargs, where it replaced them (the
    Appendix D preset's readd_time_embed was dropped without a word). A whole mapping given
    (``model.kwargs={}``) still replaces it."""
    obj: Any = cfg
    for depth, part in enumerate(path[:-1]):
        obj = getattr(obj, part, None) if dataclasses.is_dataclass(obj) else None
        if isinstance(obj, dict):
            updated = copy.deepcopy(obj)
            node = updated
            for key in path[depth + 1 : -1]:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[path[-1]] = value
            return path[: depth + 1], updated
    return path, value


# YAML 1.1 reads a leading 0 as octal (010 is 8) and colons as base 60 (1:30 is 90).
_YAML11_NUMBER = re.compile(r"[-+]?(0[0-7_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)")


def _refuse_yaml11_numbers(item: str, raw: str, value: Any) -> None:
    """An override YAML reads as another number than it shows, refused: train.epochs=010 trained
    8 epochs, optim.lr=1:30 a rate of 90."""
    text = raw.strip()
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and _YAML11_NUMBER.fullmatch(text):
        raise ConfigError(
            f"override {item!r}: YAML reads {text} as {value} (a leading 0 is octal, colons base "
            f"60): write the number without them, or quote it ('{text}') for a string"
        )


def merge(obj: Any, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """A copy of dataclass ``obj`` with the values of ``data`` converted and checked."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key {dotted!r}; valid keys here: {', '.join(fields)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted!r} is a section; give it a mapping")
            changes[key] = merge(current, value, source, prefix=f"{dotted}.")
        else:
            changes[key] = _convert(value, hints[key], dotted, source)
    return dataclasses.replace(obj, **changes)


def _convert(value: Any, hint: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if value is None and not optional:
        raise ConfigError(f"{source}: {key} cannot be null; give a value, or leave the key out")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(map(str, args))
            raise ConfigError(f"{source}: {key}={value!r} is not one of: {choices}")
        return value
    if optional:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _convert(value, inner, key, source)
        except ConfigError as error:  # "none" is a string in YAML
            raise ConfigError(f"{error}; null (written null or ~) leaves it unset") from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} expects a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key} expects {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, key, source) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} expects a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} expects true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} expects an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, dict) and len(value) == 1:
            raise ConfigError(_colon_problem(value, key, source))
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} expects a string, got {value!r}")
        return value
    return value


def _colon_problem(value: dict[Any, Any], key: str, source: str) -> str:
    """YAML reads ``hf:`` (a colon at the end) and ``hf: x`` (a colon and a space) as a mapping."""
    ((head, tail),) = value.items()
    if tail is None:
        return (
            f"{source}: {key}={head}: ends in ':', which YAML reads as a mapping; give what "
            f"follows the colon (e.g. {key}={head}:FOLDER_OR_NAME) or quote the value"
        )
    return (
        f"{source}: {key}='{head}: {tail}' has a space after ':', which YAML reads as a mapping; "
        f"leave the space out ({key}={head}:{tail}) or quote the value"
    )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain YAML/JSON-friendly dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    from timematters.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def backbone_kwargs(cfg: Config, num_classes: int) -> dict[str, Any]:
    """The keyword arguments of ``create_backbone(cfg.model.name, ...)``: ``model.kwargs`` and
    the sizes every section agrees on (frames, frame size, classes, drop path)."""
    kwargs = {
        **cfg.model.kwargs,
        "num_classes": num_classes,
        "num_frames": cfg.model.num_frames,
        "img_size": cfg.data.crop_size,
    }
    if cfg.model.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    return kwargs


def validate(cfg: Config) -> Config:
    """Check the rules that tie sections together; raise ``ConfigError`` naming key and fix.

    Types and choices are checked when a field is read; here are the ranges (every float finite,
    counts and rates within bounds) and the rules that need two fields: the model against its
    data, the losses against the model, dataset options against the dataset. Returns ``cfg``
    unchanged.
    """
    from timematters.backbones import (
        backbone_arguments,
        backbone_parameters,
        create_backbone,
        list_backbones,
    )

    model, data, loss = cfg.model, cfg.data, cfg.loss
    _check_finite(cfg)  # first: NaN passes every range check below (nan < 0 is False)
    for key, value, least in _lower_bounds(cfg):
        if value < least:
            raise ConfigError(f"{key} must be at least {least}, got {value}")
    for key, value in _fractions(cfg).items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")
    _validate_numbers(cfg)
    _validate_schedule(cfg.optim)
    if not 0 < cfg.flow.farneback.pyr_scale < 1:
        raise ConfigError(
            f"flow.farneback.pyr_scale must be in (0, 1) (each pyramid level's scale; 0.5 halves "
            f"the frames), got {cfg.flow.farneback.pyr_scale}"
        )
    if not cfg.train.out.strip():
        raise ConfigError("train.out is empty: name the run folder (e.g. train.out=runs/my_run)")
    validate_device(cfg.train.device, given=f"train.device={cfg.train.device!r}")
    if cfg.train.compile:
        _validate_compile_backend(cfg.train.compile_backend)
    if data.subsets and not Path(data.subsets).is_file():
        where = "" if Path(data.subsets).is_absolute() else f" in {Path.cwd()}"
        raise ConfigError(
            f"data.subsets={data.subsets}: no such file{where}; give a YAML or JSON file of "
            "subset name -> classes, or data.subsets='' for the dataset's own"
        )
    from timematters.backbones.adapters import is_foreign_spec

    if model.prompt.count("{}") != 1:
        raise ConfigError(
            f"model.prompt={model.prompt!r} must hold one {{}} for the class name, e.g. "
            "model.prompt='a video of {}'"
        )
    foreign = is_foreign_spec(model.name)
    if foreign and model.kwargs:
        raise ConfigError(
            f"model.kwargs apply to registered backbones, not to {model.name}; remove them"
        )
    if not foreign and model.name not in list_backbones():
        raise ConfigError(
            f"model.name={model.name!r} is not a registered backbone; choose one of: "
            f"{', '.join(list_backbones())}, or a model spec (hf:DIR_OR_ID, "
            "torchvision:NAME[:WEIGHTS], pkg.module:factory)"
        )
    valid = [] if foreign else backbone_arguments(model.name)
    unknown = sorted(set(model.kwargs) - set(valid))
    if unknown:
        # {depth:2} is YAML for the key "depth:2": the flow mapping needs a space after the colon.
        spacing = (
            " (YAML needs a space after ':', as in {depth: 2})" if ":" in "".join(unknown) else ""
        )
        raise ConfigError(
            f"model.kwargs: {', '.join(unknown)} not arguments of {model.name}; valid: "
            f"{', '.join(valid)}{spacing}"
        )
    reserved = sorted(set(model.kwargs) & {"num_classes", "num_frames", "img_size"})
    if reserved:
        keys = {"num_classes": "model.num_classes", "num_frames": "model.num_frames"}
        where = ", ".join(keys.get(k, "data.crop_size") for k in reserved)
        raise ConfigError(f"model.kwargs: set {', '.join(reserved)} through {where} instead")
    _validate_backbone_kwargs(model.kwargs, {} if foreign else backbone_parameters(model.name))

    if data.dataset == "synthetic" and cfg.model.num_frames < 2:
        raise ConfigError(
            f"the synthetic benchmark's clips are motions, of 2 frames or more: model.num_frames="
            f"{cfg.model.num_frames} cannot show one (images: the imagenet9 presets)"
        )
    if data.dataset == "imagenet9":
        _validate_images(cfg)
    if data.repeated_augmentation > 1 and data.dataset in ("synthetic", "imagenet9"):
        raise ConfigError(
            f"data.repeated_augmentation applies to decoded videos, "
            f"not to data.dataset={data.dataset}: set data.repeated_augmentation=1"
        )
    if not 0 <= data.randaugment_magnitude <= 10:
        raise ConfigError(
            f"data.randaugment_magnitude={data.randaugment_magnitude}: give 0 to 10 (timm's "
            "scale; the released m20 is clipped to 10)"
        )
    if data.randaugment_magnitude_std < 0:
        raise ConfigError(
            f"data.randaugment_magnitude_std={data.randaugment_magnitude_std}: give 0 or more"
        )
    if data.randaugment_magnitude_std and data.randaugment_backend == "torchvision":
        raise ConfigError(
            "data.randaugment_magnitude_std: torchvision's RandAugment has no magnitude noise; "
            "set data.randaugment_backend=timm or data.randaugment_magnitude_std=0"
        )
    if data.subset != "all" and data.dataset != "ssv2":
        raise ConfigError(f"data.subset={data.subset!r} applies to ssv2 only")
    if data.dataset in OFFICIAL_DATASETS and not (data.root and data.annotations):
        raise ConfigError(
            f"the {data.dataset} dataset needs data.root (its videos) and data.annotations "
            f"({OFFICIAL_DATASETS[data.dataset]})"
        )
    if data.fold != 1 and data.dataset not in ("ucf101", "hmdb51"):
        raise ConfigError(f"data.fold={data.fold} applies to ucf101 and hmdb51 only")
    if data.fold not in (1, 2, 3):
        raise ConfigError(f"data.fold={data.fold}: UCF101 and HMDB51 have the folds 1, 2 and 3")
    if data.dataset == "imagenet9" and not data.root:
        raise ConfigError(
            "the imagenet9 dataset needs data.root (the Backgrounds Challenge folder)"
        )
    if data.dataset in ("ssv2", "ssv1", "jester") and data.hflip:
        import logging

        logging.getLogger(__name__).warning(
            f"data.hflip is on for {data.dataset}, whose left/right class pairs flipping confuses"
        )

    if not cfg.eval.perturbations:
        raise ConfigError(
            f"eval.perturbations is empty: give one or more of {', '.join(PERTURBATION_NAMES)} "
            "(the paper's: [shuffle])"
        )
    frame, T = cfg.eval.freeze_frame, model.num_frames
    if frame is not None and not -T <= frame < T:
        raise ConfigError(
            f"eval.freeze_frame={frame} is not a frame of the {T}-frame clips (model.num_frames): "
            f"give -{T} to {T - 1}, or null for the middle frame"
        )

    if foreign:  # its sizes are known once it is loaded (engine/train.py checks them there)
        return cfg
    try:
        with _meta_device():
            backbone = create_backbone(model.name, **backbone_kwargs(cfg, num_classes=1))
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, RuntimeError) as error:
        given = f" with model.kwargs={model.kwargs}" if model.kwargs else ""
        raise ConfigError(
            f"model {model.name} cannot be built from this config{given}: {error}"
        ) from None
    if loss.flow.weight != 0 and backbone.token_frames < 2:
        raise ConfigError(
            f"the flow loss needs two token frames or more; {model.name} makes "
            f"{backbone.token_frames} of {backbone.num_frames} frames: use smaller tubelets "
            "(model.kwargs.tubelet_size) or set loss.flow.weight=0"
        )
    return cfg


def _lower_bounds(cfg: Config) -> list[tuple[str, int | float, int]]:
    """(key, value, smallest allowed) of the sizes and counts that must be positive."""
    train, farneback = cfg.train, cfg.flow.farneback
    return [
        ("model.num_frames", cfg.model.num_frames, 1),
        ("train.batch_size", train.batch_size, 1),
        ("train.accumulation", train.accumulation, 1),
        ("train.log_every", train.log_every, 1),
        ("train.epochs", train.epochs, 0),
        ("train.max_steps", train.max_steps, 0),
        ("train.save_every_steps", train.save_every_steps, 0),
        ("train.eval_every_epochs", train.eval_every_epochs, 0),
        ("train.max_nonfinite_steps", train.max_nonfinite_steps, 0),
        ("eval.batch_size", cfg.eval.batch_size, 1),
        ("data.num_workers", cfg.data.num_workers, 0),
        ("data.repeated_augmentation", cfg.data.repeated_augmentation, 1),
        ("data.crop_size", cfg.data.crop_size, 1),
        ("data.test_temporal_views", cfg.data.test_temporal_views, 1),
        ("data.test_spatial_crops", cfg.data.test_spatial_crops, 1),
        ("data.dense_stride", cfg.data.dense_stride, 1),
        ("data.randaugment_ops", cfg.data.randaugment_ops, 0),
        ("data.synthetic.num_train", cfg.data.synthetic.num_train, 1),
        ("data.synthetic.num_test", cfg.data.synthetic.num_test, 1),
        ("eval.bootstrap_samples", cfg.eval.bootstrap_samples, 0),
        ("flow.farneback.levels", farneback.levels, 0),  # 0: the frames alone, no pyramid
        # 1 is a window of one pixel, where OpenCV's box filter counts its first row twice and
        # the torch backend parts from it (about half the labels differ).
        ("flow.farneback.winsize", farneback.winsize, 2),
        ("flow.farneback.iterations", farneback.iterations, 1),  # 0: no flow, every label 0
        # A neighbourhood of 2 * poly_n + 1 pixels: OpenCV suggests 5 or 7 and both backends
        # agree on any other; at 0 OpenCV gives no flow and the torch backend fails.
        ("flow.farneback.poly_n", farneback.poly_n, 1),
        ("flow.farneback.poly_sigma", farneback.poly_sigma, 0),  # 0: poly_n * 0.3 (OpenCV's)
    ]


def _fractions(cfg: Config) -> dict[str, float]:
    """The shares and chances, each in [0, 1]."""
    data = cfg.data
    return {
        "data.max_bad_fraction": data.max_bad_fraction,
        "data.mix_prob": data.mix_prob,
        "data.mix_switch_prob": data.mix_switch_prob,
        "data.random_erase": data.random_erase,
        "data.synthetic.spurious_rate": data.synthetic.spurious_rate,
        "data.synthetic.object_contrast": data.synthetic.object_contrast,
        "flow.relative_fraction": cfg.flow.relative_fraction,
    }


def _check_finite(section: Any, prefix: str = "") -> None:
    """Every float field finite, in every section: an infinite lr trains a NaN model and a NaN
    clip_grad reads as no clipping. ``model.kwargs`` is the backbone's, checked when it is built."""
    for f in dataclasses.fields(section):
        key, value = f"{prefix}{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, prefix=f"{key}.")
        elif isinstance(value, tuple) and not all(map(_is_finite, value)):
            raise ConfigError(f"{key} must hold finite numbers, got {list(value)}")
        elif not _is_finite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")


def _is_finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def check_losses(loss: LossConfig) -> LossConfig:
    """The loss section as a config file's would be checked (each choice among its options,
    numbers as numbers, λ finite and at least 0, smoothing in [0, 1)): a ``LossConfig`` built in
    Python gets the same one-line errors. Returns it with its values converted."""
    loss = merge(LossConfig(), config_to_dict(loss), "the loss config", prefix="loss.")
    for name in ("order", "debias", "flow"):
        weight = getattr(loss, name).weight
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"loss.{name}.weight must be a number of at least 0, got {weight}")
    for name in ("ce", "order", "flow"):
        value = getattr(loss, name).smoothing
        if not 0 <= value < 1:
            raise ConfigError(
                f"loss.{name}.smoothing must be in [0, 1) (0: plain cross-entropy), got {value}"
            )
    return loss


def _validate_numbers(cfg: Config) -> None:
    """Weights, rates and scales that torch would take silently (a negative λ maximises its loss)
    or refuse only at the first step, without naming the key."""
    optim = cfg.optim
    check_losses(cfg.loss)
    non_negative = {
        "data.mixup": cfg.data.mixup,
        "data.cutmix": cfg.data.cutmix,
        "optim.weight_decay": optim.weight_decay,
        "optim.warmup_epochs": optim.warmup_epochs,
        "optim.min_lr": optim.min_lr,
        "optim.clip_grad": optim.clip_grad,
        "flow.absolute_tau": cfg.flow.absolute_tau,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be at least 0, got {value}")
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {optim.lr}")
    if not 0 < optim.layer_decay <= 1:
        raise ConfigError(
            f"optim.layer_decay must be in (0, 1] (1: off; VideoMAE's fine-tuning uses 0.75), "
            f"got {optim.layer_decay}"
        )
    if not all(0 <= beta < 1 for beta in optim.betas):
        raise ConfigError(f"optim.betas must be in [0, 1), got {list(optim.betas)}")
    if not all(s > 0 for s in cfg.data.std):
        raise ConfigError(
            f"data.std must be positive (clips are divided by it), got {cfg.data.std}"
        )
    scale = cfg.data.imagenet9.min_crop_scale
    if not 0 < scale <= 1:
        raise ConfigError(
            f"data.imagenet9.min_crop_scale must be in (0, 1] (the smallest share of the image "
            f"a training crop covers; DeiT's 0.08), got {scale}"
        )
    rate = cfg.model.drop_path_rate
    if rate is not None and not 0 <= rate < 1:
        raise ConfigError(
            f"model.drop_path_rate must be in [0, 1) (the chance a block is skipped), got {rate}"
        )


def _validate_schedule(optim: OptimConfig) -> None:
    """The lr schedule (engine/optim.py ``lr_at``) falls from optim.lr and never rises: a factor
    above 1 or a cosine floor above the lr is a typo far more often than a wish."""
    if not 0 < optim.gamma <= 1:
        raise ConfigError(
            f"optim.gamma must be in (0, 1] (the lr's factor at each of optim.milestones: 0.1 a "
            f"tenth, 1 constant), got {optim.gamma}"
        )
    milestones = list(optim.milestones)
    if milestones and (milestones[0] < 1 or milestones != sorted(set(milestones))):
        raise ConfigError(
            f"optim.milestones must be epochs of 1 or more in increasing order (e.g. [20, 30]), "
            f"got {milestones}"
        )
    if optim.schedule == "cosine" and optim.min_lr > optim.lr:
        raise ConfigError(
            f"optim.min_lr={optim.min_lr} is above optim.lr={optim.lr}: the cosine schedule would "
            "raise the lr; give an optim.min_lr of at most optim.lr"
        )


# Backbone arguments that torch takes silently (depth 0: a model of no blocks) or refuses with a
# traceback (num_heads 0, a negative mlp_ratio).
_POSITIVE_KWARGS = (
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "tubelet_size",
)
_RATE_KWARGS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "head_drop_rate")


def _validate_backbone_kwargs(
    kwargs: dict[str, Any], parameters: dict[str, inspect.Parameter]
) -> None:
    """``model.kwargs`` of the kinds of the backbone's defaults (a switch true or false: the string
    'fasle' would read as on; a size a finite number), and its sizes and rates in range."""
    for name, value in kwargs.items():
        default = parameters[name].default if name in parameters else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"model.kwargs.{name} expects true or false, got {value!r}")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(default, int | float) and not isinstance(default, bool) and not number:
            raise ConfigError(f"model.kwargs.{name} expects a number, got {value!r}")
        if not number:
            continue
        if not math.isfinite(value):
            raise ConfigError(f"model.kwargs.{name} must be a finite number, got {value}")
        if name in _POSITIVE_KWARGS and not value > 0:
            raise ConfigError(f"model.kwargs.{name} must be positive, got {value}")
        if name in _RATE_KWARGS and not 0 <= value < 1:
            raise ConfigError(f"model.kwargs.{name} must be in [0, 1), got {value}")


def _validate_compile_backend(name: str) -> None:
    """A torch.compile backend that exists: an unknown one fails only at the first step."""
    from torch._dynamo import list_backends

    if name not in list_backends(exclude_tags=()):  # debug ones too: aot_eager, eager
        choices = ", ".join([*list_backends(), "aot_eager", "eager"])
        raise ConfigError(
            f"train.compile_backend={name!r} is not a torch.compile backend here; choose one of: "
            f"{choices} (or train.compile=false)"
        )


def validate_device(name: str, *, given: str) -> None:
    """A device torch can use here (cpu, cuda[:N], mps, xpu[:N], ...); ``given`` is how the user
    wrote it, for the message."""
    import torch

    if name == "auto":
        return
    choices = "auto, cpu, cuda, cuda:N, mps or xpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{given} is not a device; use {choices}") from None
    # torch.cuda, torch.mps, torch.xpu, ... say whether their devices are here; torch.device
    # also takes names of no such module (meta, hpu without its plugin), which cannot train.
    backend = getattr(torch, device.type, None)
    if not hasattr(backend, "is_available"):
        raise ConfigError(f"{given}: timematters cannot run on {device.type}; use {choices}")
    kind = "CUDA" if device.type == "cuda" else device.type
    if not backend.is_available():
        raise ConfigError(f"{given} but {kind} is not available; use cpu or auto")
    count = backend.device_count()
    if device.index is not None and device.index >= count:
        last = f" to {device.type}:{count - 1}" if count > 1 else ""
        raise ConfigError(
            f"{given} but this machine has {count} {kind} device{'s' * (count != 1)}: "
            f"use {device.type}:0{last}, or auto"
        )


def _validate_images(cfg: Config) -> None:
    """Images are one-frame videos: the time-axis losses have nothing to act on."""
    if cfg.model.num_frames != 1:
        raise ConfigError(
            f"images are one-frame videos: set model.num_frames=1, not {cfg.model.num_frames}"
        )
    loss = cfg.loss
    if loss.flow.weight != 0:
        raise ConfigError(
            "the flow loss needs two frames or more: set loss.flow.weight=0 for images"
        )
    for name, part in (("order", loss.order), ("debias", loss.debias)):
        if part.weight != 0 and part.axis != "space":
            raise ConfigError(
                f"on images the {name} loss acts on patches: set loss.{name}.axis=space "
                f"(or loss.{name}.weight=0)"
            )


def _meta_device():
    import torch

    return torch.device("meta")
