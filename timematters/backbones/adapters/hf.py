"""Hugging Face ``transformers`` video classifiers behind the backbone protocol.

``load_hf_model(name)`` takes a local folder (``save_pretrained``'s output; works offline) or a hub
id (when online) and returns an adapter:

- **TimeSformer** (``TimesformerForVideoClassification``): tokens ``b (s t) d`` behind one CLS
  (patch-major, frames inner), the final LayerNorm on all of them; CLS -> ``classifier``. One
  token frame per frame, so all three TIME losses apply. ``attention_type="space_only"`` is
  refused: transformers' classifier then scores each frame alone ([B*T, K] logits).
- **VideoMAE** (``VideoMAEForVideoClassification``): 2-frame tubelets, tokens ``b (t s) d`` without
  a CLS; the clip representation is ``fc_norm`` of the mean token (or the first token without
  mean pooling). T/2 token frames: all three losses apply, the flow labelled between the
  tubelets' first frames (``FlowLabeller.frame_step`` 2; a tubelet that does not divide the clip
  leaves frames out, and the flow loss is refused).
- **ViViT** (``VivitForVideoClassification``): 2-frame tubelets, ``b (t s) d`` behind one CLS,
  final LayerNorm; as VideoMAE for the losses. Patches need not be square (``tubelet_size``
  [2, 16, 8]); such a model trains without the flow loss, whose labels are per square patch.
- **V-JEPA 2** (``VJEPA2ForVideoClassification``): 2-frame tubelets, ``b (t s) d`` without a CLS,
  final LayerNorm; the clip representation is the attentive pooler's output. As VideoMAE for the
  losses. Its predictor, a pretraining head the classifier never runs, is frozen.
- **VideoPrism** (``VideoPrismForVideoClassification``): a factorised encoder, a spatial
  transformer over each frame's patches and then a temporal one over each patch's frames; one
  token per frame and patch, ``b (t s) d`` without a CLS after the final norm; the clip
  representation is the attention-pooling head's normalised output. One token frame per frame:
  all three TIME losses apply.
- Any other ``AutoModelForVideoClassification``: logits only (shuffle test, confidence gap,
  debias); the report states why the token-based diagnostics do not apply.
- **X-CLIP** (``XCLIPModel``), a video-text model: zero-shot, each class scored by the model's
  clip-text similarity to its name (``model.prompt``), the classes those of the data
  (``set_class_names``), tokenised by its tokenizer (a folder without one is refused); the order
  probe and GradCAM read its frame encoder; scored, not trained.

Frames go in as ``[B, T, C, H, W]`` under the model's own input name (``pixel_values``, or
``pixel_values_videos`` for V-JEPA 2 and VideoPrism) normalised with the model's own mean and std,
read from the processor config of its folder or hub repository when there is one (transformers
4's per-part files or transformers 5's nested ``processor_config.json``; the processor's defaults
otherwise).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from timematters.backbones.adapters.base import (
    DEFAULT_INPUT,
    Adapter,
    LogitsOnlyAdapter,
    unwrap_output,
)
from timematters.backbones.protocol import VideoTokens


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "hf: model specs need the transformers package: pip install 'timematters[hf]'"
        ) from None
    return transformers


def load_hf_model(name: str, num_classes: int | None = None, *, weights: bool = True) -> Adapter:
    """``hf:NAME``: a transformers video classifier from a folder or the hub, adapted.

    num_classes: give the classifier this many outputs (a new head when it differs, as for
    fine-tuning); None keeps the checkpoint's.
    weights: False builds it from its config alone on the meta device, for its sizes (patch,
        frames, token frames) without reading, or downloading, its weights.
    """
    transformers = require_transformers()
    folder = Path(name)
    # A path, not a hub id: not asked of the hub (offline, its retries take half a minute). An
    # owner/name whose owner is a local folder (runs/export) is a path with a typo.
    owner_is_a_folder = name.count("/") == 1 and folder.parent.is_dir()
    looks_local = name.startswith((".", "/")) or name.count("/") > 1 or owner_is_a_folder
    if not folder.exists() and looks_local:
        raise FileNotFoundError(f"hf:{name}: no such folder (a hub id is owner/name)")
    options: dict[str, Any] = {}
    if num_classes is not None:
        options = {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    try:
        config = transformers.AutoConfig.from_pretrained(name)
        if config.model_type in _ZERO_SHOT:  # a video-text model: its text side is the classifier
            return _load_zero_shot(transformers, name, config, weights=weights)
        _refuse_other_tasks(name, config.model_type)
        if weights:
            model = transformers.AutoModelForVideoClassification.from_pretrained(name, **options)
        else:
            with torch.device("meta"):
                model = transformers.AutoModelForVideoClassification.from_config(config)
    except OSError as error:
        raise FileNotFoundError(
            f"hf:{name}: cannot load it ({str(error).splitlines()[0]}); give a folder written by "
            "save_pretrained, or a hub id while online (offline, HF_HUB_OFFLINE=1 reads the hub "
            "cache without retrying the connection)"
        ) from None
    mean, std = _normalisation(name, model.config.model_type)
    return _adapt(model, mean=mean, std=std, source=f"hf:{name}")


def _refuse_other_tasks(name: str, model_type: str) -> None:
    """A model transformers has no video classifier of (an image classifier, a text model) is
    named in one line, not with transformers' list of every configuration class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES

    if model_type in MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES:
        return
    kinds = ", ".join(sorted(MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES))
    raise ValueError(
        f"hf:{name} is a {model_type} model, which transformers has no video classifier of (it "
        f"has {kinds}; X-CLIP zero-shot); an image ViT / DeiT is a timematters backbone "
        "(model.name=deit_tiny_patch16_224) with timm's weights in model.pretrained"
    )


def _load_zero_shot(transformers, name: str, config: Any, *, weights: bool) -> Adapter:
    """A video-text model and its tokenizer, from the folder or hub repository."""
    folder = Path(name)
    if folder.is_dir() and not any(all((folder / f).is_file() for f in files) for files in _VOCAB):
        raise _no_tokenizer(name)
    if weights:
        model = transformers.AutoModel.from_pretrained(name)
    else:
        with torch.device("meta"):
            model = transformers.AutoModel.from_config(config)
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    # Without its files (a hub repository's are not listed here) transformers 5 makes a tokenizer
    # of the special tokens alone, which gives every class the same text.
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise _no_tokenizer(name)
    mean, std = _normalisation(name, config.model_type)
    return HFZeroShot(model, tokenizer, mean=mean, std=std, source=f"hf:{name}")


# A tokenizer's vocabulary files, as transformers saves them (either set is enough).
_VOCAB = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _no_tokenizer(name: str) -> ValueError:
    """The refusal of a video-text model saved without its tokenizer, with the fix."""
    folder = name if Path(name).is_dir() else "DIR"
    save = f"XCLIPProcessor.from_pretrained(HUB_ID).save_pretrained({folder})"
    if folder == name:
        fix = f"save X-CLIP's processor into the folder, {save}"
    else:
        fix = f"save_pretrained(DIR) the model and {save}, then give hf:DIR"
    return ValueError(
        f"hf:{name} has no tokenizer (no tokenizer.json, nor vocab.json and merges.txt), with "
        f"which a video-text model scores the class names: {fix} (HUB_ID the X-CLIP it came "
        "from; or its tokenizer's save_pretrained)"
    )


def rebuild_hf_model(architecture: dict[str, Any], source: str) -> Adapter:
    """The model a timematters checkpoint recorded (``architecture()``: its transformers config and
    normalisation), with untrained weights for the checkpoint's to replace: a fine-tuned model
    reloads without its original folder and without downloading weights it would throw away. (On
    the meta device when built under ``torch.device("meta")``, for its sizes.)"""
    transformers = require_transformers()
    config = transformers.AutoConfig.for_model(**json.loads(architecture["config"]))
    model = transformers.AutoModelForVideoClassification.from_config(config)
    return _adapt(model, mean=architecture["mean"], std=architecture["std"], source=source)


def adapt_hf_module(model: nn.Module) -> Adapter:
    """A transformers video classifier built or loaded in Python, as its ``hf:`` spec would be:
    the normalisation its folder or hub repository's processor states (``config.name_or_path``),
    else its model type's default."""
    require_transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES

    model_type, name = model.config.model_type, model.config.name_or_path or ""
    classifier = MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    if classifier != type(model).__name__:
        given = f"a {type(model).__name__}"
        if model_type in _ZERO_SHOT:  # its classes are texts, scored with its tokenizer
            raise ValueError(
                f"{given} is a video-text model: save_pretrained(DIR) it with its processor "
                "(XCLIPProcessor.save_pretrained(DIR): its tokenizer and normalisation) and give "
                "hf:DIR, which scores the data's class names zero-shot"
            )
        if classifier is None:
            _refuse_other_tasks(name or type(model).__name__, model_type)
        raise ValueError(
            f"{given} has no video classifier: give transformers' {classifier} (its "
            "from_pretrained, or its from_config and training), whose logits are the classes"
        )
    try:
        mean, std = _normalisation(name, model_type) if name else _no_processor(model_type)
    except OSError:  # the hub out of reach: the model type's default, as without a processor
        mean, std = _no_processor(model_type)
    return _adapt(model, mean=mean, std=std, source=f"hf:{name}" if name else type(model).__name__)


def _no_processor(model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation of the model type's processor in transformers, as built without files."""
    if model_type in _FIXED_NORMALISATION:
        return _FIXED_NORMALISATION[model_type]
    return _folded(_processor_defaults(model_type), offset=model_type in _OFFSET_TYPES)


def _adapt(model: nn.Module, *, mean, std, source: str) -> Adapter:
    adapter = _TOKEN_ADAPTERS.get(model.config.model_type, HFClassifier)
    return adapter(model, mean=tuple(mean), std=tuple(std), source=source)


_PIXELS = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # [0, 1] pixels as they are
# Model types whose processor fixes the normalisation whatever its files say: VideoPrism's
# processor turns the normalisation of its video processor off.
_FIXED_NORMALISATION = {"videoprism_vision_model": _PIXELS}
# Processors that map the rescaled pixels to [-1, 1] before they normalise (ViViT's ``offset``:
# its video processor always does, its image processor unless its config says ``offset: false``).
_OFFSET_TYPES = {"vivit"}
# Model types without a video processor in transformers: their image processor's defaults.
_OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_IMAGE_PROCESSOR_DEFAULTS = {"xclip": {"image_mean": _OPENAI_CLIP[0], "image_std": _OPENAI_CLIP[1]}}
# VideoPrism's classifier is a "videoprism_vision_model"; its processor is filed as "videoprism".
_PROCESSOR_MODEL_TYPE = {"videoprism_vision_model": "videoprism"}


def video_processor_class(model_type: str) -> type | None:
    """transformers' video processor class of the model type (None where it has none)."""
    from transformers.models.auto.video_processing_auto import (
        VIDEO_PROCESSOR_MAPPING_NAMES,
        video_processor_class_from_name,
    )

    model_type = _PROCESSOR_MODEL_TYPE.get(model_type, model_type)
    names = VIDEO_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    name = names.get("torchvision") if isinstance(names, dict) else names
    return video_processor_class_from_name(name) if name else None


def _processor_defaults(model_type: str) -> dict[str, Any]:
    """The settings the model type's processor has without a file: its class's defaults."""
    processor = video_processor_class(model_type)
    if processor is None:
        return dict(_IMAGE_PROCESSOR_DEFAULTS.get(model_type, {}))
    names = ("image_mean", "image_std", "rescale_factor", "do_normalize")
    return {
        name: getattr(processor, name)
        for name in names
        if getattr(processor, name, None) is not None
    }


def _normalisation(name: str, model_type: str = "") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] pixels, from the processor saved in the model's folder or hub
    repository (transformers' ``cached_file`` resolves both, and the hub cache offline); the
    settings it leaves out, and all of them without one, are the model type's processor's.
    """
    if model_type in _FIXED_NORMALISATION:
        return _FIXED_NORMALISATION[model_type]
    settings = {**_processor_defaults(model_type), **_saved_processor(name)}
    offset = model_type in _OFFSET_TYPES and settings.get("offset", True)
    return _folded(settings, offset=offset)


def _saved_processor(name: str) -> dict[str, Any]:
    """The settings of the processor saved in the folder or hub repository ({} without one).
    transformers 5 saves a processor as one ``processor_config.json`` with each part's settings
    nested in it ("video_processor", "image_processor"); a part saved alone, or by transformers 4,
    has its own file. Read as transformers does: the nested settings before the part's file, and
    the video processor's before the image processor's."""
    from transformers.utils import cached_file

    def read(file: str) -> dict[str, Any] | None:
        found = cached_file(name, file, _raise_exceptions_for_missing_entries=False)
        return json.loads(Path(found).read_text()) if found else None

    nested = read("processor_config.json") or {}
    for part, file in (
        ("video_processor", "video_preprocessor_config.json"),
        ("image_processor", "preprocessor_config.json"),
    ):
        settings = nested.get(part) if isinstance(nested.get(part), dict) else read(file)
        if settings is not None:
            return settings
    return {}


def _folded(
    settings: dict[str, Any], *, offset: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A processor's rescale (by ``rescale_factor``, then minus 1 with ``offset``) and normalise
    folded into one mean and std on [0, 1] pixels u: (u·255·r - o - m) / s = (u - (m + o) / k) /
    (s / k) with k = 255·r. One that does not normalise (``do_normalize: false``) has m = 0, s = 1."""
    if settings.get("do_normalize") is False:
        mean, std = _PIXELS
    else:
        mean = settings.get("image_mean", DEFAULT_INPUT[0])
        std = settings.get("image_std", DEFAULT_INPUT[1])
    mean = [mean] * 3 if isinstance(mean, int | float) else list(mean)
    std = [std] * 3 if isinstance(std, int | float) else list(std)
    rescale = settings.get("rescale_factor", 1 / 255) if settings.get("do_rescale", True) else 1
    scale = round(255 * rescale, 9)  # 1/255: exactly 1
    shift = 1.0 if offset else 0.0
    return tuple((m + shift) / scale for m in mean), tuple(s / scale for s in std)


def processor_normalisation(
    model_type: str, mean: Sequence[float], std: Sequence[float]
) -> dict[str, Any]:
    """The rescale and normalisation settings with which the model type's processor gives
    (u - mean) / std on [0, 1] pixels u: ``_folded`` undone."""
    if model_type in _OFFSET_TYPES:  # 2u - 1 first: (2u - 1 - (2m - 1)) / 2s
        mean, std, rescale = [2 * m - 1 for m in mean], [2 * s for s in std], 1 / 127.5
    else:
        mean, std, rescale = list(mean), list(std), 1 / 255
    return {"rescale_factor": rescale, "image_mean": mean, "image_std": std}


def _clip_size(config: Any) -> tuple[int, int]:
    """(frames, frame side) a transformers video config declares (0 frames: it does not say).
    V-JEPA 2 names them ``frames_per_clip`` and ``crop_size``."""
    frames = getattr(config, "num_frames", None) or getattr(config, "frames_per_clip", None) or 0
    size = getattr(config, "image_size", None) or getattr(config, "crop_size", None) or 224
    return frames, size if isinstance(size, int) else size[-1]


def _patch_sides(config: Any) -> tuple[int, int]:
    """(height, width) of a patch in pixels. ViViT and VideoPrism give them as their tubelet's
    last two sides (``tubelet_size`` [frames, height, width]), which need not be equal."""
    patch = getattr(config, "patch_size", None) or config.tubelet_size[1:]
    return (patch, patch) if isinstance(patch, int) else (patch[-2], patch[-1])


def _class_names(model: nn.Module) -> list[str] | None:
    """The checkpoint's class names, or None when they are transformers' LABEL_i placeholders."""
    id2label = getattr(model.config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def _pixel_values(video: torch.Tensor) -> torch.Tensor:
    return rearrange(video, "b c t h w -> b t c h w")


def _logits(model: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """A transformers classifier's logits [B, K], its frames under its own input name."""
    name = getattr(model, "main_input_name", "pixel_values")  # every PreTrainedModel has one
    logits = model(**{name: _pixel_values(video)}).logits
    # VideoPrism's classifier keeps its pooling query's axis: [B, 1, K].
    return logits[:, 0] if logits.ndim == 3 and logits.shape[1] == 1 else logits


class _HFShared:
    """What every HF adapter has: ``model.grad_checkpointing`` through transformers' own per-layer
    checkpointing, and the architecture a checkpoint records."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def architecture(self) -> dict[str, Any]:
        """What ``rebuild_hf_model`` needs: the transformers config (JSON, as weights-only
        checkpoints hold only plain data) and the normalisation read from the folder."""
        return {
            "kind": "hf",
            "config": self.model.config.to_json_string(),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if not self.model.supports_gradient_checkpointing:
            raise NotImplementedError(f"{type(self.model).__name__} has no gradient checkpointing")
        # transformers 5 renamed gradient to activation checkpointing (the old names warn).
        renamed = hasattr(self.model, "activation_checkpointing_enable")
        prefix = "activation" if renamed else "gradient"
        if enable:
            # Non-reentrant: the recomputation replays the RNG state, as in our backbones.
            kwargs = {f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}
            getattr(self.model, f"{prefix}_checkpointing_enable")(**kwargs)
        else:
            getattr(self.model, f"{prefix}_checkpointing_disable")()


class _HFTokens(_HFShared, Adapter):
    """Shared by the token models: sizes from the config, blocks = encoder layers."""

    family = "hf"
    classifier_name = "model.classifier"
    has_cls = True  # a CLS token before the patch tokens (VideoMAE has none)
    norm_before = "layernorm_before"  # the name of a layer's first LayerNorm

    def __init__(self, model: nn.Module, *, mean, std, source: str, tubelet: int):
        config = model.config
        patch_height, patch_width = _patch_sides(config)
        frames, size = _clip_size(config)
        super().__init__(
            model,
            num_frames=frames,
            img_size=size,
            # A side both of a patch's divide (they may differ): CutMix cuts its boxes on it.
            patch_size=math.lcm(patch_height, patch_width),
            embed_dim=config.hidden_size,
            num_classes=config.num_labels,
            token_frames=frames // tubelet,
            mean=mean,
            std=std,
            class_names=_class_names(model),
            source=source,
        )
        self.grid = (size // patch_height, size // patch_width)
        # Frames per token frame: not frames // token_frames where the tubelets leave frames
        # out (8 frames make two 3-frame tubelets).
        self.tubelet = tubelet
        if patch_height != patch_width:
            self.unsupported["flow"] = (
                f"its patches are {patch_height}x{patch_width} pixels, and flow labels are made "
                "per square patch"
            )

    @property
    def encoder_layers(self) -> nn.ModuleList:
        """The transformer layers: the base model's list of ``num_hidden_layers`` modules (under
        ``encoder.layer`` or ``layers``, depending on the transformers version)."""
        depth = self.model.config.num_hidden_layers
        for module in self.model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == depth:
                return module
        raise NotImplementedError(f"{self.source}: no list of {depth} layers found")

    def block_modules(self) -> list[nn.Module]:
        return list(self.encoder_layers)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (no CLS) in the model's order -> [B, T', S, D]."""
        return rearrange(tokens, "b (t s) d -> b t s d", t=self.token_frames)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The last layer's first LayerNorm: the tokens its attention reads (the classifier's
        gradient reaches them through that attention)."""
        h, w = self.grid
        prefix = 1 if self.has_cls else 0

        def reshape(x: torch.Tensor) -> torch.Tensor:
            grid = self._grid(x[:, prefix:].float())
            return rearrange(grid, "b t (h w) d -> b d t h w", h=h, w=w)

        return getattr(self.encoder_layers[-1], self.norm_before), reshape


class HFTimesformer(_HFTokens):
    def __init__(self, model: nn.Module, *, mean, std, source: str):
        if model.config.attention_type == "space_only":
            raise ValueError(
                f"{source}: a TimeSformer with attention_type='space_only' classifies each frame "
                "on its own (transformers' classifier gives [B*T, K] logits, not one row a clip); "
                "timematters takes divided_space_time and joint_space_time ones"
            )
        super().__init__(model, mean=mean, std=std, source=source, tubelet=1)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(tokens, "b (s t) d -> b t s d", t=self.token_frames)

    def block_grid(self, output: Any) -> torch.Tensor:
        return self._grid(unwrap_output(output)[:, 1:])

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        # Divided attention: the spatial LayerNorm sees [(B T), 1 + S, D] per frame; joint
        # attention's sees the whole clip, [B, 1 + S T, D], its patches in (s t) order.
        h, w = self.grid
        T = self.token_frames
        joint = self.model.config.attention_type == "joint_space_time"
        pattern = "b (h w t) d -> b d t h w" if joint else "(b t) (h w) d -> b d t h w"

        def reshape(x: torch.Tensor) -> torch.Tensor:
            return rearrange(x[:, 1:].float(), pattern, t=T, h=h, w=w)

        return self.encoder_layers[-1].layernorm_before, reshape

    def features(self, video: torch.Tensor) -> VideoTokens:
        sequence = self.model.timesformer(_pixel_values(video)).last_hidden_state  # after norm
        return VideoTokens(cls=sequence[:, 0], patches=self._grid(sequence[:, 1:]))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(cls)


class HFVideoMAE(_HFTokens):
    has_cls = False

    def __init__(self, model: nn.Module, *, mean, std, source: str):
        super().__init__(
            model, mean=mean, std=std, source=source, tubelet=model.config.tubelet_size
        )

    def block_grid(self, output: Any) -> torch.Tensor:
        return self._grid(unwrap_output(output))

    def features(self, video: torch.Tensor) -> VideoTokens:
        sequence = self.model.videomae(_pixel_values(video)).last_hidden_state
        if self.model.fc_norm is not None:  # mean pooling, as the classifier does
            cls = self.model.fc_norm(sequence.mean(dim=1))
        else:
            cls = sequence[:, 0]
        return VideoTokens(cls=cls, patches=self._grid(sequence))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(cls)


class HFVivit(_HFTokens):
    def __init__(self, model: nn.Module, *, mean, std, source: str):
        tubelet = model.config.tubelet_size[0]
        super().__init__(model, mean=mean, std=std, source=source, tubelet=tubelet)

    def block_grid(self, output: Any) -> torch.Tensor:
        return self._grid(unwrap_output(output)[:, 1:])

    def features(self, video: torch.Tensor) -> VideoTokens:
        sequence = self.model.vivit(_pixel_values(video)).last_hidden_state  # after norm
        return VideoTokens(cls=sequence[:, 0], patches=self._grid(sequence[:, 1:]))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(cls)


class HFVJEPA2(_HFTokens):
    has_cls = False
    norm_before = "norm1"

    def __init__(self, model: nn.Module, *, mean, std, source: str):
        super().__init__(
            model, mean=mean, std=std, source=source, tubelet=model.config.tubelet_size
        )
        # The predictor fills in masked tokens in pretraining; the classifier never runs it, so it
        # would get no gradient, which DistributedDataParallel waits for.
        model.vjepa2.predictor.requires_grad_(False)

    @property
    def encoder_layers(self) -> nn.ModuleList:
        return self.model.vjepa2.encoder.layer  # not the predictor's, nor the pooler's

    def block_grid(self, output: Any) -> torch.Tensor:
        return self._grid(unwrap_output(output))

    def features(self, video: torch.Tensor) -> VideoTokens:
        encoded = self.model.vjepa2(pixel_values_videos=_pixel_values(video), skip_predictor=True)
        sequence = encoded.last_hidden_state  # [B, (T' S), D] after the encoder's final norm
        return VideoTokens(cls=self.model.pooler(sequence), patches=self._grid(sequence))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(cls)


class HFVideoPrism(_HFTokens):
    has_cls = False

    def __init__(self, model: nn.Module, *, mean, std, source: str):
        tubelet = model.config.tubelet_size[0]
        super().__init__(model, mean=mean, std=std, source=source, tubelet=tubelet)

    @property
    def encoder_layers(self) -> nn.ModuleList:
        """The spatial layers, then the temporal ones."""
        vision = self.model.vision_model
        return nn.ModuleList([*vision.spatial_layers, *vision.temporal_layers])

    def modules_in_forward_order(self) -> list[nn.Module]:
        # transformers registers both norms first and the temporal embeddings before the layers.
        vision = self.model.vision_model
        return [
            vision.spatial_embeddings,
            *vision.spatial_layers,
            vision.layernorm1,
            vision.temporal_embeddings,
            *vision.temporal_layers,
            vision.layernorm2,
        ]

    def block_grids(self, outputs: list[Any]) -> tuple[torch.Tensor, ...]:
        # The spatial layers see each frame's patches, [(B T), S, D]; the temporal layers each
        # patch's frames, [(B S), T, D].
        spatial = len(self.model.vision_model.spatial_layers)
        T, S = self.token_frames, self.grid[0] * self.grid[1]
        return tuple(
            rearrange(unwrap_output(output), "(b t) s d -> b t s d", t=T)
            if i < spatial
            else rearrange(unwrap_output(output), "(b s) t d -> b t s d", s=S)
            for i, output in enumerate(outputs)
        )

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        # The last temporal layer's LayerNorm sees each patch's frames, [(B S), T, D].
        h, w = self.grid

        def reshape(x: torch.Tensor) -> torch.Tensor:
            return rearrange(x.float(), "(b h w) t d -> b d t h w", h=h, w=w)

        return self.model.vision_model.temporal_layers[-1].layernorm_before, reshape

    def features(self, video: torch.Tensor) -> VideoTokens:
        vision = self.model.vision_model(pixel_values_videos=_pixel_values(video))
        sequence = vision.last_hidden_state  # [B, (T S), D] after the temporal encoder's norm
        pooled = self.model.head_layernorm(self.model.head(sequence)[0])  # [B, 1, D]
        return VideoTokens(cls=pooled[:, 0], patches=self._grid(sequence))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(cls)


_TOKEN_ADAPTERS = {
    "timesformer": HFTimesformer,
    "videomae": HFVideoMAE,
    "vivit": HFVivit,
    "vjepa2": HFVJEPA2,
    "videoprism_vision_model": HFVideoPrism,
}


# Video-text models whose classifier is their text side, by model type.
_ZERO_SHOT = {"xclip"}


class HFZeroShot(_HFShared, LogitsOnlyAdapter):
    """A video-text model (X-CLIP) as a classifier of the data's classes, zero-shot: class k's
    logit is the model's scaled similarity between the clip and the text of its name
    (``logits_per_video``). ``set_class_names`` gives the classes; until then it has none.

    For the order probe: its blocks are the frame encoder's layers (each frame's tokens, the
    frames exchanging only message tokens), and its final per-frame tokens are the output of the
    multi-frame integration transformer, one token per frame, before the clip's mean."""

    family = "hf"
    zero_shot = True
    flexible_size = False  # its position embeddings are for its frame size alone

    def __init__(self, model: nn.Module, tokenizer: Any, *, mean, std, source: str):
        vision = model.config.vision_config
        super().__init__(
            model,
            reason="a zero-shot video-text model is scored, not trained",
            num_frames=vision.num_frames,
            img_size=vision.image_size,
            embed_dim=0,
            num_classes=0,
            mean=mean,
            std=std,
            source=source,
        )
        self.tokenizer = tokenizer
        self.prompt = "{}"
        # Tokens per frame and layer (see the class): the order probe and GradCAM apply.
        for capability in ("order_probe", "gradcam"):
            del self.unsupported[capability]
        # The classes' tokenised texts: made from the data, not saved with the weights.
        self.register_buffer("input_ids", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        self.register_buffer("text_mask", torch.zeros(0, 0, dtype=torch.long), persistent=False)
        # The text encoder's output for them, kept between batches (see ``logits``).
        self._text: tuple[tuple, Any] | None = None

    def set_class_names(self, names: list[str], prompt: str = "{}") -> None:
        """Score these classes, each by the text ``prompt.format(name)``."""
        if names and all(str(name).strip().isdigit() for name in names):
            shown = ", ".join(map(str, names[:3])) + (", ..." if len(names) > 3 else "")
            raise ValueError(
                f"a zero-shot video-text model scores classes by their names, and these are "
                f"numbers ({shown}): give the names (a video list labelled by index: "
                "data.class_list, one name per line in index order)"
            )
        texts = [prompt.format(name) for name in names]
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        _refuse_same_tokens(names, tokens["input_ids"], tokens["attention_mask"])
        device = self.input_ids.device
        self.input_ids = tokens["input_ids"].to(device)
        self.text_mask = tokens["attention_mask"].to(device)
        self.class_names, self.prompt = list(names), prompt
        self.num_classes = self.embed_dim = len(names)
        self._text = None

    def check_input(self, video: torch.Tensor) -> None:
        Adapter.check_input(self, video)  # its clip length and frame size, each with its override

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "zero_shot_prompt": self.prompt,
            "blocks": "the frame encoder's layers (frames exchange message tokens only); final: "
            "the multi-frame integration transformer's output per frame",
        }

    @property
    def token_frames(self) -> int:
        return self.num_frames

    def block_modules(self) -> list[nn.Module]:
        return list(self.model.vision_model.encoder.layers)

    def block_grid(self, output: Any) -> torch.Tensor:
        # [(B T), 1 + S, D] per frame, its class token first
        return rearrange(unwrap_output(output)[:, 1:], "(b t) s d -> b t s d", t=self.num_frames)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The last frame-encoder layer's first LayerNorm: each frame's tokens its attention
        reads, [(B T), 1 + S + 1, D] with the frame's class token first and the message token
        last."""
        h = w = self.img_size // self.model.config.vision_config.patch_size

        def reshape(x: torch.Tensor) -> torch.Tensor:
            patches = x[:, 1 : 1 + h * w].float()
            return rearrange(patches, "(b t) (h w) d -> b d t h w", t=self.num_frames, h=h, w=w)

        return self.model.vision_model.encoder.layers[-1].layer_norm1, reshape

    def features(self, video: torch.Tensor) -> VideoTokens:
        frames: list[torch.Tensor] = []
        handle = self.model.mit.register_forward_hook(
            lambda _m, _args, output: frames.append(unwrap_output(output))
        )
        try:
            logits = self.logits(video)
        finally:
            handle.remove()
        return VideoTokens(cls=logits, patches=frames[0][:, :, None])  # [B, T, 1, D]

    def logits(self, video: torch.Tensor) -> torch.Tensor:
        if not self.num_classes:
            raise ValueError(
                f"{self.source} is a zero-shot video-text model: it scores the classes it is "
                "given as text, and none were given; give evaluate or diagnose classes=names, "
                'or model.set_class_names(names, prompt="a video of {}") (predict --classes FILE)'
            )
        # X-CLIP conditions each class's text on the clip, but only after its text encoder, whose
        # output depends on the texts alone: it runs once per class list (and device and
        # precision), not on every batch; the model's own forward does the rest.
        text_model = self.model.text_model
        self.model.text_model = _CachedOutput(text_model, self._text_output(text_model))
        try:
            return self.model(
                input_ids=self.input_ids,
                attention_mask=self.text_mask,
                pixel_values=_pixel_values(video),
            ).logits_per_video
        finally:
            self.model.text_model = text_model

    def _text_output(self, text_model: nn.Module) -> Any:
        key = (
            self.input_ids.device,
            torch.is_autocast_enabled(self.input_ids.device.type),
            torch.get_autocast_dtype(self.input_ids.device.type),
        )
        if self._text is None or self._text[0] != key:
            with torch.no_grad():  # the class texts are fixed: no gradient reaches them
                output = text_model(input_ids=self.input_ids, attention_mask=self.text_mask)
            self._text = (key, output)
        return self._text[1]


def _refuse_same_tokens(names: list[str], ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Two class names whose texts tokenise alike would get the same logit, always: refused."""
    seen: dict[tuple[int, ...], str] = {}
    for name, row, keep in zip(names, ids.tolist(), mask.tolist(), strict=True):
        tokens = tuple(token for token, kept in zip(row, keep, strict=True) if kept)
        if tokens in seen and seen[tokens] != name:
            raise ValueError(
                f"the class names {seen[tokens]!r} and {name!r} give the same tokens (the "
                "tokenizer drops or does not know what tells them apart), so the same score: "
                "rename one, or save the model's own tokenizer with it"
            )
        seen.setdefault(tokens, name)


class _CachedOutput(nn.Module):
    """Stands in for a module during one call, returning its output computed before."""

    def __init__(self, module: nn.Module, output: Any):
        super().__init__()
        self.config = getattr(module, "config", None)
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


class HFClassifier(_HFShared, LogitsOnlyAdapter):
    """Any other transformers video classifier: logits only."""

    family = "hf"
    classifier_name = "model.classifier"

    def __init__(self, model: nn.Module, *, mean, std, source: str):
        config = model.config
        frames, size = _clip_size(config)
        super().__init__(
            model,
            reason=f"timematters has no token layout for the {config.model_type} architecture",
            num_frames=frames,
            img_size=size,
            embed_dim=config.num_labels,
            num_classes=config.num_labels,
            mean=mean,
            std=std,
            class_names=_class_names(model),
            source=source,
        )

    def logits(self, video: torch.Tensor) -> torch.Tensor:
        return _logits(self.model, video)
