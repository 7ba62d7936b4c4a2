"""Motionformer: trajectory attention (Patrick et al., "Keeping Your Eye on the Ball", NeurIPS 2021).

Tokens are ordered (t s) behind one CLS token. In every block the CLS query attends to all keys;
each patch query (t, s) attends within every frame f separately to frame f's S patch keys (CLS key
excluded), giving one trajectory vector per (query, frame). A second, temporal attention pools the
T trajectory vectors: its query is ``proj_q`` of the query's own-frame vector (f = t), its keys come
from ``proj_kv``. The released checkpoints pool the *unprojected* trajectory vectors (a typo in the
official code, kept as the default so that they load; ``use_projected_values=True`` pools the
projected values instead). The head is ``norm`` -> ``pre_logits`` (Linear + tanh) -> ``head``.

``VideoTokens``: ``cls`` and ``patches`` both pass the final norm *and* the tanh pre-logits, as in
the TIME release, whose order and flow heads read those features; ``forward_head`` is ``head``.
TIME used 8 frames with 2-D 16x16 patches; ``tubelet_size=2`` gives the 2x16x16 tubelets of the
official 16-frame checkpoints (then ``patches`` has ``num_frames // 2`` frames).
Parameter names follow the official checkpoints.
"""

from __future__ import annotations

from collections import OrderedDict

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


def frame_trajectories(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, dropout_p: float = 0.0
) -> torch.Tensor:
    """Per-frame attention of every patch query to each frame's patch keys, one frame at a time.

    q, k, v: [B, H, T*S, E] patch tokens in (t s) order. Returns [B, H, T*S, T, E]: for query n and
    frame f, the softmax over frame f's S keys applied to its values. Looping over the key frames
    keeps the logits at (T*S)*S per head instead of the (T*S)^2 of one masked attention.
    """
    keys = rearrange(k, "b h (t s) e -> t b h s e", t=num_frames)
    values = rearrange(v, "b h (t s) e -> t b h s e", t=num_frames)
    per_frame = [
        attention(q, key, value, dropout_p=dropout_p)
        for key, value in zip(keys, values, strict=True)
    ]
    return torch.stack(per_frame, dim=3)


def naive_trajectories(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, dropout_p: float = 0.0
) -> torch.Tensor:
    """The reference form of ``frame_trajectories``: the full (T*S)^2 logits, softmax within each
    key frame's S columns. Same output; kept for tests and ``benchmarks/train_step.py``."""
    B, H, N, E = q.shape
    S = N // num_frames
    logits = (q @ k.transpose(-2, -1)) * E**-0.5  # [B, H, T*S, T*S]
    weights = F.dropout(logits.reshape(B, H, N, num_frames, S).softmax(dim=-1), dropout_p)
    return torch.einsum("bhnfs,bhfse->bhnfe", weights, v.reshape(B, H, num_frames, S, E))


class TrajectoryAttention(Attention):
    """Trajectory attention over [B, 1 + T*S, D] tokens (CLS first, patches in (t s) order)."""

    # How the per-frame attention is computed; naive_trajectories is the (T*S)^2 reference.
    trajectories = staticmethod(frame_trajectories)

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        num_frames: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_projected_values: bool = False,
    ):
        # qkv, proj and the dropouts are the shared Attention's.
        super().__init__(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.num_frames = num_frames
        self.use_projected_values = use_projected_values
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_kv = nn.Linear(dim, dim * 2, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 1 + T*S, D], CLS first, patches in (t s) order
        T, H = self.num_frames, self.num_heads
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=H)
        drop = self.attn_drop if self.training else 0.0

        # The CLS query attends to every key, its own included.
        cls = attention(q[:, :, :1], k, v, dropout_p=drop)  # [B, H, 1, E]

        # Spatial step: one trajectory vector per (patch query, frame), CLS key excluded.
        traj = self.trajectories(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], T, drop)
        traj = rearrange(traj, "b h n f e -> b n f (h e)")  # [B, T*S, T, D]

        # Temporal step: the query is the trajectory vector in the query's own frame (f = t).
        own = torch.diagonal(rearrange(traj, "b (t s) f d -> b t s f d", t=T), dim1=1, dim2=3)
        own = rearrange(own, "b s d t -> b (t s) d")
        q2 = rearrange(self.proj_q(own), "b n (h e) -> b h n 1 e", h=H)
        k2, v2 = rearrange(self.proj_kv(traj), "b n f (two h e) -> two b h n f e", two=2, h=H)
        if self.use_projected_values:
            values = v2
        else:  # the released typo, kept so that the released weights compute what they learnt
            values = rearrange(traj, "b n f (h e) -> b h n f e", h=H)
        patches = attention(q2, k2, values)  # [B, H, T*S, 1, E]

        x = torch.cat(
            [rearrange(cls, "b h 1 e -> b 1 (h e)"), rearrange(patches, "b h n 1 e -> b n (h e)")],
            dim=1,
        )
        return self.proj_drop(self.proj(x))


class Motionformer(InputNormalisation, BlockCheckpointing, nn.Module):
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
        drop_path_rate: float = 0.2,
        tubelet_size: int = 1,
        use_projected_values: bool = False,
    ):
        super().__init__()
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames {num_frames} is not a multiple of tubelet {tubelet_size}")
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, tubelet_size=tubelet_size
        )
        self.grid = self.patch_embed.grid
        S, T = self.patch_embed.num_patches, num_frames // tubelet_size

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + S, embed_dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, T, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                TrajectoryAttention(
                    embed_dim,
                    num_heads=num_heads,
                    num_frames=T,
                    qkv_bias=qkv_bias,
                    attn_drop=attn_drop_rate,
                    proj_drop=drop_rate,
                    use_projected_values=use_projected_values,
                ),
                mlp_ratio=mlp_ratio,
                drop=drop_rate,
                drop_path=dpr,
            )
            for dpr in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pre_logits = nn.Sequential(
            OrderedDict([("fc", nn.Linear(embed_dim, embed_dim)), ("act", nn.Tanh())])
        )
        self.head = nn.Linear(embed_dim, num_classes)

        # temp_embed starts at zero, as in the official code.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    @property
    def token_frames(self) -> int:
        return self.num_frames // self.tubelet_size

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        # video: [B, C, T, H, W]
        video = self.renormalise(video)  # to the normalisation it was trained with
        B = video.shape[0]
        if self.num_frames != video.shape[2]:
            raise ValueError(f"model built for {self.num_frames} frames, got {video.shape[2]}")
        x = self.patch_embed(video)  # [B, T, S, D], T = num_frames / tubelet_size
        T = x.shape[1]
        x = x + self.pos_embed[:, None, 1:] + self.temp_embed[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        tokens = self.pos_drop(torch.cat([cls, rearrange(x, "b t s d -> b (t s) d")], dim=1))

        blocks = []
        for block in self.blocks:
            tokens = self.run_block(block, tokens)
            if return_blocks:
                tokens, patches = tap_patch_tokens(tokens, "b (t s) d -> b t s d", t=T)
                blocks.append(patches)
        tokens = self.pre_logits(self.norm(tokens))
        return VideoTokens(
            cls=tokens[:, 0],
            patches=rearrange(tokens[:, 1:], "b (t s) d -> b t s d", t=T),
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
        if source == "timm_vit":
            out = dict(state_dict)
            if self.tubelet_size > 1:
                out["patch_embed.proj.weight"] = _inflate_patch_weight(
                    state_dict["patch_embed.proj.weight"], self.tubelet_size
                )
            return out, _keys_new_to_vit(self) - set(out)
        if source == "official":
            return _select_official_patch_embed(state_dict, self.tubelet_size), set()
        return state_dict, set()


def _inflate_patch_weight(weight: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """[D, C, p, p] -> [D, C, kt, p, p], split evenly over time: a static clip embeds as the image.

    (The official code instead leaves its 3-D embedding at zero when starting from a ViT.)
    """
    return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size


def _keys_new_to_vit(model: Motionformer) -> set[str]:
    new = {"temp_embed"}
    new |= {k for k in model.state_dict() if ".attn.proj_q." in k or ".attn.proj_kv." in k}
    return new | {k for k in model.state_dict() if k.startswith("pre_logits.")}


def _select_official_patch_embed(state_dict: dict, tubelet_size: int) -> dict:
    """Official checkpoints hold a 2-D ``patch_embed`` and a 3-D ``patch_embed_3d``; one is used."""
    used, unused = ("patch_embed.", "patch_embed_3d.")
    if tubelet_size > 1:
        used, unused = unused, used
    out = {}
    for key, value in state_dict.items():
        if key.startswith(unused):
            continue
        if key.startswith(used):
            key = "patch_embed." + key[len(used) :]
        out[key] = value
    return out


# -- size variants --------------------------------------------------------------------------------


@register_backbone
def motionformer_base_patch16_224(**kwargs) -> Motionformer:
    """ViT-B/16 Motionformer, 8 frames at 224² with 2-D patches, the paper's setting."""
    return Motionformer(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


@register_backbone
def motionformer_tiny_patch8_64(**kwargs) -> Motionformer:
    """A CPU-sized Motionformer for the built-in benchmark and tests: 64² frames, 8² patches."""
    defaults = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
    return Motionformer(**{**defaults, "drop_path_rate": 0.2, **kwargs})
