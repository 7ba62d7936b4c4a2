"""The backbone contract: what every video model hands to the losses, evaluation and diagnostics.

``VideoBackbone`` is the one boundary. Our backbones implement it directly; adapters of other
models (Hugging Face, torchvision, a user's module) implement it by converting their layout once.
Downstream code asks the model what it is (``token_frames``, ``grid``, ``patch_size``) instead of
guessing from attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class VideoTokens:
    """Final tokens of a video backbone, after its final norm.

    cls:     [B, D]        the clip-level token the classifier reads.
    patches: [B, T, S, D]  one token per token frame t and patch s (S = h*w, row-major,
                           patch-embed order); T is ``token_frames`` (input frames / tubelet).
    blocks:  per-block patch tokens [B, T, S, D] (block outputs before the final norm), only when
             asked for with ``forward_features(video, return_blocks=True)``. In our backbones
             ``blocks[i]`` is the tensor block i + 1 reads, so gradients taken with respect to it
             are real (GradCAM's tap). Adapters read theirs with forward hooks and a rearrange:
             copies, for the order probe only; they name a ``gradcam_layer()`` instead.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    blocks: tuple[torch.Tensor, ...] | None = None

    @property
    def frame_features(self) -> torch.Tensor:
        """Per-frame mean over the S patch tokens (paper Eq. 6): [B, T, D]."""
        return self.patches.mean(dim=2)


@runtime_checkable
class VideoBackbone(Protocol):
    """A video classifier that exposes its tokens.

    Input: a normalised video [B, C, T, H, W] with T = ``num_frames``.
    ``forward(video) == forward_head(forward_features(video).cls)``. ``grid`` is the (h, w) of the
    token grid of each token frame and ``patch_size`` the pixels one grid cell spans, so that
    H = W = ``grid[0] * patch_size``: a ViT's patch, a 3-D CNN's total spatial stride (its last
    feature map is the grid: 32² frames to an 8 × 8 map, ``patch_size`` 4). Adapters, which
    check their clips themselves (``check_input``), may differ: torchvision's 3-D networks take
    any frame size and keep ``patch_size`` 1, a logits-only adapter's grid is (1, 1).
    The frame side H = W goes by timm's ``img_size`` in the models, by ``data.crop_size`` in the
    config (the clips are cropped to it) and by ``frame_size`` in reports and exports.

    Optional members, read with a default where a model lacks them (the adapters have them all;
    they stay out of the Protocol, as ``isinstance`` would then refuse a user's module that
    honours the members above):

    - ``unsupported``: capability (``CAPABILITIES``) -> the reason the model cannot give it;
      default {}, everything applies.
    - ``class_names`` (default None: "0".."K-1"), ``num_classes``, ``source`` (its spec or
      checkpoint path, for messages and reports).
    - ``mean`` / ``std``: the normalisation it takes clips in (default 0.5 / 0.5).
    - ``set_input_normalisation(mean, std)``, with ``input_mean`` / ``input_std``: the clips'
      normalisation, which an adapter converts to its ``mean`` / ``std``.
    - ``describe()``: what reports say about it (default: built from the members above).
    - ``gradcam_layer()``: (module, reshape to [B, C, T', h, w]) for GradCAM, for a model whose
      ``blocks`` are not graph tensors (default: a tap on ``blocks[-2]``).
    - ``set_grad_checkpointing(enable)``: for ``model.grad_checkpointing``.
    - ``block_modules()``: the blocks in depth order, for ``optim.layer_decay`` (default: the
      ``blocks`` ModuleList our backbones keep); read through ``depth_blocks``.
    - ``modules_in_forward_order()``: the model's parts in the order its forward pass runs them,
      for ``optim.layer_decay`` where they are registered otherwise (default: ``parameters()``
      order).
    - ``tubelet``: frames per token frame, for the flow labels (default: ``num_frames //
      token_frames``).
    - ``classifier_name``: the prefix of the classifier's parameters (``"head"``), so that a
      checkpoint's classifier for other classes is left out when loading; default "".
    - ``convert_state_dict(state_dict, source) -> (state_dict, keys it cannot provide)``: a
      foreign checkpoint (``source``: timm's ViT, the official release, ...) in the model's key
      names, for ``model.pretrained`` / ``--init-from``; read through ``convert_state_dict``
      (default: the state dict as it is).
    """

    embed_dim: int  # D, the width of cls and patch tokens
    num_frames: int  # input frames
    patch_size: int  # pixels per patch side
    grid: tuple[int, int]  # (h, w) patches per frame; S = h * w

    @property
    def token_frames(self) -> int:
        """Frames in the token grid: ``num_frames`` divided by the temporal tubelet size."""
        ...

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens: ...

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor: ...

    def forward(self, video: torch.Tensor) -> torch.Tensor: ...


class ProtocolError(TypeError):
    """A model that does not honour ``VideoBackbone`` as it claims to (a member missing or of the
    wrong kind, tokens in another form): the user's module to fix, not a bug here."""


# What ``isinstance(model, VideoBackbone)`` asks of a model, to name what one lacks.
PROTOCOL_MEMBERS = (
    "embed_dim",
    "num_frames",
    "patch_size",
    "grid",
    "token_frames",
    "forward_features",
    "forward_head",
)


# What a model may be unable to do, the keys of an adapter's ``unsupported`` (capability ->
# reason): the per-block order probe, GradCAM maps, and the order and flow losses. Listed in the
# order reports show them.
CAPABILITIES = ("order_probe", "gradcam", "flow", "order")


def convert_state_dict(
    model: torch.nn.Module, state_dict: dict, source: str
) -> tuple[dict, set[str]]:
    """``model.convert_state_dict(state_dict, source)``, or the state dict as it is for a model
    that converts none (the protocol's optional part)."""
    convert = getattr(model, "convert_state_dict", None)
    return convert(state_dict, source) if callable(convert) else (state_dict, set())


def tokens_with_blocks(model: torch.nn.Module, video: torch.Tensor) -> VideoTokens:
    """``forward_features(video, return_blocks=True)``, or for a model whose ``forward_features``
    takes no ``return_blocks`` (the protocol's optional part) its tokens without ``blocks``."""
    try:
        return model.forward_features(video, return_blocks=True)
    except TypeError as error:
        if "return_blocks" not in str(error):
            raise
        return model.forward_features(video)


def model_name(model: object) -> str:
    """How messages name a model: its spec (an adapter's ``source``), else its class."""
    return getattr(model, "source", "") or type(model).__name__


def depth_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's blocks in depth order (``block_modules()``, else a ``blocks`` ModuleList), or
    [] for a model that names none."""
    if callable(getattr(model, "block_modules", None)):
        return list(model.block_modules())
    blocks = getattr(model, "blocks", None)
    return list(blocks) if isinstance(blocks, torch.nn.ModuleList) else []


def lacking_members(model: object) -> list[str]:
    """The members of ``PROTOCOL_MEMBERS`` that ``model`` lacks ([] for a model the protocol sizes:
    a stub or a logits-only module lacks some)."""
    return [name for name in PROTOCOL_MEMBERS if not hasattr(model, name)]


def check_protocol(model: torch.nn.Module) -> None:
    """The sizes the objective reads, named when missing or not numbers (a method, say)."""
    lacking = lacking_members(model)
    if lacking:
        kind = type(model).__module__
        hint = (
            "; a transformers or torchvision video model honours it in its adapter: model = "
            "timematters.backbones.adapters.as_video_backbone(model), then train that (it holds "
            "the same weights)"
            if kind.startswith(("transformers.", "torchvision.models.video."))
            else ""
        )
        raise ProtocolError(
            f"{type(model).__name__} lacks {', '.join(lacking)} of the VideoBackbone protocol "
            f"(timematters.backbones.protocol.VideoBackbone); the objective reads its sizes "
            f"there{hint}"
        )
    for name in ("embed_dim", "num_frames", "token_frames", "patch_size"):
        value = getattr(model, name)
        if not _is_int(value):
            raise ProtocolError(
                f"{type(model).__name__}.{name} is a {type(value).__name__}; the protocol wants "
                f"an int (a property, not a method, for a computed one)"
            )
    grid = model.grid
    if not (isinstance(grid, tuple | list) and len(grid) == 2 and all(map(_is_int, grid))):
        raise ProtocolError(
            f"{type(model).__name__}.grid is {grid!r}; the protocol wants (h, w), two ints: the "
            "token grid of a frame, (4, 4) for 16 patches"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_clip_sizes(model: torch.nn.Module, video: torch.Tensor) -> None:
    """Clips of the length and frame size the model declares, before its forward pass fails
    inside on others (or, pooling, runs on clips it was not built for). An adapter checks them
    itself (``check_input``, which knows which sizes its network is flexible in); a size of 0 is
    one the model does not declare."""
    if callable(getattr(model, "check_input", None)):
        model.check_input(video)
        return
    name, (T, H, W) = model_name(model), video.shape[2:]
    if model.num_frames and model.num_frames != T:
        raise ValueError(
            f"{name} declares num_frames {model.num_frames} but the clips have {T} frames: give "
            f"it {model.num_frames}-frame clips (in a config: model.num_frames="
            f"{model.num_frames}), or build it for {T}"
        )
    frame = (model.grid[0] * model.patch_size, model.grid[1] * model.patch_size)
    if all(frame) and frame != (H, W):
        raise ValueError(
            f"{name} declares a grid {tuple(model.grid)} of {model.patch_size}-pixel cells, "
            f"{frame[0]}x{frame[1]} frames, but the clips are {H}x{W}: crop them to "
            f"{frame[0]} (in a config: data.crop_size={frame[0]}), or give the model's grid and "
            "patch_size for these frames (a 3-D CNN: its last feature map and total stride)"
        )


def check_tokens(
    tokens: VideoTokens, model: torch.nn.Module, batch_size: int, *, frames: int | None = None
) -> None:
    """Tokens in the protocol's layout, cls [B, D] and patches [B, T, S, D], with the sizes the
    model declares: the losses' heads were sized from them, and patches in another layout of
    the same sizes ([B, S, T, D] when S = T) would train the order head on patch positions.
    ``frames``: the clips' length, named when it is not the model's."""
    if not isinstance(tokens, VideoTokens):
        raise ProtocolError(
            f"{type(model).__name__}.forward_features returned a {type(tokens).__name__}; the "
            "protocol wants VideoTokens(cls=[B, D], patches=[B, T, S, D]) "
            "(timematters.backbones.VideoTokens)"
        )
    expected = (batch_size, model.token_frames, model.grid[0] * model.grid[1], model.embed_dim)
    patches, cls = tokens.patches, tokens.cls
    if 0 in expected:  # a size the model does not know (a module's logits adapter, unsized)
        return
    if frames is not None and frames != model.num_frames and patches.shape[1] != expected[1]:
        raise ValueError(
            f"the clips have {frames} frames but {type(model).__name__}.num_frames is "
            f"{model.num_frames} (its token_frames {model.token_frames}, sizing the losses' "
            "heads): give clips of num_frames frames, or build the model for the clips"
        )
    if tuple(patches.shape) != expected or tuple(cls.shape) != (batch_size, model.embed_dim):
        raise ValueError(
            f"{type(model).__name__}.forward_features gave patches {list(patches.shape)} and cls "
            f"{list(cls.shape)}; its sizes say patches [B, token_frames, grid h*w, embed_dim] = "
            f"{list(expected)} and cls {[batch_size, model.embed_dim]} (patches in (t, s) order: "
            "einops.rearrange(x, 'b d t h w -> b t (h w) d') from a [B, D, T, h, w] map)"
        )


def check_blocks(tokens: VideoTokens, model: torch.nn.Module, batch_size: int) -> None:
    """Per-block tokens [B, T', S', D'] the order probe can read: a frame axis second, of no more
    frames than the clips have (a block in [B, S, T, D] would be probed for patch positions and
    reported as frame order)."""
    for i, block in enumerate(tokens.blocks or (), start=1):
        shape = list(getattr(block, "shape", ()))
        if len(shape) != 4 or shape[0] != batch_size or not 1 <= shape[1] <= model.num_frames:
            raise ValueError(
                f"{type(model).__name__}.forward_features(video, return_blocks=True) gave block "
                f"{i} as {shape or type(block).__name__}; blocks are patch tokens [B, T', S', D] "
                f"with T' token frames, at most the clips' {model.num_frames} (patches in "
                "(t, s) order: einops.rearrange(x, 'b (t s) d -> b t s d', t=T'))"
            )


def frames_per_token_frame(model: torch.nn.Module) -> int:
    """The model's temporal tubelet: its ``tubelet`` where it declares one (the adapters do), else
    ``num_frames // token_frames`` (which 3-frame tubelets over 8 frames would make 4)."""
    tubelet = getattr(model, "tubelet", None)
    if isinstance(tubelet, int) and not isinstance(tubelet, bool) and tubelet > 0:
        return tubelet
    return max(1, model.num_frames // max(1, model.token_frames))


def check_clips(video: object, *, views: bool = False, values: bool = True) -> None:
    """Clips as every model takes them, float ``[B, 3, T, H, W]`` normalised (with ``views``,
    ``[B, V, 3, T, H, W]`` too), or a ValueError that says how to get there from what was given.
    ``values``: also refuse float pixels in [0, 255] (one pass over a CPU tensor)."""
    if not isinstance(video, torch.Tensor):
        raise ValueError(
            f"clips must be one tensor [B, 3, T, H, W], got a {type(video).__name__}; "
            "torch.stack a list of [3, T, H, W] clips"
        )
    shape, dims = list(video.shape), (5, 6) if views else (5,)
    if video.ndim == 4 and shape[0] == 3:
        raise ValueError(
            f"got one clip {shape}, not a batch: video[None] is a batch of one, and a list of "
            "(clip, label) pairs is a Dataset to wrap in a DataLoader"
        )
    if video.ndim in dims and shape[-4] == 3 and video.is_floating_point():
        if values:
            _check_value_range(video)
        return
    layout = "[B, C=3, T, H, W]" + (" (or [B, V, 3, T, H, W])" if views else "")
    raise ValueError(
        f"clips must be float {layout}, normalised: got {video.dtype} {shape}; "
        + _conversion(video, dims)
    )


# Normalised clips lie within a few units of 0 (ImageNet's statistics: -2.1 to 2.6); pixels
# turned to floats and left in [0, 255] reach far past this.
_NORMALISED_BOUND = 30.0


def _check_value_range(video: torch.Tensor) -> None:
    """Refuse float clips that are still pixels in [0, 255]: every model would take them and
    score noise. On the CPU only, where it costs one pass and no device sync."""
    if video.device.type != "cpu" or torch.compiler.is_compiling() or not video.numel():
        return
    largest = float(video.detach().abs().amax())
    if largest > _NORMALISED_BOUND:
        raise ValueError(
            f"the clips reach {largest:.0f}, as pixels in [0, 255] do: normalise them, "
            "video / 127.5 - 1 (mean = std = 0.5; normalised clips lie within a few units of 0)"
        )


# uint8 pixels [0, 255] -> floats normalised with mean = std = 0.5, as every model takes them
_TO_FLOAT = ".float() / 127.5 - 1"


def _conversion(video: torch.Tensor, dims: tuple[int, ...]) -> str:
    """How to turn ``video`` into clips, for the layouts people most often have: one permute
    fits only one of them (applied to another it scrambles the pixels without an error)."""
    to_float = "" if video.is_floating_point() else _TO_FLOAT
    scale = " (mean = std = 0.5)" if to_float else ""
    shape, lead = list(video.shape), video.ndim - 5  # lead: 1 with views [B, V, ...]
    batch = "B, V" if lead else "B"
    if video.ndim == 4 and shape[-1] == 3:  # one clip's decoded frames
        fix = f"video.permute(3, 0, 1, 2)[None]{to_float}"
        return f"one clip's frames [T, H, W, 3] become a batch of one by {fix}{scale}"
    if video.ndim not in dims:
        return f"{video.ndim} dimensions where clips have 5, [B, 3, T, H, W]"
    if shape[-4] == 3:  # uint8 in the right layout
        return f"the layout is right (no permute): video{to_float}{scale}"
    if shape[-3] == 3:  # transformers' pixel_values
        fix = f"video.transpose({lead + 1}, {lead + 2}){to_float}"
        return f"that is transformers' layout [{batch}, T, 3, H, W], T and 3 swapped: {fix}{scale}"
    if shape[-1] == 3:  # decoded frames, channels last
        order = "0, 1, 5, 2, 3, 4" if lead else "0, 4, 1, 2, 3"
        return (
            f"frames [{batch}, T, H, W, 3] become clips by video.permute({order}){to_float}{scale}"
        )
    return f"no axis of 3 colour channels where expected: make clips [{batch}, 3, T, H, W]"
