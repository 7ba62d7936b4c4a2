"""TimeSformer with divided space-time attention (Bertasius et al., ICML 2021).

Each block attends over time (per spatial position, patch tokens only), then over space (per frame,
with the block-input CLS copied into every frame and its T outputs averaged), then an MLP.
Parameter names follow the official checkpoints so that they load without a rename table.
``readd_time_embed=True`` is the TIME paper's architectural alternative (Appendix D): the time
embedding is added to the patch tokens again before every block.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from timematters.backbones import register_backbone
from timematters.backbones.layers import (
    Attention,
    BlockCheckpointing,
    DropPath,
    Mlp,
    PatchEmbed,
    drop_path_rates,
    init_weights,
)
from timematters.backbones.normalisation import InputNormalisation
from timematters.backbones.protocol import VideoTokens


class DividedSpaceTimeBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
        attention = dict(
            num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.temporal_attn = Attention(dim, **attention)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, **attention)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, cls: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cls: [B, 1, D], x: [B, T, S, D]
        B, T, S, _ = x.shape

        # Time: the T tokens of each spatial position attend to each other. Drop-path acts per
        # (clip, position) and before temporal_fc, as in the official code.
        xt = rearrange(x, "b t s d -> (b s) t d")
        res = self.drop_path(self.temporal_attn(self.temporal_norm1(xt)))
        x = x + self.temporal_fc(rearrange(res, "(b s) t d -> b t s d", b=B))

        # Space: each frame attends within itself, with a copy of the block-input CLS.
        xs = torch.cat(
            [repeat(cls, "b 1 d -> (b t) 1 d", t=T), rearrange(x, "b t s d -> (b t) s d")], dim=1
        )
        res = self.drop_path(self.attn(self.norm1(xs)))  # [(B T), 1 + S, D]
        cls = cls + reduce(res[:, :1], "(b t) 1 d -> b 1 d", "mean", t=T)
        x = x + rearrange(res[:, 1:], "(b t) s d -> b t s d", b=B)

        # MLP over all tokens, one drop-path draw per clip.
        tokens = torch.cat([cls, rearrange(x, "b t s d -> b (t s) d")], dim=1)
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return tokens[:, :1], rearrange(tokens[:, 1:], "b (t s) d -> b t s d", t=T)


class TimeSformer(InputNormalisation, BlockCheckpointing, nn.Module):
    classifier_name = "head"

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
        drop_path_rate: float = 0.1,
        zero_first_temporal_fc: bool = True,
        readd_time_embed: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        # Paper Appendix D: the time embedding added again before every block (not only once).
        self.readd_time_embed = readd_time_embed
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid = self.patch_embed.grid
        S = self.patch_embed.num_patches

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + S, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.time_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr,
            )
            for dpr in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)
        # temporal_fc starts at zero, so a fresh block is a ViT block. The official code leaves
        # block 0 random (zero_first_temporal_fc=False keeps that quirk).
        for i, block in enumerate(self.blocks):
            if i > 0 or zero_first_temporal_fc:
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)

    @property
    def token_frames(self) -> int:
        return self.num_frames

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        # video: [B, C, T, H, W]
        video = self.renormalise(video)  # to the normalisation it was trained with
        B, _, T, _, _ = video.shape
        if self.num_frames != T:
            raise ValueError(f"model built for {self.num_frames} frames, got {T}")
        x = self.patch_embed(video) + self.pos_embed[:, None, 1:]  # [B, T, S, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # [B, 1, D]
        cls, x = self.pos_drop(cls), self.pos_drop(x)
        x = self.time_drop(x + self.time_embed[:, :, None])  # time embedding on patches only

        blocks = []
        for i, block in enumerate(self.blocks):
            if self.readd_time_embed and i > 0:  # the embedding added it before block 0
                x = x + self.time_embed[:, :, None]
            cls, x = self.run_block(block, cls, x)
            if return_blocks:
                blocks.append(x)
        return VideoTokens(
            cls=self.norm(cls[:, 0]),
            patches=self.norm(x),
            blocks=tuple(blocks) if return_blocks else None,
        )

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.head(cls)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video).cls)

    # -- weight loading (see pretrained.py) -------------------------------------------------------

    def convert_state_dict(self, state_dict: dict, source: str) -> tuple[dict, set[str]]:
        """Bring a foreign state dict to this model's key names.

        Returns the converted dict and the keys the source is not expected to have.
        """
        if source == "hf_timesformer":
            return _rename_hf_timesformer(state_dict), set()
        if source == "timm_vit":
            return _inflate_vit(state_dict), _keys_new_to_vit(self)
        return state_dict, set()


def _inflate_vit(state_dict: dict) -> dict:
    """ImageNet ViT -> TimeSformer: temporal attention starts as a copy of the spatial one.

    temporal_fc and time_embed are not in a ViT: they keep their zero initialisation, so the
    inflated model computes exactly the ViT on every frame at the start of training.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        if ".attn." in key:
            out[key.replace(".attn.", ".temporal_attn.")] = value.clone()
        elif ".norm1." in key:
            out[key.replace(".norm1.", ".temporal_norm1.")] = value.clone()
    return out


def _keys_new_to_vit(model: TimeSformer) -> set[str]:
    return {"time_embed"} | {k for k in model.state_dict() if ".temporal_fc." in k}


_HF_BLOCK_NAMES = {
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
    "classifier": "head",
}


def _rename_hf_timesformer(state_dict: dict) -> dict:
    """Hugging Face ``transformers`` TimeSformer key names -> official names."""
    unprefixed = {key.removeprefix("timesformer."): value for key, value in state_dict.items()}
    return _rename_keys(
        unprefixed, layers=("encoder.layer.", "blocks."), blocks=_HF_BLOCK_NAMES, top=_HF_TOP_NAMES
    )


def rename_to_hf_timesformer(state_dict: dict) -> dict:
    """Our (official) TimeSformer key names -> Hugging Face ``transformers``' names: the inverse of
    the loading rename, for ``timematters export``."""
    renamed = _rename_keys(
        state_dict,
        layers=("blocks.", "encoder.layer."),
        blocks={ours: hf for hf, ours in _HF_BLOCK_NAMES.items()},
        top={ours: hf for hf, ours in _HF_TOP_NAMES.items()},
    )
    return {
        name if name.startswith("classifier") else f"timesformer.{name}": value
        for name, value in renamed.items()
    }


def _rename_keys(
    state_dict: dict, *, layers: tuple[str, str], blocks: dict[str, str], top: dict[str, str]
) -> dict:
    """Keys renamed by prefix tables: ``<layers[0]>N.<name>`` -> ``<layers[1]>N.<blocks[name]>``,
    any other key by ``top``; a key no table names is kept as it is."""
    source, target = layers
    out = {}
    for key, value in state_dict.items():
        name = key
        if key.startswith(source):
            index, rest = key[len(source) :].split(".", 1)
            table, head = blocks, f"{target}{index}."
        else:
            table, head, rest = top, "", key
        for old, new in table.items():
            if rest == old or rest.startswith(old + "."):
                name = head + new + rest[len(old) :]
                break
        out[name] = value
    return out


# -- size variants --------------------------------------------------------------------------------


@register_backbone
def timesformer_base_patch16_224(**kwargs) -> TimeSformer:
    """ViT-B/16 TimeSformer, 8 frames at 224², the paper's setting."""
    return TimeSformer(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


@register_backbone
def timesformer_tiny_patch8_64(**kwargs) -> TimeSformer:
    """A CPU-sized TimeSformer for the built-in benchmark and tests: 64² frames, 8² patches."""
    defaults = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
    return TimeSformer(**{**defaults, "drop_path_rate": 0.1, **kwargs})


@register_backbone
def timesformer_tiny_patch16_64(**kwargs) -> TimeSformer:
    """The demo's model: as ``timesformer_tiny_patch8_64`` with 16² patches (a 4x4 grid), 4x cheaper."""
    defaults = {"img_size": 64, "patch_size": 16, "embed_dim": 96, "depth": 4, "num_heads": 3}
    return TimeSformer(**{**defaults, "drop_path_rate": 0.1, **kwargs})
