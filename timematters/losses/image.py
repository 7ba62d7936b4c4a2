"""TIME on images (paper Section 5.3, Eq. 16-18): spatial order of patches and patch-shuffle debiasing.

An image is a one-frame video, so the video losses carry over with one change each:

- order (Eq. 16): every final patch token predicts its own position index s in [0, S) through one
  ``Linear(D, S)``; mean cross-entropy over B·S. This is the video order loss with the S patches
  in the role of the T frames (each a "frame" of one token), so ``OrderLoss`` computes it.
- debias (Eq. 17): the image's patches are shuffled and the task classifier's output on it is
  pushed to uniform, as ``DebiasLoss`` does with frames. The patches are permuted in pixel space,
  before the patch embedding: the embedding is one linear map per patch, so this equals permuting
  the patch tokens before the position embedding is added; the shuffled image carries in-order
  position embeddings on out-of-order content.

Eq. 18 is the objective's weighted sum; ``loss.order.axis=space`` and ``loss.debias.axis=space``
select these losses in ``build_objective``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from einops import rearrange

from timematters.backbones.protocol import VideoTokens
from timematters.losses.debias import DebiasLoss
from timematters.losses.inputs import LossInputs
from timematters.losses.order import OrderLoss
from timematters.losses.shuffle import sample_frame_permutations


def shuffle_patches(
    video: torch.Tensor,
    patch_size: int,
    mode: str = "per_batch",
    generator: torch.Generator | None = None,
    perms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the ``patch_size``² patches of each image of a batch [B, C, T, H, W] (T = 1 for images).

    The permutations are drawn as frame permutations are (``mode`` per_batch or per_sample, see
    ``sample_frame_permutations``), over the S = h·w patches in row-major order; a clip's frames
    share their image's permutation. Returns (shuffled batch, perms [B, S]): slot s of image b
    shows the patch that was at ``perms[b, s]``.
    """
    B, _, _, H, W = video.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"{H}x{W} images do not split into {patch_size}x{patch_size} patches")
    h, w = H // patch_size, W // patch_size
    if perms is None:
        perms = sample_frame_permutations(B, h * w, mode, generator)
    patches = rearrange(video, "b c t (h p) (w q) -> b (h w) c t p q", p=patch_size, q=patch_size)
    shuffled = patches[torch.arange(B, device=video.device)[:, None], perms.to(video.device)]
    return rearrange(shuffled, "b (h w) c t p q -> b c t (h p) (w q)", h=h), perms


class SpatialOrderLoss(OrderLoss):
    """Eq. 16: each final patch token predicts its position s in [0, S); ``temp_head`` is Linear(D, S)."""

    def __init__(self, embed_dim: int, num_patches: int, smoothing: float = 0.2):
        super().__init__(embed_dim, num_patches, smoothing)

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        # [B, T, S, D] -> S one-token "frames" per image: their per-frame mean is the token itself,
        # and the video loss labels "frame" s with s. Each frame of a clip counts as an image.
        patches = rearrange(inputs.tokens.patches, "b t s d -> (b t) s 1 d")
        tokens = VideoTokens(cls=inputs.tokens.cls, patches=patches)
        return super().forward(replace(inputs, tokens=tokens))


class PatchDebiasLoss(DebiasLoss):
    """Eq. 17: the classifier's output on a patch-shuffled image is pushed to uniform."""

    def __init__(self, patch_size: int, *, shuffle: str = "per_batch", form: str = "uniform_ce"):
        super().__init__(shuffle=shuffle, form=form)
        self.patch_size = patch_size

    def shuffled_view(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return shuffle_patches(video, self.patch_size, self.shuffle, generator)[0]
