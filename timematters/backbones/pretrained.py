"""Loading pretrained weights from a local file into any backbone, checked key by key.

Sources: a timm ImageNet ViT (inflated by the backbone), an official checkpoint (``model_state``
wrapper, ``model.`` prefix), a Hugging Face ``transformers`` state dict, and our own checkpoints;
files ``.pth``/``.pyth``/``.pt``/``.bin`` (read with ``weights_only=True``) and ``.safetensors``.

The steps: read and unwrap, detect the source, let the backbone rename/inflate
(``model.convert_state_dict(state_dict, source) -> (state_dict, expected_missing)``), resize the
spatial and temporal embeddings, drop a classifier of another number of classes, then check the
keys. Every missing, unexpected or mis-shaped key is named in one ``PretrainedKeyError`` (or, for
a file that holds (almost) none of the model's keys, one line saying so); weights are copied into
the model only after that check passed.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from timematters.backbones.layers import resample_pos_embed, resample_time_embed
from timematters.backbones.protocol import convert_state_dict

TORCH_SUFFIXES = (".pth", ".pyth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
# Checkpoint wrappers: official TimeSformer/SlowFast, ours and MAE/DeiT, Lightning-style, DDP.
WRAPPER_KEYS = ("model_state", "model", "state_dict", "module")
PREFIXES = ("model.", "module.")
# Temporal embeddings are resized along their frame axis: TimeSformer's time_embed, the
# Motionformer / X-ViT temp_embed.
TEMPORAL_EMBEDDINGS = ("time_embed", "temp_embed")
# Fewer than one in this many of the model's keys in a file: weights of another network, whose
# every missing and unexpected key would only bury that (hundreds of names).
ALMOST_NONE = 10


def key_differences(
    target: dict[str, torch.Tensor],
    given: dict[str, torch.Tensor],
    expected_missing: Collection[str] = (),
) -> tuple[list[str], list[str], dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """How weights ``given`` for a model whose state dict is ``target`` differ from it: the keys
    missing (but ``expected_missing``), the unexpected ones, and those of another shape (given,
    the model's)."""
    missing = sorted(k for k in target if k not in given and k not in expected_missing)
    unexpected = sorted(k for k in given if k not in target)
    mismatched = {
        k: (tuple(v.shape), tuple(target[k].shape))
        for k, v in given.items()
        if k in target and v.shape != target[k].shape
    }
    return missing, unexpected, mismatched


class PretrainedKeyError(KeyError):
    """The checkpoint does not fit the model; names every missing, unexpected and mis-shaped key,
    or, when (almost) none of ``model_keys`` are among ``file_keys``, says so in one line with a
    few keys of each side."""

    def __init__(
        self,
        path: str | Path,
        missing: list[str],
        unexpected: list[str],
        mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
        *,
        model_keys: list[str] | None = None,
        file_keys: list[str] | None = None,
    ):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        if model_keys is not None and file_keys is not None:
            matched = len(set(model_keys) & set(file_keys))
            if matched * ALMOST_NONE < len(model_keys):
                super().__init__(_unrelated_message(path, model_keys, file_keys, matched))
                return
        lines = [f"{path} does not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        for key, (theirs, ours) in mismatched.items():
            hint = " (a different patch size?)" if key.startswith("patch_embed.") else ""
            lines.append(f"  {key}: checkpoint {list(theirs)}, model {list(ours)}{hint}")
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        # KeyError would print the repr of the message, newlines escaped.
        return self.args[0]


def _unrelated_message(
    path: str | Path, model_keys: list[str], file_keys: list[str], matched: int
) -> str:
    how_many = "none" if matched == 0 else f"only {matched}"
    return (
        f"{path} does not fit the model: {how_many} of the model's {len(model_keys)} keys are in "
        f"it (weights of another network?); the model's keys: {_examples(model_keys)}; the "
        f"file's {len(file_keys)}: {_examples(file_keys)}"
    )


def _examples(keys: list[str], count: int = 5) -> str:
    """The first key of each of the first ``count`` top-level modules: a glimpse of the layout
    (``stem``, ``layer1``, ... against ``cls_token``, ``patch_embed``, ``blocks``, ...)."""
    firsts: dict[str, str] = {}
    for key in keys:
        firsts.setdefault(key.split(".")[0], key)
    shown = list(firsts.values())[:count]
    return ", ".join(shown) + (", ..." if len(keys) > len(shown) else "")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: where the weights came from and what it changed."""

    path: str
    source: str
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)  # keys the model initialised itself
    dropped: list[str] = field(default_factory=list)  # checkpoint heads of another class count
    objective: list[str] = field(default_factory=list)  # keys loaded into the TIME heads
    notes: list[str] = field(default_factory=list)  # what else was converted or left out, and why

    def describe(self) -> list[str]:
        """One line for each thing the load changed that a user should read in the run's log
        (the load is never silently partial): embeddings resized, a classifier of another class
        count left out, tensors the model initialised itself, and the notes."""
        lines = [f"{k} resized from {list(a)} to {list(b)}" for k, (a, b) in self.resized.items()]
        if self.dropped:
            lines.append(
                f"its classifier ({len(self.dropped)} tensors) has another class count: left "
                "out, trained anew"
            )
        if self.new:
            shown = ", ".join(self.new[:5]) + (", ..." if len(self.new) > 5 else "")
            lines.append(f"{len(self.new)} tensors not in it, initialised anew: {shown}")
        return lines + self.notes


# The TIME release keeps its loss heads in the backbone; ours live in the objective's losses.
TIME_HEADS = {
    "temp_head.": "losses.order.temp_head.",
    "mlp_q.": "losses.flow.mlp_q.",
    "mlp_k.": "losses.flow.mlp_k.",
    "mlp_v.": "losses.flow.mlp_v.",
    "mlp_proj.": "losses.flow.mlp_proj.",
    "mlp_norm.": "losses.flow.mlp_norm.",
    "flow_head.": "losses.flow.flow_head.",
}


def read_state_dict(path: str | Path | dict) -> dict[str, torch.Tensor]:
    """A state dict from a local file (or one in memory), unwrapping checkpoint dicts and
    ``model.`` / ``module.`` prefixes."""
    where = Path("<state dict>") if isinstance(path, dict) else Path(path)
    return _unwrap(read_weights_file(path), where)


def read_weights_file(path: str | Path | dict) -> object:
    """What a weights file holds, as saved (a dict in memory is returned as it is); ``path`` may
    name a file on the Hugging Face hub (``resolve_weights``)."""
    if isinstance(path, dict):
        return path
    path = resolve_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise ValueError(f"cannot read {path} as safetensors: {error}") from error
    elif path.suffix in TORCH_SUFFIXES:
        obj = load_torch_file(path, what="weights file")
    else:
        supported = ", ".join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))
        raise ValueError(f"{path}: unknown weights format {path.suffix!r}; expected {supported}")
    return obj


def resolve_weights(spec: str | Path) -> Path:
    """The local file of a weights spec: a path as it is, or a file of the Hugging Face hub,
    downloaded into the hub's cache on first use and read from there after (``HF_HUB_OFFLINE=1``:
    the cache only).

    ``timm:NAME``: timm's weights of model NAME (``timm:vit_base_patch16_224.orig_in21k_ft_in1k``,
    the hub's ``timm/NAME``, what ``timm.create_model(NAME, pretrained=True)`` loads).
    ``hf-hub:REPO[:FILE]``: FILE of the hub repository REPO (default: ``model.safetensors``, else
    ``pytorch_model.bin``).
    """
    text = str(spec)
    if text.startswith("timm:"):
        repo, file = f"timm/{text.removeprefix('timm:')}", ""
    elif text.startswith("hf-hub:"):
        repo, _, file = text.removeprefix("hf-hub:").partition(":")
    else:
        return Path(spec)
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.utils import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise ImportError(
            f"{spec}: weights from the hub need huggingface_hub (pip install huggingface_hub), "
            "or give a local file"
        ) from None
    names = (file,) if file else ("model.safetensors", "pytorch_model.bin")
    for name in names:  # the cache first: no network needed for what was fetched before
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):
            return Path(cached)
    for name in names:
        try:
            return Path(hf_hub_download(repo, name))
        except LocalEntryNotFoundError:  # not in the cache, and the hub out of reach
            raise ValueError(
                f"{spec}: not in the Hugging Face hub cache and the hub cannot be reached; "
                "download it once while online (the cache keeps it), or give a local file"
            ) from None
        except EntryNotFoundError:  # the repository has no such file
            continue
        except RepositoryNotFoundError:
            raise ValueError(
                f"{spec}: the hub has no repository {repo} (or it is private or gated: log in "
                "with `hf auth login`); give a local file instead"
            ) from None
    raise ValueError(f"{spec}: the hub repository {repo} has no {' or '.join(names)}")


def load_torch_file(path: str | Path, what: str = "checkpoint") -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one clear ``ValueError``.

    Pickled Python objects are refused (they could run code); an empty, truncated or foreign file
    is named as such instead of surfacing as EOFError or KeyError from the unpickler.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"{path} is empty (0 bytes): not a {what}")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch's zip format, or a legacy pickle
        raise ValueError(f"{path} is not a torch file (it starts with {head!r}): not a {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refusing to load {path}: it holds pickled Python objects, which a weights-only "
            f"load refuses (re-save only its tensors): "
            f"{str(error).strip().splitlines()[0]}"
        ) from None
    except Exception as error:  # EOFError, RuntimeError, ... from a damaged file
        raise ValueError(
            f"cannot read {path} as a {what} ({type(error).__name__}: {error}); "
            "is it truncated or damaged?"
        ) from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path}: entries that are not tensors: {', '.join(map(str, not_tensors))}"
        )
    # Strip a prefix only when every key carries it (official .pyth files, DDP checkpoints).
    stripped = True
    while stripped and obj:
        stripped = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in obj):
                obj = {k.removeprefix(prefix): v for k, v in obj.items()}
                stripped = True
    return obj


def weights_normalisation(spec: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std a ``timm:NAME`` spec's weights were trained with (timm's pretrained
    config, read without a download); None for other weights, or a name timm does not know."""
    text = str(spec)
    if not text.startswith("timm:"):
        return None
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(text.removeprefix("timm:"))
    if config is None or config.mean is None or config.std is None:
        return None
    return tuple(config.mean), tuple(config.std)


def detect_source(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the convention of a state dict's keys.

    "hf_timesformer": Hugging Face ``transformers`` (``timesformer.``, ``embeddings.`` keys);
    "timm_vit": an image ViT (blocks but no temporal parameters, to be inflated);
    "official": already the official names, which our checkpoints use too.
    """
    keys = list(state_dict)
    if any(k.startswith(("timesformer.", "embeddings.", "encoder.layer.")) for k in keys):
        return "hf_timesformer"
    temporal = any("temporal" in k or k.split(".")[0] in TEMPORAL_EMBEDDINGS for k in keys)
    if not temporal and any(k.startswith("blocks.") for k in keys):
        return "timm_vit"
    return "official"


def load_pretrained(
    model: nn.Module,
    path: str | Path | dict,
    *,
    objective: nn.Module | None = None,
    num_classes_changed_ok: bool = True,
) -> LoadReport:
    """Load weights from ``path`` (a file, or a state dict in memory) into ``model``; raise
    ``PretrainedKeyError`` unless they fit.

    A classifier head (keys under ``model.classifier_name``) that is absent or has another number
    of classes is left to the model's initialisation when ``num_classes_changed_ok``. TIME heads
    in the checkpoint (the official release's ``temp_head``, ``mlp_*``, ``flow_head``, or our own
    checkpoints' ``objective``) go into ``objective``'s loss modules; heads of losses that are off,
    or all of them without ``objective``, are left out and noted.
    """
    where = "<state dict>" if isinstance(path, dict) else str(path)
    raw = read_weights_file(path)
    state_dict = _unwrap(raw, Path(where))
    notes: list[str] = []
    state_dict = _drop_distillation_token(state_dict, notes)
    _refuse_unknown_layouts(state_dict, where)
    state_dict = _class_token_position(state_dict, notes)
    state_dict, heads = _split_time_heads(state_dict)
    if isinstance(raw, dict) and isinstance(raw.get("objective"), dict):  # our checkpoints
        heads.update(raw["objective"])
    source = detect_source(state_dict)
    state_dict, expected_missing = convert_state_dict(model, state_dict, source)
    state_dict = dict(state_dict)
    report = LoadReport(path=where, source=source, notes=notes)
    target = model.state_dict()

    for key, value in list(state_dict.items()):
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        resized = _resize_embedding(key, value, want.shape, model)
        if resized is not None and resized.shape == want.shape:
            state_dict[key] = resized
            report.resized[key] = (tuple(value.shape), tuple(want.shape))

    classifier = getattr(model, "classifier_name", "")
    head = classifier + "."
    head_keys = {k for k in target if k.startswith(head)} if classifier else set()
    head_changed = any(
        k not in state_dict or state_dict[k].shape != target[k].shape for k in head_keys
    )
    if head_changed and num_classes_changed_ok:
        report.dropped = sorted(k for k in head_keys if k in state_dict)
        state_dict = {k: v for k, v in state_dict.items() if k not in head_keys}
        expected_missing = set(expected_missing) | head_keys

    missing, unexpected, mismatched = key_differences(target, state_dict, expected_missing)
    if missing or unexpected or mismatched:
        raise PretrainedKeyError(
            where,
            missing,
            unexpected,
            mismatched,
            model_keys=[k for k in target if k not in expected_missing],
            file_keys=list(state_dict),
        )
    not_finite = sorted(
        k
        for k, v in {**state_dict, **heads}.items()
        if v.is_floating_point() and not torch.isfinite(v).all()
    )
    if not_finite:
        shown = ", ".join(not_finite[:5]) + (" ..." if len(not_finite) > 5 else "")
        raise ValueError(
            f"{where}: {len(not_finite)} tensors hold NaN or infinite values ({shown}); "
            "refusing to start from them"
        )

    model.load_state_dict(state_dict, strict=False)
    report.new = sorted(k for k in target if k not in state_dict)
    if heads:
        _load_time_heads(objective, heads, report)
    return report


def _split_time_heads(state_dict: dict) -> tuple[dict, dict]:
    """(backbone keys, TIME head keys renamed to the objective's) of a state dict."""
    backbone, heads = {}, {}
    for key, value in state_dict.items():
        name = key.removeprefix("base_model.")
        prefix = next((p for p in TIME_HEADS if name.startswith(p)), None)
        if prefix is None:
            backbone[key] = value
        else:
            heads[TIME_HEADS[prefix] + name[len(prefix) :]] = value
    return backbone, heads


def _load_time_heads(objective: nn.Module | None, heads: dict, report: LoadReport) -> None:
    """Copy the TIME heads that ``objective`` has into it; note the rest."""
    if objective is None:
        report.notes.append(
            f"{len(heads)} TIME head tensors left out: no objective to load them into"
        )
        return
    target = objective.state_dict()
    if "losses.flow.mlp_k.bias" in heads and "losses.flow.mlp_k.bias" not in target:
        del heads["losses.flow.mlp_k.bias"]
        report.notes.append(
            "mlp_k.bias dropped: the flow head's key bias adds one logit to every key, softmax "
            "cancels it and its gradient is 0, so ours has none"
        )
    usable = {k: v for k, v in heads.items() if k in target and v.shape == target[k].shape}
    off = sorted({k.split(".")[1] for k in heads if k not in target})
    if off:
        report.notes.append(f"TIME heads of losses that are off left out: {', '.join(off)}")
    fresh = sorted({k.split(".")[1] for k in target if k not in usable})
    if fresh:  # absent, or sized for other frames (an order head of 8 positions for 16 frames)
        report.notes.append(
            f"TIME heads not in the checkpoint or of another size, initialised: {', '.join(fresh)}"
        )
    objective.load_state_dict(usable, strict=False)
    report.objective = sorted(usable)


def _drop_distillation_token(state_dict: dict, notes: list[str]) -> dict:
    """A distilled DeiT's second prefix token, its position and its head, removed: a starting
    point to train from, not the distilled network (its other tokens attended to that token, so
    the class head's outputs move a little without it)."""
    if "dist_token" not in state_dict:
        return state_dict
    out = {
        k: v for k, v in state_dict.items() if k != "dist_token" and not k.startswith("head_dist.")
    }
    pos = out.get("pos_embed")
    if pos is not None:
        out["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
    notes.append(
        "distilled DeiT: dist_token, its position and head_dist left out (the network without "
        "them computes a little otherwise: weights to train from)"
    )
    return out


def _class_token_position(state_dict: dict, notes: list[str]) -> dict:
    """A ViT whose position embedding covers its patches only (timm's ``no_embed_class``, as in
    DeiT-III) adds none to its class token: a zero position for it computes the same."""
    pos = state_dict.get("pos_embed")
    if pos is None or "cls_token" not in state_dict or pos.ndim != 3:
        return state_dict
    if math.isqrt(pos.shape[1]) ** 2 != pos.shape[1]:  # patches and the class token's
        return state_dict
    notes.append("pos_embed of patches only (DeiT-III): the class token's position is zero")
    return {**state_dict, "pos_embed": torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)}


def _refuse_unknown_layouts(state_dict: dict, where: str) -> None:
    """Layouts our backbones cannot compute, named by their real cause rather than by a list of
    unexpected keys."""
    if any(k.startswith("norm_pre.") for k in state_dict):
        raise ValueError(
            f"{where} is a CLIP-style ViT (norm_pre: a LayerNorm before the first block, which "
            "timematters' backbones do not have); its weights would compute something else"
        )
    if "reg_token" in state_dict:
        raise ValueError(
            f"{where} is a ViT with register tokens (timm's reg_tokens), which timematters' "
            "backbones do not have: they hold the class token only"
        )
    if any(k.startswith(("vit.embeddings.", "vit.encoder.")) for k in state_dict):
        raise ValueError(
            f"{where} is a transformers ViT (ViTForImageClassification's key names): give timm's "
            "weights of the same network (model.pretrained=timm:NAME), whose names timematters "
            "reads"
        )
    vit_blocks = "pos_embed" in state_dict and any(k.startswith("blocks.") for k in state_dict)
    if vit_blocks and "cls_token" not in state_dict:
        raise ValueError(
            f"{where} is a ViT without a class token (timm's class_token=False, which pools "
            "its patch tokens): timematters' backbones classify from the class token"
        )


def _resize_embedding(
    key: str, value: torch.Tensor, shape: torch.Size, model: nn.Module
) -> torch.Tensor | None:
    """Resample a spatial or temporal embedding to the model's shape; None for any other key."""
    if key == "pos_embed" and value.shape[-1] == shape[-1]:
        return resample_pos_embed(value, tuple(model.grid))
    if key in TEMPORAL_EMBEDDINGS and value.ndim == len(shape):
        differing = [d for d in range(value.ndim) if value.shape[d] != shape[d]]
        if len(differing) == 1:
            return resample_time_embed(value, shape[differing[0]], dim=differing[0])
    return None
