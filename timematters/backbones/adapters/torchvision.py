"""torchvision's video models behind the backbone protocol.

``load_torchvision_model(name, weights=None)`` builds ``torchvision.models.video.<name>``;
``weights`` is a local state-dict file (e.g. one torchvision saved), or the name of torchvision's
weights for it (``DEFAULT``, ``KINETICS400_V1``, ...: read from torch's hub cache, downloaded there
when online and absent), loaded strictly. Each model keeps the normalisation and clip size its
torchvision weights were trained with (read from the weights' metadata, which needs no download).

- **3-D CNNs** (``r3d_18``, ``mc3_18``, ``r2plus1d_18``; ``s3d``): feature maps ``b c t h w``.
  Per-block tokens are each stage's map as ``b t (h w) c``; the clip token is the pooled last map
  and the head its linear (S3D's 1x1x1 convolution, applied to the pooled map: the same numbers,
  as the mean over positions commutes with it). Any clip length and frame size the network
  accepts (at least its weights' minimum: S3D's 14 frames of 224²).
- **Swin3D** (``swin3d_t/s/b``): stage outputs ``b t h w c``; tokens after the final norm. Any
  clip length and frame size.
- **MViT** (``mvit_v1_b``, ``mvit_v2_s``): CLS + ``b (t h w) c`` tokens whose grid shrinks stage by
  stage (each block returns its grid); fixed to its 16 x 224² input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from timematters.backbones.adapters.base import Adapter
from timematters.backbones.protocol import VideoTokens

log = logging.getLogger(__name__)

MODELS = (
    "r3d_18",
    "mc3_18",
    "r2plus1d_18",
    "s3d",
    "mvit_v1_b",
    "mvit_v2_s",
    "swin3d_t",
    "swin3d_s",
    "swin3d_b",
)


def load_torchvision_model(
    name: str,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
) -> Adapter:
    """``torchvision:NAME[:WEIGHTS]`` as an adapter.

    num_classes: the classifier's outputs (400, Kinetics, by default; None with weights: theirs;
        another number than the weights': a new classifier, as for fine-tuning).
    num_frames, img_size: the clips it is described with and sizes its token grid for (default
        16 x 112², raised to the network's minimum: S3D's 224²; fixed for MViT: 16 x 224²). The
        3-D CNNs and Swin3D take clips of other lengths and sizes too.
    """
    from torchvision.models import video

    if name not in MODELS:
        raise ValueError(
            f"torchvision:{name} is not a video model; choose one of: {', '.join(MODELS)}"
        )
    state_dict, new_head = None, ""
    if weights:
        state_dict = _read_weights(name, weights)
        head, trained = _classifier_in(state_dict) or ("", None)
        if num_classes and trained and num_classes != trained:  # the features are kept
            new_head = head
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head)}
            # Said, as transformers says its own (and --init-from its changes).
            log.warning(
                f"torchvision:{name}:{weights}: its classifier {head.rstrip('.')} ({trained} "
                f"classes) is replaced by a new one of {num_classes}, initialised at random"
            )
        num_classes = num_classes or trained
    model = getattr(video, name)(weights=None, num_classes=num_classes or 400)
    if state_dict is not None:
        _refuse_other_shapes(model, state_dict, weights=weights, name=name)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if not (new_head and key.startswith(new_head))]
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not fit torchvision:{name}: missing {sorted(missing)[:8]}, "
                f"unexpected {sorted(unexpected)[:8]}"
            )
    meta = _weights_meta(name, weights)
    # Without a config every network is asked for 16 x 112² (torchvision's common default), which
    # S3D refuses: a size below the network's minimum is raised to it, so that the model states
    # a clip it takes (a config's smaller clips are then refused by name, in check_input).
    num_frames = max(num_frames or 16, meta["min_frames"])
    img_size = max(img_size or 112, meta["min_size"])
    if new_head:  # the named weights' classes are not this classifier's
        meta["categories"] = None
    source = f"torchvision:{name}" + (f":{weights}" if weights else "")
    return _adapter_for(model, meta, source, num_frames=num_frames, img_size=img_size)


def adapt_torchvision_module(
    model: nn.Module, *, num_frames: int = 0, img_size: int = 0
) -> Adapter:
    """A torchvision video model built in Python (``r3d_18(weights=...)``, fine-tuned or not), as
    its ``torchvision:NAME`` spec would be: its architecture is recognised by its parameters'
    shapes, and it keeps its weights and the normalisation of torchvision's weights for it.
    ``num_frames`` / ``img_size``: the clips it will see (0: torchvision's 16 frames of 112²),
    which size its token grid for the losses."""
    name = _architecture_name(model)
    meta = {**_weights_meta(name, None), "weights": "the module given in Python"}
    num_frames = num_frames or max(16, meta["min_frames"])
    img_size = img_size or max(112, meta["min_size"])
    return _adapter_for(
        model, meta, f"torchvision:{name}", num_frames=num_frames, img_size=img_size
    )


def _architecture_name(model: nn.Module) -> str:
    """Which of ``MODELS`` ``model`` is: the one of its class with its parameters' shapes (built
    on the meta device: no memory, no weights). r3d_18 and mc3_18 share a class, not shapes."""
    from torchvision.models import video

    def shapes(network: nn.Module) -> dict[str, tuple[int, ...]]:
        return {key: tuple(value.shape) for key, value in network.state_dict().items()}

    num_classes = _TorchvisionAdapter._num_classes(model)
    for name in MODELS:
        with torch.device("meta"):
            candidate = getattr(video, name)(weights=None, num_classes=num_classes)
        if type(candidate) is type(model) and shapes(candidate) == shapes(model):
            return name
    raise ValueError(
        f"this {type(model).__name__} is none of torchvision's video models as they are built "
        f"({', '.join(MODELS)}): its layers were changed; wrap it in a module that returns logits "
        "for [B, C, T, H, W] clips"
    )


def _adapter_for(
    model: nn.Module, meta: dict[str, Any], source: str, *, num_frames: int, img_size: int
) -> Adapter:
    family = type(model).__name__
    if family == "VideoResNet":
        return VideoResNetAdapter(model, meta, source, num_frames=num_frames, img_size=img_size)
    if family == "S3D":
        return S3DAdapter(model, meta, source, num_frames=num_frames, img_size=img_size)
    if family == "SwinTransformer3d":
        return Swin3DAdapter(model, meta, source, num_frames=num_frames, img_size=img_size)
    return MViTAdapter(model, meta, source)


def _read_weights(name: str, weights: str | Path) -> dict[str, torch.Tensor]:
    """A weights file, or torchvision's own weights for ``name`` named by their enum member."""
    from torchvision.models import get_model_weights

    from timematters.backbones.pretrained import read_state_dict

    members = get_model_weights(name).__members__
    if str(weights) not in members:
        if not Path(weights).exists() and not Path(weights).suffix:  # a misspelt member name
            raise FileNotFoundError(
                f"torchvision:{name}:{weights}: neither torchvision's weights for {name} "
                f"({', '.join(members)}) nor a weights file"
            )
        return read_state_dict(weights)
    entry = members[str(weights)]
    try:  # torch's hub cache first; a download only when the file is not there
        return entry.get_state_dict(progress=False)
    except OSError as error:  # URLError, no connection, a full disk
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise FileNotFoundError(
            f"torchvision:{name}:{weights}: cannot download {entry.url} ({error}); offline, put "
            f"that file in {cache} or give a local weights file"
        ) from None


def _refuse_other_shapes(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, weights: str | Path, name: str
) -> None:
    """One line for weights whose tensors have other shapes than the model's, before
    ``load_state_dict`` dumps every one of them: the same names with other shapes are most often
    a sibling network's weights (r3d_18's given to mc3_18)."""
    target = model.state_dict()
    differing = [k for k in target if k in state_dict and state_dict[k].shape != target[k].shape]
    if differing:
        key = differing[0]
        raise ValueError(
            f"{weights} does not fit torchvision:{name}: {key} is "
            f"{list(state_dict[key].shape)} in the file, {list(target[key].shape)} in the model "
            f"({len(differing)} tensors differ in shape); weights of another network?"
        )


def _classifier_in(state_dict: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """The prefix of a torchvision video model's classifier in its state dict and its number of
    classes (the last layer's rows)."""
    for head in ("fc.", "head.", "head.1.", "classifier.1."):
        if f"{head}weight" in state_dict:
            return head, int(state_dict[f"{head}weight"].shape[0])
    return None


def _weights_meta(name: str, weights: str | Path | None) -> dict[str, Any]:
    """Mean, std and the smallest clip of the model's torchvision weights (no download): those
    ``weights`` names, or its default ones (what a weights file most likely holds). Class names
    only for named weights: a file's classes are its own."""
    from torchvision.models import get_model_weights

    members = get_model_weights(name).__members__
    entry = members.get(str(weights), members["DEFAULT"])
    transforms = entry.transforms()
    return {
        "name": name,
        "mean": tuple(transforms.mean),
        "std": tuple(transforms.std),
        "min_frames": entry.meta.get("min_temporal_size", 1),
        "min_size": entry.meta.get("min_size", (1, 1))[0],
        # what the network was trained with: the named weights, a file, or None (random weights,
        # torchvision's default, said in every report)
        "weights": str(entry) if str(weights) in members else (str(weights) if weights else None),
        "categories": list(entry.meta["categories"]) if str(weights) in members else None,
    }


class _TorchvisionAdapter(Adapter):
    family = "torchvision"
    flexible_size = True  # any frame size the network accepts

    def __init__(self, model, meta, source, *, num_frames, img_size, embed_dim):
        super().__init__(
            model,
            num_frames=num_frames,
            img_size=img_size,
            patch_size=1,
            embed_dim=embed_dim,
            num_classes=self._num_classes(model),
            token_frames=0,
            mean=meta["mean"],
            std=meta["std"],
            class_names=meta["categories"],
            source=source,
        )
        self.meta = meta
        self.unsupported["flow"] = "a 3-D network's tokens each span several frames"
        self._final_grid: tuple[int, int, int] | None = None

    @staticmethod
    def _num_classes(model: nn.Module) -> int:
        last = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv3d)][-1]
        return last.out_features if isinstance(last, nn.Linear) else last.out_channels

    def _probe_grid(self) -> tuple[int, int, int]:
        """(T', h', w') of the final tokens for this model's clips, from one forward pass of a
        blank clip: the strides of these networks differ by family and are not worth restating."""
        if self._final_grid is None:
            parameter = next(self.model.parameters())
            blank = torch.zeros(1, 3, self.num_frames, self.img_size, self.img_size)
            was_training = self.model.training
            self.model.eval()  # a blank clip must not move batch-norm statistics
            with torch.no_grad():
                grid = self.final_grid(blank.to(parameter))
            self.model.train(was_training)
            self._final_grid = tuple(int(n) for n in grid)
        return self._final_grid

    def final_grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        """(T', h', w') of the final tokens of ``video`` (the model in eval mode)."""
        raise NotImplementedError

    @property
    def token_frames(self) -> int:
        return self._probe_grid()[0]

    @property
    def grid(self) -> tuple[int, int]:
        return self._probe_grid()[1:]

    @grid.setter
    def grid(self, value) -> None:  # the base class sets a placeholder
        pass

    # num_frames and img_size size the token grid (token_frames, grid): probed again when set.
    @property
    def num_frames(self) -> int:
        return self._num_frames

    @num_frames.setter
    def num_frames(self, value: int) -> None:
        self._num_frames, self._final_grid = value, None

    @property
    def img_size(self) -> int:
        return self._img_size

    @img_size.setter
    def img_size(self, value: int) -> None:
        self._img_size, self._final_grid = value, None

    def check_input(self, video: torch.Tensor) -> None:
        # A 3-D CNN or Swin3D takes clips of any length and size above its minimum, as a
        # convolution does: no refusal of 8-frame clips for a model described with 16.
        _, _, frames, height, width = video.shape
        side = min(height, width)
        if frames < self.meta["min_frames"] or side < self.meta["min_size"]:
            raise ValueError(
                f"{self.source} needs clips of at least {self.meta['min_frames']} frames of "
                f"{self.meta['min_size']}² (its torchvision weights' minimum), got "
                f"{frames} x {side}²: sample more frames or crop larger (in a config: "
                f"model.num_frames, data.crop_size)"
            )

    def describe(self) -> dict[str, Any]:
        """``trained_with`` names the weights (torchvision's by name, a file, a checkpoint), or
        is None for a network with random weights."""
        return {**super().describe(), "trained_with": self.meta["weights"]}

    def architecture(self) -> dict[str, Any]:
        """The network and its classes: a checkpoint rebuilds it without the weights file."""
        # Not parsed from the source, which is the checkpoint's path once reloaded from one.
        return {"kind": "torchvision", "name": self.meta["name"], "num_classes": self.num_classes}


class VideoResNetAdapter(_TorchvisionAdapter):
    """r3d_18, mc3_18, r2plus1d_18: stem, layer1-4, pooled, ``fc``."""

    classifier_name = "model.fc"

    def __init__(self, model, meta, source, *, num_frames, img_size):
        super().__init__(
            model, meta, source, num_frames=num_frames, img_size=img_size, embed_dim=512
        )

    def _final_map(self, video: torch.Tensor) -> torch.Tensor:
        """The last stage's map [B, C, T', h', w']."""
        m = self.model
        return m.layer4(m.layer3(m.layer2(m.layer1(m.stem(video)))))

    def final_grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        return self._final_map(video).shape[2:]

    def block_modules(self) -> list[nn.Module]:
        return [self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4]

    def block_grid(self, output: Any) -> torch.Tensor:
        return rearrange(output, "b c t h w -> b t (h w) c")

    def features(self, video: torch.Tensor) -> VideoTokens:
        x = self._final_map(video)
        return VideoTokens(cls=self.model.avgpool(x).flatten(1), patches=self.block_grid(x))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.fc(cls)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        return self.model.layer4, lambda x: x.float()


class S3DAdapter(_TorchvisionAdapter):
    """S3D: ``features`` (separable 3-D inception blocks), pooled, a 1x1x1 convolution."""

    classifier_name = "model.classifier"

    def __init__(self, model, meta, source, *, num_frames, img_size):
        super().__init__(
            model, meta, source, num_frames=num_frames, img_size=img_size, embed_dim=1024
        )

    def _final_map(self, video: torch.Tensor) -> torch.Tensor:
        """The last inception block's map [B, C, T', h', w']."""
        return self.model.features(video)

    def final_grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        return self._final_map(video).shape[2:]

    def block_modules(self) -> list[nn.Module]:
        return [m for m in self.model.features if type(m).__name__.endswith("InceptionBlock3D")]

    def block_grid(self, output: Any) -> torch.Tensor:
        return rearrange(output, "b c t h w -> b t (h w) c")

    def features(self, video: torch.Tensor) -> VideoTokens:
        x = self._final_map(video)
        pooled = self.model.avgpool(x)
        return VideoTokens(cls=pooled.mean(dim=(2, 3, 4)), patches=self.block_grid(x))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(cls[:, :, None, None, None]).flatten(1)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        return self.block_modules()[-1], lambda x: x.float()


class Swin3DAdapter(_TorchvisionAdapter):
    """Swin3D: patch embedding (2 x 4 x 4), four stages (``b t h w c``), norm, pooled, ``head``."""

    classifier_name = "model.head"

    def __init__(self, model, meta, source, *, num_frames, img_size):
        super().__init__(
            model,
            meta,
            source,
            num_frames=num_frames,
            img_size=img_size,
            embed_dim=model.num_features,
        )

    def _final_map(self, video: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens after the final norm [B, T', h', w', C]."""
        m = self.model
        return m.norm(m.features(m.pos_drop(m.patch_embed(video))))

    def final_grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        return self._final_map(video).shape[1:4]

    def block_modules(self) -> list[nn.Module]:
        return [m for m in self.model.features if isinstance(m, nn.Sequential)]

    def block_grid(self, output: Any) -> torch.Tensor:
        return rearrange(output, "b t h w c -> b t (h w) c")

    def features(self, video: torch.Tensor) -> VideoTokens:
        x = self._final_map(video)  # [B, T', H', W', C]
        cls = self.model.avgpool(rearrange(x, "b t h w c -> b c t h w")).flatten(1)
        return VideoTokens(cls=cls, patches=self.block_grid(x))

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.head(cls)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        return self.block_modules()[-1], lambda x: rearrange(x.float(), "b t h w c -> b c t h w")


class MViTAdapter(_TorchvisionAdapter):
    """MViT: conv patchify, CLS + position encoding, blocks that pool the grid, norm, ``head``."""

    classifier_name = "model.head"
    flexible_size = False

    def __init__(self, model, meta, source):
        encoding = model.pos_encoding
        super().__init__(
            model,
            meta,
            source,
            num_frames=meta["min_frames"],
            img_size=meta["min_size"],
            embed_dim=model.norm.normalized_shape[0],
        )
        self.start_grid = (encoding.temporal_size, *encoding.spatial_size)

    def check_input(self, video: torch.Tensor) -> None:
        # Its position encoding is sized for one clip (its weights'), whatever num_frames says.
        _, _, frames, height, width = video.shape
        length, size = self.meta["min_frames"], self.meta["min_size"]
        if (frames, height, width) != (length, size, size):
            raise ValueError(
                f"{self.source} takes only {length}-frame clips of {size}² (its position "
                f"encoding is fixed), got {frames} x {height}x{width}: sample {length} frames "
                f"cropped to {size} (in a config: model.num_frames={length}, "
                f"data.crop_size={size})"
            )

    def _final_map(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """The last block's tokens (CLS first, before the final norm) and their (T', h', w')."""
        m = self.model
        x = m.pos_encoding(m.conv_proj(video).flatten(2).transpose(1, 2))
        thw = self.start_grid
        for block in m.blocks:
            x, thw = block(x, thw)
        return x, thw

    def final_grid(self, video: torch.Tensor) -> tuple[int, int, int]:
        return self._final_map(video)[1]

    def block_modules(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def block_grid(self, output: Any) -> torch.Tensor:
        x, (t, h, w) = output
        return rearrange(x[:, 1:], "b (t h w) c -> b t (h w) c", t=t, h=h, w=w)

    def features(self, video: torch.Tensor) -> VideoTokens:
        x, thw = self._final_map(video)
        x = self.model.norm(x)
        patches = rearrange(x[:, 1:], "b (t h w) c -> b t (h w) c", t=thw[0], h=thw[1], w=thw[2])
        return VideoTokens(cls=x[:, 0], patches=patches)

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.model.head(cls)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        # The last block's normalised input: CLS first, then the grid the blocks before pooled it
        # to. The blocks hand that grid on beside the tokens, not in them; MViT pools space only
        # (its query strides are 1 in time) and takes square clips, so the token count gives it.
        frames = self.start_grid[0]

        def to_map(x: torch.Tensor) -> torch.Tensor:
            side = math.isqrt((x.shape[1] - 1) // frames)
            tokens = x[:, 1:].float()
            return rearrange(tokens, "b (t h w) c -> b c t h w", t=frames, h=side, w=side)

        return self.model.blocks[-1].norm1, to_map
