"""``timematters export``: a trained model out of its checkpoint, in a form other tools load.

- **hf**: a Hugging Face ``transformers`` folder (``save_pretrained``): ``config.json`` naming the
  run's classes, ``model.safetensors``, and ``video_preprocessor_config.json`` with the frame
  size and normalisation the model was trained with. It loads with
  ``AutoModelForVideoClassification.from_pretrained(DIR)`` (its clips made by
  ``AutoVideoProcessor.from_pretrained(DIR)``, whose resize V-JEPA 2's replaces on loading: the
  card's lines set it back) and in every timematters command as ``hf:DIR``. For our TimeSformer
  (transformers has the same architecture; outputs equal to about 1e-6) and for a model trained
  from an ``hf:`` spec.
- **safetensors**: the network's own weights in ``model.safetensors`` (our backbone's, with the
  official / timm key names; the wrapped network's for a torchvision model or your module), and
  in ``export.json`` how to build the network they fit. Every model.

Both leave out what only training needs: the TIME heads (order, flow) and the optimizer state.
``export.json`` (written in both) records the classes, the clips (frames, frame size, layout,
normalisation on [0, 1] pixels) and the checkpoint it came from; ``README.md`` is a model card
(training, clips, the run's evaluation of this checkpoint when it made one, how to load it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from torch import nn

from timematters.backbones.adapters import is_foreign_spec
from timematters.backbones.adapters.base import Adapter
from timematters.backbones.adapters.hf import processor_normalisation, video_processor_class
from timematters.backbones.adapters.module import factory_call
from timematters.backbones.protocol import model_name
from timematters.backbones.timesformer import TimeSformer, rename_to_hf_timesformer
from timematters.backbones.vit import VisionTransformer
from timematters.config import Config, backbone_kwargs, merge
from timematters.data.sampling import EvalClip
from timematters.engine.checkpoint import load_checkpoint, saved_config
from timematters.engine.model import class_names_of, load_model_from_checkpoint
from timematters.engine.runs import OUTPUTS, RunFolderInUse, claim_folder

FORMATS = ("auto", "hf", "safetensors")


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    format: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the model of a timematters ``checkpoint`` to the folder ``out``; returns what
    ``export.json`` says. ``format``: hf, safetensors, or auto (hf where the model has a
    ``transformers`` form, safetensors otherwise)."""
    if format not in FORMATS:
        raise ValueError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out)
    if checkpoint.is_dir():
        load_checkpoint(checkpoint)  # refused, naming the run folder's checkpoint
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
    # Another command's output (a run: the checkpoint itself, its evaluation) is never replaced
    # by an export, --overwrite or not; an earlier export is, and --overwrite is for files of
    # those names from elsewhere (someone's model folder).
    claim = dict(kind="an export", overwrite=False, fix="choose another --out")
    claim_folder(out, **claim, remove=False)
    _refuse_foreign_files(out, overwrite=overwrite)
    state = load_checkpoint(checkpoint)
    saved = saved_config(state, checkpoint)
    if "model" not in state or saved is None:
        raise ValueError(
            f"{checkpoint} is not a timematters checkpoint (no 'model' and 'config' entries); "
            "export takes the checkpoints that train writes"
        )
    facts = {
        "step": state.get("step"),
        "epoch": state.get("epoch"),
        "final_eval_lines": state.get("final_eval_lines"),
        "init_from": state.get("init_from") or "",  # "" in checkpoints older than the key
        "best_top1": state.get("best_top1", -math.inf),
        "best_epoch": state.get("best_epoch", -1),
        "heads": sorted({key.split(".")[1] for key in state.get("objective", {})}),  # losses.NAME.
    }
    del state  # the weights are read again with the model: hold one copy at a time
    cfg = merge(Config(), {key: saved[key] for key in ("model", "data")}, source=str(checkpoint))
    model, _ = load_model_from_checkpoint(cfg, checkpoint)
    hf_reason = _no_hf_form(model)
    if format == "hf" and hf_reason:
        raise ValueError(f"--format hf: {hf_reason}; --format safetensors exports any model")
    chosen = "safetensors" if format == "safetensors" or hf_reason else "hf"
    if chosen == "hf" and importlib.util.find_spec("transformers") is None:
        if format == "hf":
            raise ImportError(
                "--format hf writes a transformers folder and needs the transformers package: "
                "pip install 'timematters[hf]', or --format safetensors"
            )
        print(  # auto: the form this installation can write
            "timematters: note: transformers is not installed (pip install 'timematters[hf]' "
            "for a transformers folder): exporting safetensors",
            file=sys.stderr,
        )
        chosen = "safetensors"

    claim_folder(out, **claim)  # the model is loaded: an earlier export can go
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "format": chosen,
        "checkpoint": str(checkpoint),
        "step": facts["step"],
        "model": cfg.model.name,
        "classes": class_names_of(model),
        "clips": _clips(model, cfg),
        # What only training needs: the TIME heads and the optimizer state.
        "left_out": [*(f"TIME head {name}" for name in facts["heads"]), "optimizer state"],
    }
    if chosen == "hf":
        info.update(_write_hf(model, cfg, out))
    else:
        info.update(_write_safetensors(model, cfg, out))
    info["files"] = sorted({*info["files"], "README.md", "export.json"})
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(model_card(info, saved, facts, checkpoint))
    return info


# The fine-tuning options a model card names when a run turned them on: (section, key, value when
# off, words for the value).
RECIPE_EXTRAS = (
    ("optim", "layer_decay", 1.0, "layer-wise lr decay {:g}"),
    ("data", "mixup", 0.0, "Mixup (α = {:g})"),
    ("data", "cutmix", 0.0, "CutMix (α = {:g})"),
    ("data", "random_erase", 0.0, "random erasing (p = {:g})"),
    ("data", "repeated_augmentation", 1, "repeated augmentation ({} clips a video)"),
)


def _recipe_extras(saved: dict[str, Any]) -> str:
    """The fine-tuning options a run turned on beyond the released recipe, in words ("" if none);
    a checkpoint older than an option lacks its key and had it off."""
    extras = []
    for section, key, off, words in RECIPE_EXTRAS:
        value = saved.get(section, {}).get(key, off)
        if value != off:
            extras.append(words.format(value))
    return ", ".join(extras)


def model_card(info: dict[str, Any], saved: dict[str, Any], facts: dict, checkpoint: Path) -> str:
    """The export's README.md (a Hugging Face model card): how the model was trained, the clips
    it takes, its evaluation when the checkpoint is the one its run evaluated last, how to load
    it."""
    from timematters import __version__

    weights = {name: saved["loss"][name].get("weight", 1.0) for name in ("order", "debias", "flow")}
    time_losses = [f"{name} (λ = {weight:g})" for name, weight in weights.items() if weight]
    losses = "cross-entropy" + (
        f" and TIME's {', '.join(time_losses)}" if time_losses else " only (no TIME loss)"
    )
    # --init-from's weights replace model.pretrained's, which a foreign model does not read.
    foreign = is_foreign_spec(saved["model"]["name"])
    pretrained = "" if foreign else saved["model"].get("pretrained") or ""
    start_from = facts["init_from"] or pretrained
    start = f", from {_weights_name(start_from)}" if start_from else ""
    clips = info["clips"]
    images = saved["data"].get("dataset") == "imagenet9"
    evaluation = _evaluation_of(facts, checkpoint, images=images)
    extras = _recipe_extras(saved)
    library = "library_name: transformers\n" if info["format"] == "hf" else ""
    lines = [
        "---",
        f"{library}tags:\n- {'image' if images else 'video'}-classification\n- timematters\n---",
        "",
        f"# {_display_name(info['model'])}, trained with timematters",
        "",
        f"Trained with timematters {__version__} on `{saved['data']['dataset']}` "
        f"({len(info['classes'])} classes) with {losses}{start}: epoch {facts['epoch']}, "
        f"step {facts['step']}. TIME (Time Is MattEr, ICML 2022) adds self-supervised "
        + (
            "losses on patch positions and patch-shuffled images, against background shortcuts"
            if images
            else "losses that make a video model use the order of its frames"
        )
        + "; its heads are training only and are not in this export."
        + (f" Also trained with {extras}." if extras else ""),
        "",
        "## Images" if images else "## Clips",
        "",
        ("One image (a clip of one frame)" if images else f"{clips['num_frames']} frames")
        + (f" ({_frames_taken(clips)})" if not images else "")
        + f", the short side resized ({clips['interpolation']}, antialiased) to "
        f"{clips['resize_short_side']} and the centre {clips['frame_size']}² cropped, as "
        f"{info['layout']}; pixels in [0, 1] normalised with mean {clips['mean']} and std "
        f"{clips['std']}.",
        "",
        "## Evaluation",
        "",
        evaluation,
        "",
        "## Load",
        "",
        "```python",
        *(_hf_lines(info) if info["format"] == "hf" else []),
        *(_safetensors_lines(info) if "build" in info else []),
        "```",
        "",
        *_views_note(info, images=images),
        "Class names, clip settings and the source checkpoint: `export.json`.",
    ]
    return "\n".join(lines) + "\n"


def _is_local(name: str) -> bool:
    """Whether ``name`` is a path on this machine rather than a hub id (``owner/model``)."""
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def _weights_name(weights: str) -> str:
    """Weights a run started from, for its card: a file's or folder's name, with its run's for a
    checkpoint (``runs/a/checkpoints/last.pth`` -> ``a/checkpoints/last.pth``); hub ids as they
    are."""
    if not _is_local(weights):
        return weights  # a hub id, or a path that has gone since
    path = Path(weights)
    return "/".join(path.parts[-3:]) if path.parent.name == "checkpoints" else path.name


def _display_name(model: str) -> str:
    """A model's name for a card's title: a local folder's or file's own name, not its path on
    the machine that exported it (``hf:/home/me/models/x`` -> ``hf:x``); hub ids as they are."""
    kind, colon, rest = model.partition(":")
    return f"{kind}:{Path(rest).name}" if colon and rest and _is_local(rest) else model


def _views_note(info: dict[str, Any], *, images: bool) -> list[str]:
    """What the loading lines make against what the evaluation scored and what transformers'
    pipeline makes: one paragraph, or none."""
    views = info["clips"].get("test_views") or {}
    count = views.get("temporal", 1) * views.get("spatial_crops", 1)
    said = []
    if count > 1:
        said.append(
            f"These lines make one view of a video (the middle clip's centre crop); the evaluation "
            f"above combined {count} views ({views['temporal']} temporal x "
            f"{views['spatial_crops']} spatial, their {views.get('aggregation', 'logits')} "
            "averaged), as `timematters predict` does with this folder."
        )
    if info["format"] == "hf" and not images:
        said.append(
            "The video processor needs transformers 5 or later. transformers' "
            '`pipeline("video-classification")` samples the first frame of each segment rather '
            "than the frames above, so its probabilities differ a little from these."
        )
    return [" ".join(said), ""] if said else []


def _safetensors_lines(info: dict[str, Any]) -> list[str]:
    """Lines that build the exported network and load its weights, run in the export's folder."""
    network = info["network"]
    imports = {
        "timematters": "import timematters.backbones",
        "torchvision": "import torchvision",
        "hf": "import transformers",
    }
    if network.get("kind") == "module":  # the run's own module, importable where it is used
        module, _, factory = network["spec"].partition(":")
        build_import = f"from {module} import {factory}"
    else:
        build_import = imports[network.get("kind", "timematters")]
    return [
        "import json",
        "",
        "import safetensors.torch",
        build_import,
        "",
        'network = json.load(open("export.json"))["network"]  # how it is built',
        f"model = {info['build']}",
        info["load"],
        "model.eval()  # as it was evaluated: no dropout, drop-path or batch statistics",
    ]


def _hf_lines(info: dict[str, Any]) -> list[str]:
    """The card's loading lines; the processor resizes and crops (where transformers has none,
    torchvision's functions do it), the frames are the caller's to take (it takes them all), as
    the evaluation did."""
    clips = info["clips"]
    T = clips["num_frames"]
    if clips.get("sampling", "segment") == "dense":
        stride = clips["dense_stride"]
        take = [
            f"span = {(T - 1) * stride + 1}  # {T} frames {stride} apart, from the middle",
            "start = round(max(len(video) - span, 0) / 2)",
            f"indices = np.minimum(start + {stride} * np.arange({T}), len(video) - 1)",
        ]
    else:
        take = [f"indices = ((np.arange({T}) + 0.5) * len(video) / {T}).astype(int)  # centres"]
    short, crop = clips["resize_short_side"], clips["frame_size"]
    processor = info["video_processor"]
    if processor:
        imports = ["import numpy as np", "import transformers"]
        make_clip = ["processor = transformers.AutoVideoProcessor.from_pretrained(folder)"]
        if not processor["keeps_resize"]:
            make_clip.append(
                f'processor.size = {{"shortest_edge": {short}}}  # loading set its class\'s own'
            )
        inputs = ['inputs = processor([video[indices]], return_tensors="pt")']
    else:  # no processor in the folder: its steps by hand
        imports = [
            "import numpy as np",
            "import torch",
            "import transformers",
            "from torchvision.transforms.v2 import functional as F",
        ]
        make_clip = []
        inputs = [
            f"clip = F.center_crop(F.resize(torch.as_tensor(video[indices]), [{short}]), [{crop}])",
            f"clip = F.normalize(clip / 255, mean={clips['mean']}, std={clips['std']})",
            f'inputs = {{"{info["input_name"]}": clip[None]}}  # [1, T, C, H, W]',
        ]
    logits = ["logits = model(**inputs).logits"]
    if info["logits"] == "[B, 1, K]":
        logits.append("logits = logits[:, 0]  # [B, K]: the model keeps its pooling query's axis")
    return [
        *imports,
        "",
        'folder = "."  # this folder, or its hub id',
        "model = transformers.AutoModelForVideoClassification.from_pretrained(folder)",
        *make_clip,
        "# video: all its frames, uint8 [N, C, H, W]; the clip takes these of them:",
        *take,
        *inputs,
        *logits,
    ]


def _frames_taken(clips: dict[str, Any]) -> str:
    if clips.get("sampling", "segment") == "dense":
        return f"{clips['dense_stride']} apart, from the middle of the video"
    return "the centre frames of as many equal parts of the video"


def _evaluation_of(facts: dict, checkpoint: Path, *, images: bool = False) -> str:
    """The run's final evaluation table when it scored this checkpoint: a checkpoint written
    after the final evaluation (``final_eval_lines`` set), in its run's ``checkpoints`` folder.
    An ImageNet-9 run's is its Backgrounds Challenge table (one frame has no order to shuffle)."""
    run = checkpoint.parent.parent
    table = run / ("backgrounds.md" if images else "eval.md")
    done = facts["final_eval_lines"] is not None and checkpoint.parent.name == "checkpoints"
    if done and images and table.is_file():
        return (
            "Top-1 (%) on the Backgrounds Challenge's test variations (the run's final "
            "evaluation, `backgrounds.md`; BG-Gap = Mixed-Same - Mixed-Rand, lower is less "
            "background bias):\n\n" + table.read_text().strip()
        )
    if done and table.is_file():
        return (
            "Top-1 (%) on the original test clips and on the same clips with their frames "
            "shuffled; the gap is what the model loses without the order of its frames (the "
            "run's final evaluation, `eval.md`):\n\n" + table.read_text().strip()
        )
    command = "`timematters eval CONFIG --checkpoint CHECKPOINT`"
    # best.pth holds the weights of the evaluation its best_top1 records (at an epoch's end; a
    # last.pth of that epoch may have trained on since, to a max_steps stop).
    if checkpoint.name == "best.pth" and math.isfinite(facts["best_top1"]):
        scored = "test images" if images else "test clips"
        return (
            f"Top-1 {facts['best_top1']:.1f}% on the {scored} at the end of epoch "
            f"{facts['best_epoch']} (the evaluation that made this checkpoint its run's best); "
            f"{command} "
            + ("scores it again." if images else "gives its top-1 on frame-shuffled clips too.")
        )
    return (
        "No evaluation of this checkpoint is known here (it is not the one its run evaluated "
        f"last, or it is no longer in its run's folder); {command} gives its top-1 on original "
        "and frame-shuffled clips."
    )


def _refuse_foreign_files(out: Path, *, overwrite: bool) -> None:
    """A folder without an earlier export's ``export.json`` may be someone's model folder (a
    ``save_pretrained`` output): its files of an export's names are not replaced unasked."""
    if overwrite or (out / "export.json").is_file():
        return
    files, _ = OUTPUTS["an export"]
    clash = sorted({path.name for pattern in files for path in out.glob(pattern)})
    if clash:
        raise RunFolderInUse(
            f"{out} holds {', '.join(clash)}, which an export would replace: choose another "
            "--out, or replace them with --overwrite"
        )


def _no_hf_form(model: nn.Module) -> str:
    """Why the model has no ``transformers`` form ("" when it has one)."""
    if isinstance(model, TimeSformer):
        if model.readd_time_embed:
            return (
                "this TimeSformer adds its time embedding before every block (Appendix D), "
                "which transformers' TimeSformer does not"
            )
        return ""
    if _architecture(model).get("kind") == "hf":
        return ""
    name = model_name(model)
    return f"{type(model).__name__} ({name}) has no Hugging Face transformers form"


def _architecture(model: nn.Module) -> dict[str, Any]:
    """An adapted model's record of its network ({} for ours and for a user's module)."""
    return (model.architecture() or {}) if isinstance(model, Adapter) else {}


def _network(model: nn.Module) -> nn.Module:
    """The network whose weights are exported: our backbone, or the one an adapter wraps."""
    return model.model if isinstance(model, Adapter) else model


def _normalisation(model: nn.Module, cfg: Config) -> tuple[list[float], list[float]]:
    """The mean and std on [0, 1] pixels the exported network takes: an adapter renormalises to
    its network's own; our backbones take the dataset's."""
    if isinstance(model, Adapter):
        return list(model.mean), list(model.std)
    return list(cfg.data.mean), list(cfg.data.std)


def _short_side(cfg: Config) -> int:
    """The short side test frames are resized to before the centre crop, as evaluation does."""
    return EvalClip.of(cfg.data).short_side


def _clips(model: nn.Module, cfg: Config) -> dict[str, Any]:
    mean, std = _normalisation(model, cfg)
    views = EvalClip.of(cfg.data, cfg.eval)
    return {
        "num_frames": cfg.model.num_frames,
        "sampling": cfg.data.sampling,  # which frames (test: segment centres, or dense middle)
        "dense_stride": cfg.data.dense_stride,
        "frame_size": cfg.data.crop_size,
        "resize_short_side": views.short_side,
        # ImageNet-9's images are resized as timm's DeiT evaluation does; videos bilinearly.
        "interpolation": "bicubic" if cfg.data.dataset == "imagenet9" else "bilinear",
        # The evaluation's views of a video (predict of this folder makes them all; the card's
        # lines take the middle one).
        "test_views": {
            "temporal": views.temporal_views,
            "spatial_crops": views.spatial_crops,
            "aggregation": views.aggregation,
        },
        "mean": mean,
        "std": std,
    }


def _write_hf(model: nn.Module, cfg: Config, out: Path) -> dict[str, Any]:
    from timematters.backbones.adapters.hf import require_transformers

    transformers = require_transformers()
    if isinstance(model, TimeSformer):
        network = _hf_timesformer(model, transformers)
    else:
        network = model.model
    names = class_names_of(model)
    network.config.id2label = dict(enumerate(names))
    network.config.label2id = {name: index for index, name in enumerate(names)}
    if getattr(network.config, "num_frames", None) is None:
        # transformers' video pipeline takes config.num_frames frames, which V-JEPA 2's config
        # (frames_per_clip) lacks: the pipeline would fail on the exported folder.
        network.config.num_frames = cfg.model.num_frames
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # one folder written in a moment: no bar
    # Written into a folder of their own first, so that the files listed are these alone, not
    # whatever else the folder holds.
    staging = out / ".export.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    processor = _video_processor(network.config.model_type, model, cfg)
    try:
        network.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        files = sorted(path.name for path in staging.iterdir())
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if shown:
            bars.enable_progress_bar()
    written = None
    if processor is not None:
        # Read back as a user loads it: V-JEPA 2's processor sets its resize from the crop size
        # (crop · 256/224) whenever it is made, so the card's lines set it again.
        loaded = transformers.AutoVideoProcessor.from_pretrained(out)
        written = {
            "type": type(processor).__name__,
            "keeps_resize": loaded.size.shortest_edge == _short_side(cfg),
        }
    return {
        "files": files,
        "layout": f"{network.main_input_name} [B, T, C, H, W]",
        "input_name": network.main_input_name,
        "logits": _hf_logits_shape(network.config.model_type),
        "video_processor": written,  # None: transformers has none for the model type
        "load": f"transformers.AutoModelForVideoClassification.from_pretrained({str(out)!r})",
        "spec": f"hf:{out}",
    }


def _hf_logits_shape(model_type: str) -> str:
    """The shape of a transformers classifier's ``.logits``: VideoPrism's keeps the axis of its
    one pooling query."""
    return "[B, 1, K]" if model_type == "videoprism_vision_model" else "[B, K]"


def _hf_timesformer(model: TimeSformer, transformers) -> nn.Module:
    """transformers' TimesformerForVideoClassification holding our TimeSformer's weights."""
    block = model.blocks[0]
    config = transformers.TimesformerConfig(
        image_size=model.grid[0] * model.patch_size,
        patch_size=model.patch_size,
        num_frames=model.num_frames,
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        qkv_bias=block.attn.qkv.bias is not None,
        hidden_act="gelu",  # exact GELU, as ours
        layer_norm_eps=1e-6,
        attention_type="divided_space_time",
        num_labels=model.num_classes,
    )
    network = transformers.TimesformerForVideoClassification(config)
    network.load_state_dict(rename_to_hf_timesformer(model.state_dict()), strict=True)
    return network.eval()


def _video_processor(model_type: str, model: nn.Module, cfg: Config):
    """The video processor of the model type (None where transformers has none), set to the
    clips the model was trained on: resize to the short side, centre crop, [0, 1], normalise."""
    from transformers.image_utils import SizeDict

    processor_class = video_processor_class(model_type)
    if processor_class is None:
        return None
    processor = processor_class(
        do_resize=True,
        size={"shortest_edge": _short_side(cfg)},
        do_center_crop=True,
        crop_size={"height": cfg.data.crop_size, "width": cfg.data.crop_size},
        do_rescale=True,
        do_normalize=True,
        **processor_normalisation(model_type, *_normalisation(model, cfg)),
    )
    # V-JEPA 2's sets its resize from the crop size, whatever ``size`` it is given.
    processor.size = SizeDict(shortest_edge=_short_side(cfg))
    return processor


def _write_safetensors(model: nn.Module, cfg: Config, out: Path) -> dict[str, Any]:
    from safetensors.torch import save_model

    network = _network(model)
    save_model(network, str(out / "model.safetensors"))  # drops the copies of tied tensors
    load = "safetensors.torch.load_model(model, 'model.safetensors')"
    if isinstance(model, Adapter) or is_foreign_spec(cfg.model.name):  # not ours: its network
        architecture = _architecture(model)
        if architecture.get("kind") == "hf":  # from_config then names the run's classes
            names = class_names_of(model)
            config = json.loads(architecture["config"])
            config["id2label"] = {str(k): name for k, name in enumerate(names)}
            config["label2id"] = {name: k for k, name in enumerate(names)}
            architecture = {**architecture, "config": json.dumps(config)}
        return {
            "files": ["export.json", "model.safetensors"],
            "layout": "video [B, C, T, H, W]"
            if architecture.get("kind") != "hf"
            else f"{network.main_input_name} [B, T, C, H, W]",
            "network": architecture or {"kind": "module", "spec": cfg.model.name},
            # A logits-only module states no size: its classes are the run's.
            "build": _build_hint(architecture, cfg, num_classes=len(class_names_of(model))),
            "load": load,
        }
    kwargs = backbone_kwargs(cfg, model.num_classes)
    info = {
        "files": ["export.json", "model.safetensors"],
        "layout": "video [B, C, T, H, W]",
        "network": {"kind": "timematters", "name": cfg.model.name, "kwargs": kwargs},
        "build": f"timematters.backbones.create_backbone({cfg.model.name!r}, **network['kwargs'])",
        "load": load,
    }
    if isinstance(model, VisionTransformer):  # its keys are timm's: timm builds it as well
        info["timm"] = _timm_hint(model)
    return info


def _timm_hint(model: VisionTransformer) -> str:
    """timm's VisionTransformer of the same sizes, which takes these weights as they are (and
    images [B, C, H, W])."""
    block = model.blocks[0]
    sizes = {
        "img_size": model.grid[0] * model.patch_size,
        "patch_size": model.patch_size,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "num_classes": model.num_classes,
    }
    arguments = ", ".join(f"{key}={value!r}" for key, value in sizes.items())
    return f"timm.create_model('vit_base_patch16_224', pretrained=False, {arguments})"


def _build_hint(architecture: dict[str, Any], cfg: Config, num_classes: int) -> str:
    """The expression that builds the exported network, given ``network``, export.json's entry."""
    kind = architecture.get("kind")
    if kind == "torchvision":
        return (
            f"torchvision.models.video.{architecture['name']}"
            f"(num_classes={architecture['num_classes']})"
        )
    if kind == "hf":
        return (
            "transformers.AutoModelForVideoClassification.from_config("
            "transformers.AutoConfig.for_model(**json.loads(network['config'])))"
        )
    # A user's module: its factory called as the run called it (with the sizes it takes).
    sizes = dict(
        num_classes=num_classes, num_frames=cfg.model.num_frames, img_size=cfg.data.crop_size
    )
    _, kwargs = factory_call(cfg.model.name, **sizes)
    arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    return f"{cfg.model.name.partition(':')[2]}({arguments})"
