"""What every adapter shares: the boundary conversions, per-block taps through forward hooks, and
a statement of what the wrapped model cannot do.

An adapter owns a foreign video classifier and presents it as a ``VideoBackbone``:

- **Input**: clips arrive as ours do, ``[B, C, T, H, W]`` normalised with ``input_mean`` /
  ``input_std`` (the dataset's, mean = std = 0.5 by default). They are renormalised once to the
  model's own ``mean`` / ``std`` and laid out as the model wants (each adapter's ``features``).
- **Tokens**: ``forward_features`` returns ``VideoTokens``; ``forward_head`` maps ``cls`` to
  logits, so ``forward(video) == forward_head(forward_features(video).cls)`` as for our backbones.
- **Blocks**: ``block_modules()`` and ``block_grid(output)`` declare where the per-block tokens are
  and their layout (``block_grids(outputs)`` where the layout changes from block to block); a
  forward hook reads them when ``return_blocks=True`` (the order probe's input).
- **Depth**: ``modules_in_forward_order()``, for a network that registers its parts in another
  order than its forward pass runs them: ``optim.layer_decay`` places what lies outside the
  blocks by it (the embeddings before them, a final norm after).
- **GradCAM**: ``gradcam_layer()`` names the module and the reshape that grad-cam's
  ``target_layers`` / ``reshape_transform`` need.
- **Limits**: ``unsupported`` maps a capability (``protocol.CAPABILITIES``: "order_probe",
  "gradcam", "flow", "order") to the reason the model cannot provide it; reports print the reason
  instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from timematters.backbones.normalisation import DEFAULT_INPUT, InputNormalisation
from timematters.backbones.protocol import CAPABILITIES, VideoTokens


class Adapter(InputNormalisation, nn.Module):
    """Base of the adapters; subclasses set the attributes and implement the four hooks below."""

    # The classifier's prefix; "" where it is not known (a user's module): then no tensor is
    # taken for a classifier of another class count and left out of a load.
    classifier_name = ""
    family = "adapter"
    flexible_size = False  # True for models that take any frame size (3-D CNNs, Swin3D)

    def __init__(
        self,
        model: nn.Module,
        *,
        num_frames: int,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        num_classes: int,
        token_frames: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        class_names: list[str] | None = None,
        source: str = "",
    ):
        super().__init__()
        self.model = model
        self.num_frames = num_frames
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self._token_frames = token_frames
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_mean, self.input_std = DEFAULT_INPUT
        self.class_names = class_names
        self.source = source
        self.unsupported: dict[str, str] = {}

    @property
    def token_frames(self) -> int:
        return self._token_frames

    def describe(self) -> dict[str, Any]:
        """What a report says about the model: where it came from and what it expects."""
        return {
            "family": self.family,
            "source": self.source,
            "num_frames": self.num_frames,
            "frame_size": self.img_size,
            "token_frames": self.token_frames,
            "mean": list(self.mean),
            "std": list(self.std),
            "unsupported": dict(self.unsupported),
        }

    # -- the boundary --------------------------------------------------------------------------

    def check_input(self, video: torch.Tensor) -> None:
        _, C, T, H, W = video.shape
        if self.num_frames != T:
            raise ValueError(
                f"{self.source} takes {self.num_frames}-frame clips, got {T}: give it "
                f"{self.num_frames}-frame clips (in a config: model.num_frames={self.num_frames})"
            )
        if (self.img_size, self.img_size) != (H, W) and not self.flexible_size:
            raise ValueError(
                f"{self.source} takes {self.img_size}x{self.img_size} frames, got {H}x{W}: crop "
                f"them to {self.img_size} (in a config: data.crop_size={self.img_size})"
            )

    # -- what subclasses implement -------------------------------------------------------------

    def features(self, video: torch.Tensor) -> VideoTokens:
        """Tokens of renormalised clips [B, C, T, H, W] (no per-block taps)."""
        raise NotImplementedError

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def block_modules(self) -> list[nn.Module]:
        """The modules whose outputs are the per-block tokens, in order (empty: none)."""
        return []

    def block_grid(self, output: Any) -> torch.Tensor:
        """A block module's output -> patch tokens [B, T', S', D] (T', S', D may vary by block)."""
        raise NotImplementedError

    def block_grids(self, outputs: list[Any]) -> tuple[torch.Tensor, ...]:
        """Every block module's output, in order -> their patch tokens."""
        return tuple(self.block_grid(output) for output in outputs)

    def modules_in_forward_order(self) -> list[nn.Module]:
        """The network's parts, blocks among them, in the order its forward pass runs them; []:
        the order it registers them in, which is that for most networks."""
        return []

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """(module, reshape to [B, C, T', h, w]) for grad-cam; raise if unsupported."""
        raise NotImplementedError(self.unsupported.get("gradcam", "no GradCAM layer declared"))

    # -- the protocol --------------------------------------------------------------------------

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        self.check_input(video)
        video = self.renormalise(video)
        if not return_blocks:
            return self.features(video)
        if "order_probe" in self.unsupported:
            raise NotImplementedError(self.unsupported["order_probe"])
        outputs: list[Any] = []
        handles = [
            module.register_forward_hook(lambda _m, _args, output: outputs.append(output))
            for module in self.block_modules()
        ]
        try:
            tokens = self.features(video)
        finally:
            for handle in handles:
                handle.remove()
        blocks = self.block_grids(outputs)
        return VideoTokens(cls=tokens.cls, patches=tokens.patches, blocks=blocks)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video).cls)

    def architecture(self) -> dict[str, Any] | None:
        """What rebuilds the model, untrained, without its source (a folder, a weights file):
        plain data that timematters checkpoints record (``rebuild_foreign_model``). None: only
        the source can (a user's module is imported again)."""
        return None

    def convert_state_dict(self, state_dict: dict, source: str) -> tuple[dict, set[str]]:
        """Our checkpoints of an adapted model hold the wrapped model's keys under ``model.``,
        a prefix that reading a file strips when every key has it (as a DDP one's): it is put
        back, as often as the wrapped model's own names need. A state dict of the wrapped model
        itself (torchvision's, transformers', a user's) fits the same way."""
        target = self.state_dict().keys()
        for _ in range(3):  # the wrapped model's own names may start with "model." too
            if not state_dict or any(k in target for k in state_dict):
                break
            state_dict = {f"model.{k}": v for k, v in state_dict.items()}
        return state_dict, set()


class LogitsOnlyAdapter(Adapter):
    """Base of the adapters of models that give logits only: the logits stand in for the clip
    token and for one patch (tokens [B, 1, 1, K]), so the shuffle test, the confidence gap and
    the debias loss apply, and every token-based capability is refused with one reason."""

    flexible_size = True  # any frame size the wrapped model takes

    def __init__(self, model: nn.Module, *, reason: str, **sizes: Any):
        # patch_size stays 1, not the frame size: that may be 0 (any), and the image debias loss
        # (axis=space) shuffles patches of that size.
        super().__init__(model, patch_size=1, token_frames=1, **sizes)
        self.grid = (1, 1)  # the one "patch" the logits make
        self.unsupported.update(dict.fromkeys(CAPABILITIES, reason))

    def logits(self, video: torch.Tensor) -> torch.Tensor:
        """The wrapped model's logits [B, K] for renormalised clips."""
        raise NotImplementedError

    def check_input(self, video: torch.Tensor) -> None:
        # Only a model built for (or declaring) a clip length refuses others: 0 frames is any.
        if self.num_frames and video.shape[2] != self.num_frames:
            super().check_input(video)

    def features(self, video: torch.Tensor) -> VideoTokens:
        logits = self.logits(video)
        return VideoTokens(cls=logits, patches=logits[:, None, None])

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return cls


def unwrap_output(output: Any) -> torch.Tensor:
    """The tensor a module returned: the first entry of a tuple or a ``ModelOutput``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot read a tensor from a {type(output).__name__}")
