"""X-ViT with space-time mixing attention (Bulat et al., "Space-time Mixing Attention for Video
Transformer", NeurIPS 2021).

A ViT runs on every frame, each frame with its own CLS token; ``temp_embed`` [1, T, 1, D] adds the
frame's time embedding to all its tokens, CLS included. In every block's attention the keys and
values (not the queries) are shifted in time by channel groups: with ``shift_div = 4`` channels
[0, D/4) come from frame t+1, [D/4, D/2) from frame t-1 and the rest stay, zeros where a neighbour
is missing. For ViT-B (12 heads of 64) the groups are whole heads: heads 0-2 attend to the next
frame, heads 3-5 to the previous one. ``shift_div=None`` turns the mixing off (a per-frame ViT).

The temporal ``consensus`` head prepends a learnable CLS to the T frame-CLS vectors, runs one
transformer block (no qkv bias, LayerNorm eps 1e-5, no position embedding), then ``mlp_head``:
LayerNorm -> Linear D->D -> GELU -> Dropout -> Linear D->K.

``VideoTokens``: ``patches`` are the frames' patch tokens after the backbone's final norm;
``cls`` is the consensus CLS after the first LayerNorm of ``mlp_head`` (the clip representation),
and ``forward_head`` applies the rest of ``mlp_head``. Parameter names follow the official
checkpoints (less their ``base_model.`` prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from timematters.backbones import register_backbone
from timematters.backbones.layers import (
    Attention,
    Block,
    BlockCheckpointing,
    PatchEmbed,
    attention,
    drop_path_rates,
    init_weights,
    tap_patch_tokens,
)
from timematters.backbones.normalisation import InputNormalisation
from timematters.backbones.protocol import VideoTokens


def shift_channel_groups(x: torch.Tensor, shift_div: int) -> torch.Tensor:
    """Mix neighbouring frames into x [B, T, N, D] by channel group (zeros at the clip ends).

    Channels [0, D/shift_div) take frame t+1's values, [D/shift_div, 2D/shift_div) frame t-1's.
    """
    fold = x.shape[-1] // shift_div
    from_next = F.pad(x[:, 1:, :, :fold], (0, 0, 0, 0, 0, 1))
    from_previous = F.pad(x[:, :-1, :, fold : 2 * fold], (0, 0, 0, 0, 1, 0))
    return torch.cat([from_next, from_previous, x[..., 2 * fold :]], dim=-1)


class SpaceTimeMixingAttention(Attention):
    """Self-attention over the token axis of x [..., N, D]; with ``shift_div``, x is [B, T, N, D]
    and each frame's keys and values mix in the neighbouring frames' channel groups."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        shift_div: int | None = 4,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        if shift_div is not None and shift_div < 2:
            raise ValueError(f"shift_div must be at least 2 (two shifted groups), got {shift_div}")
        self.shift_div = shift_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.shift_div is not None:
            k = shift_channel_groups(k, self.shift_div)
            v = shift_channel_groups(v, self.shift_div)
        # Leading axes (batch, frames) become one attention batch: [M, H, N, E].
        q, k, v = (rearrange(t, "... n (h e) -> (...) h n e", h=self.num_heads) for t in (q, k, v))
        drop = self.attn_drop if self.training else 0.0
        out = attention(q, k, v, dropout_p=drop)
        out = rearrange(out, "m h n e -> m n (h e)").reshape(x.shape)
        return self.proj_drop(self.proj(out))


class TemporalConsensus(nn.Module):
    """X-ViT's temporal head over the T frame-CLS vectors (official module ``consensus``)."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        num_classes: int,
        mlp_ratio: float = 4.0,
        head_drop_rate: float = 0.5,
    ):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        attention = SpaceTimeMixingAttention(
            dim, num_heads=num_heads, shift_div=None, qkv_bias=False
        )
        self.temporal_encoder = nn.Sequential(
            Block(dim, attention, mlp_ratio=mlp_ratio, norm_eps=1e-5)
        )
        # Indices as in the official checkpoints: mlp_head.0 (norm), .1 and .4 (linear).
        self.mlp_head = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim),
            nn.GELU(),
            nn.Dropout(head_drop_rate),
            nn.Linear(dim, num_classes),
        )

    def forward(self, frame_cls: torch.Tensor) -> torch.Tensor:
        # frame_cls: [B, T, D] -> clip representation [B, D] (after mlp_head's LayerNorm)
        cls = self.cls_token.expand(frame_cls.shape[0], -1, -1)
        x = self.temporal_encoder(torch.cat([cls, frame_cls], dim=1))
        return self.mlp_head[0](x[:, 0])

    def classify(self, representation: torch.Tensor) -> torch.Tensor:
        return self.mlp_head[1:](representation)


class XViT(InputNormalisation, BlockCheckpointing, nn.Module):
    # The last Linear of the consensus head, for weight loading.
    classifier_name = "consensus.mlp_head.4"

    def __init__(
        self,
        num_classes: int = 174,
        num_frames: int = 8,
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
        shift_div: int | None = 4,
        head_drop_rate: float = 0.5,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid = self.patch_embed.grid
        S = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + S, embed_dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, num_frames, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                SpaceTimeMixingAttention(
                    embed_dim,
                    num_heads=num_heads,
                    shift_div=shift_div,
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
        self.consensus = TemporalConsensus(
            embed_dim,
            num_heads=num_heads,
            num_classes=num_classes,
            mlp_ratio=mlp_ratio,
            head_drop_rate=head_drop_rate,
        )

        # temp_embed starts at zero, as in the official code, so a fresh X-ViT without mixing
        # is the image ViT on every frame.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.consensus.cls_token, std=0.02)
        self.apply(init_weights)

    @property
    def token_frames(self) -> int:
        return self.num_frames

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        # video: [B, C, T, H, W]
        video = self.renormalise(video)  # to the normalisation it was trained with
        B, _, T, _, _ = video.shape
        if self.num_frames != T:
            raise ValueError(f"model built for {self.num_frames} frames, got {T}")
        x = self.patch_embed(video)  # [B, T, S, D]
        cls = self.cls_token.expand(B, T, -1)[:, :, None]  # one CLS per frame: [B, T, 1, D]
        x = torch.cat([cls, x], dim=2) + self.pos_embed[:, None]  # [B, T, 1 + S, D]
        x = self.pos_drop(x) + self.temp_embed

        blocks = []
        for block in self.blocks:
            x = self.run_block(block, x)
            if return_blocks:
                x, patches = tap_patch_tokens(x, "b t s d -> b t s d", dim=2)
                blocks.append(patches)
        x = self.norm(x)
        return VideoTokens(
            cls=self.consensus(x[:, :, 0]),
            patches=x[:, :, 1:],
            blocks=tuple(blocks) if return_blocks else None,
        )

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.consensus.classify(cls)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video).cls)

    # -- weight loading (see pretrained.py) -------------------------------------------------------

    def convert_state_dict(self, state_dict: dict, source: str) -> tuple[dict, set[str]]:
        """Bring a foreign state dict to this model's key names.

        Returns the converted dict and the keys the source is not expected to have.
        """
        if source == "timm_vit":
            # The ImageNet classifier has no counterpart: X-ViT classifies in its consensus head.
            out = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
            return out, _keys_new_to_vit(self) - set(out)
        if source == "official":
            return _rename_official(state_dict), set()
        return state_dict, set()


def _keys_new_to_vit(model: XViT) -> set[str]:
    return {"temp_embed"} | {k for k in model.state_dict() if k.startswith("consensus.")}


def _rename_official(state_dict: dict) -> dict:
    """Official X-ViT keys: the frame ViT under ``base_model.``; the consensus head as ours.

    ``new_fc`` (built by the official code but unused with the consensus head) and the base
    model's own ``head`` (a Dropout there, or unused) are dropped; the TIME release's
    ``consensus.head`` is our ``consensus.mlp_head.4``.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("base_model.")
        if key.startswith(("new_fc.", "head.")):
            continue
        if key.startswith("consensus.head."):  # TIME's release names the last Linear so
            key = "consensus.mlp_head.4." + key.removeprefix("consensus.head.")
        out[key] = value
    return out


# -- size variants --------------------------------------------------------------------------------


@register_backbone
def xvit_base_patch16_224(**kwargs) -> XViT:
    """ViT-B/16 X-ViT, 8 frames at 224², the paper's setting."""
    return XViT(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


@register_backbone
def xvit_tiny_patch8_64(**kwargs) -> XViT:
    """A CPU-sized X-ViT for the built-in benchmark and tests: 64² frames, 8² patches."""
    defaults = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
    return XViT(**{**defaults, "drop_path_rate": 0.0, **kwargs})
