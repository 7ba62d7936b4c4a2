"""Image ViT / DeiT (Dosovitskiy et al., ICLR 2021; Touvron et al., ICML 2021) for the image extension
of TIME (paper Section 5.3, Table 4).

An image is a one-frame video: the model takes ``[B, C, 1, H, W]`` (or a plain ``[B, C, H, W]``)
and returns ``VideoTokens`` with ``patches [B, 1, S, D]``, so the video losses, the objective, the
training loop and the evaluation serve it unchanged. Pre-norm blocks, a CLS token that carries
``pos_embed[0]``, LayerNorm eps 1e-6, the final norm on every token, CLS -> ``head``. Parameter
names are timm's, so timm ViT / DeiT state dicts load without a rename table.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from timematters.backbones import register_backbone
from timematters.backbones.layers import (
    Attention,
    Block,
    BlockCheckpointing,
    PatchEmbed,
    drop_path_rates,
    init_weights,
    tap_patch_tokens,
)
from timematters.backbones.normalisation import InputNormalisation
from timematters.backbones.protocol import VideoTokens


class VisionTransformer(InputNormalisation, BlockCheckpointing, nn.Module):
    classifier_name = "head"
    token_frames = 1

    def __init__(
        self,
        num_classes: int = 1000,
        num_frames: int = 1,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        # The training loop passes model.num_frames to every backbone: an image model must get 1.
        if num_frames != 1:
            raise ValueError(
                f"an image model takes one frame (model.num_frames=1), got {num_frames}"
            )
        self.num_classes = num_classes
        self.num_frames = 1
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid = self.patch_embed.grid
        S = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + S, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                Attention(
                    embed_dim,
                    num_heads=num_heads,
                    qkv_bias=qkv_bias,
                    attn_drop=attn_drop_rate,
                    proj_drop=drop_rate,
                ),
                mlp_ratio=mlp_ratio,
                drop=drop_rate,
                drop_path=dpr,
            )
            for dpr in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)  # as timm and DeiT
        self.apply(init_weights)

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        if video.ndim == 4:
            video = video[:, :, None]  # an image [B, C, H, W] is a one-frame video
        video = self.renormalise(video)
        B, _, T, _, _ = video.shape
        if T != 1:
            raise ValueError(f"an image model takes one frame, got {T} frames")
        x = rearrange(self.patch_embed(video), "b 1 s d -> b s d")
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_embed
        x = self.pos_drop(x)  # [B, 1 + S, D]

        blocks = []
        for block in self.blocks:
            x = self.run_block(block, x)
            if return_blocks:
                x, patches = tap_patch_tokens(x, "b s d -> b 1 s d")
                blocks.append(patches)
        x = self.norm(x)
        return VideoTokens(
            cls=x[:, 0],
            patches=rearrange(x[:, 1:], "b s d -> b 1 s d"),
            blocks=tuple(blocks) if return_blocks else None,
        )

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.head(cls)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video).cls)

    # -- weight loading (see pretrained.py) -------------------------------------------------------

    def convert_state_dict(self, state_dict: dict, source: str) -> tuple[dict, set[str]]:
        """timm ViT / DeiT keys (and our own checkpoints) are this model's keys: nothing to rename."""
        return state_dict, set()


# -- size variants --------------------------------------------------------------------------------


@register_backbone
def deit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-Ti/16 at 224² (D = 192, 3 heads, 12 blocks), the paper's Table 4 model."""
    defaults = {"embed_dim": 192, "depth": 12, "num_heads": 3, "drop_path_rate": 0.1}
    return VisionTransformer(**{**defaults, **kwargs})


@register_backbone
def vit_tiny_patch16_64(**kwargs) -> VisionTransformer:
    """A CPU-sized ViT for the image demo and tests: 64² images, 16² patches (a 4x4 grid), D = 96,
    4 blocks; 16 tokens keep `demo --image` within minutes on two cores."""
    defaults = {"img_size": 64, "patch_size": 16, "embed_dim": 96, "depth": 4, "num_heads": 3}
    return VisionTransformer(**{**defaults, "drop_path_rate": 0.1, **kwargs})
