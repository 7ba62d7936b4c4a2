"""Video GradCAM: where in each frame a model looks for a class (paper Fig. 4, Appendix B).

GradCAM (Selvaraju et al., 2017) through the ``grad-cam`` package that the authors used, taken
from images to clips by giving the token grid its time axis:

- **Layer**: the patch tokens that enter the last block (``forward_features(...,
  return_blocks=True).blocks[-2]``), as the package's ViT recipe uses the last block's input.
  The final tokens would not do: the classifier reads the CLS token, which the last block's patch
  outputs never reach, so their gradient is zero.
- **Hook**: the tokens are passed through an identity module, ``tap``. The package hooks its
  output, which is the very tensor the last block consumes, so it records that tensor's activation
  and gradient without knowing any backbone's native token layout.
- **Layout**: ``reshape_transform`` turns ``[B, T, S, D]`` into a 3-D feature map
  ``[B, D, T, h, w]``; the package then weighs each channel by its gradient averaged over
  (t, h, w), sums, applies ReLU, min-max scales each clip as one volume (frames stay comparable)
  and resizes ``[T, h, w]`` to the clip's ``[T, H, W]`` (also stretching Motionformer's 2-frame
  tubelets back to frames).

Adapted models (``backbones/adapters``) give the package their own layer and reshape instead: a
3-D CNN's last stage (already ``[B, C, T', h, w]``), a transformer's last pre-attention LayerNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn

from timematters.backbones.protocol import check_clips, tokens_with_blocks


class _TappedBackbone(nn.Module):
    """The backbone, with the patch tokens that enter its last block routed through ``tap``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.tap = nn.Identity()  # returns its input object: the hooked tensor is the real one

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        tokens = tokens_with_blocks(self.backbone, video)
        # Counted from the tokens: ``.blocks`` is no attribute the VideoBackbone contract names.
        blocks = tokens.blocks or ()
        if len(blocks) < 2:
            raise ValueError(
                f"GradCAM reads the tokens entering the last block, so it needs two blocks; "
                f"{type(self.backbone).__name__}.forward_features(return_blocks=True) gives "
                f"{len(blocks)}"
            )
        self.tap(blocks[-2])
        return self.backbone.forward_head(tokens.cls)


def gradcam_unsupported(model: nn.Module) -> str:
    """The reason ``model`` states for having no GradCAM maps ("" when it states none), so that
    callers skip it before making its clips."""
    return getattr(model, "unsupported", {}).get("gradcam", "")


def video_gradcam(model: nn.Module, video: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """GradCAM maps in [0, 1] of shape [N, T, H, W] for clips ``video`` [N, C, T, H, W].

    targets: the class each clip's map explains (e.g. its true class). The model runs in eval mode.
    An adapted model (Hugging Face, torchvision) names its own layer and layout
    (``gradcam_layer``); it raises ``NotImplementedError`` with the reason when it has none.
    """
    # Here, not at import: grad-cam pulls in scipy and scikit-learn (seconds).
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    check_clips(video)  # one clip [C, T, H, W] would be read as C clips
    if len(targets) != len(video):
        raise ValueError(f"{len(video)} clips but {len(targets)} targets")
    num_classes = getattr(model, "num_classes", 0)
    wrong = [int(k) for k in targets if num_classes and not 0 <= int(k) < num_classes]
    if wrong:  # grad-cam's own IndexError is swallowed by its context manager
        raise ValueError(f"target {wrong[0]} is no class of a {num_classes}-class model")
    was_training = model.training
    # The package zeroes and refills the parameters' gradients: a training loop's, between its
    # backward and its step, are put back afterwards.
    grads = {param: param.grad for param in model.parameters()}
    # GradCAM needs the gradients of activations only. An input that requires them reaches every
    # activation, also in a frozen model or under the caller's torch.no_grad.
    video = video.detach().requires_grad_(True)
    try:  # a model that cannot give a map is left as it was found, in its mode and gradients
        with torch.enable_grad():
            network, layer, reshape = _gradcam_target(model, video)
            with GradCAM(network, target_layers=[layer], reshape_transform=reshape) as cam:
                maps = cam(video, [ClassifierOutputTarget(int(k)) for k in targets])
    finally:
        for param, grad in grads.items():
            param.grad = grad
        model.train(was_training)
    # The package resizes with a cubic spline, which may overshoot [0, 1] a little.
    return np.clip(maps, 0.0, 1.0)


def _gradcam_target(
    model: nn.Module, video: torch.Tensor
) -> tuple[nn.Module, nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(network in eval mode, the layer to hook, the reshape to [B, C, T', h, w]) for grad-cam."""
    if hasattr(model, "gradcam_layer"):
        network = model.eval()
        return network, *model.gradcam_layer()
    network = _TappedBackbone(model).eval()
    _check_tap_on_graph(network, video[:1])
    h, w = model.grid

    def reshape(x: torch.Tensor) -> torch.Tensor:
        return rearrange(x.float(), "b t (h w) d -> b d t h w", h=h, w=w)

    return network, network.tap, reshape


def _check_tap_on_graph(tapped: _TappedBackbone, video: torch.Tensor) -> None:
    """Fail clearly when a backbone's per-block tokens are a copy the logits do not depend on."""
    seen = []
    handle = tapped.tap.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        logits = tapped(video.to(next(tapped.parameters()).device))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.sum(), seen[0], allow_unused=True)
    if grad is None:
        raise RuntimeError(
            f"{type(tapped.backbone).__name__}.forward_features(return_blocks=True) returns "
            "per-block tokens that the rest of the network does not consume, so no gradient "
            "reaches them; blocks[i] must be the tensor that block i + 1 reads"
        )
