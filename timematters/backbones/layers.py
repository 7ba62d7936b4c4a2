"""Layers shared by the backbones: patch embedding, attention, MLP, drop-path, the pre-norm block,
per-block token taps, activation checkpointing and embedding resampling.

Constructor arguments after the width are keyword-only: two dropout rates side by side are easy to
swap by position and no shape check would notice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint


class PatchEmbed(nn.Module):
    """Patch embedding: video [B, C, T, H, W] -> tokens [B, T / tubelet_size, S, D].

    ``tubelet_size=1`` embeds every frame with one 2-D convolution (all our backbones); a larger
    one embeds ``tubelet_size`` x p x p tubelets with a 3-D convolution (Motionformer's official
    16-frame checkpoints). Both name their weight ``proj``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        *,
        tubelet_size: int = 1,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if tubelet_size < 1:
            raise ValueError(f"tubelet_size must be at least 1, got {tubelet_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        if tubelet_size == 1:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        else:
            kernel = (tubelet_size, patch_size, patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = video.shape
        if (self.img_size, self.img_size) != (H, W):
            raise ValueError(f"expected {self.img_size}x{self.img_size} frames, got {H}x{W}")
        if T % self.tubelet_size:
            raise ValueError(f"{T} frames do not split into tubelets of {self.tubelet_size}")
        if self.tubelet_size > 1:
            return rearrange(self.proj(video), "b d t h w -> b t (h w) d")
        x = self.proj(rearrange(video, "b c t h w -> (b t) c h w"))
        return rearrange(x, "(b t) d h w -> b t (h w) d", b=B)


# On the CPU, SDPA's fused kernel pays a fixed cost per (batch, head) block, which dominates when
# the keys are few: TimeSformer's temporal attention over 8 frames, Motionformer's trajectory
# step over T. At 8 keys two batched matmuls and a softmax are 1.5-2.5x faster forward + backward
# for the tiny models' widths and 1.07x for ViT-B's (benchmarks/attention.py); with more keys the
# fused kernel wins at ViT-B's width from 12 on, so the matmul path stops at 16. CUDA always fuses.
CPU_MATMUL_MAX_KEYS = 16


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(E)) v`` over [..., L, E] tensors, by the faster
    path for the device and the number of keys; both paths agree to float rounding."""
    if q.device.type == "cpu" and k.shape[-2] <= CPU_MATMUL_MAX_KEYS:
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        weights = logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        return F.dropout(weights, dropout_p) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class Attention(nn.Module):
    """Multi-head self-attention with timm's parameter names (``qkv``, ``proj``)."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, L, D] -> [N, L, D]
        q, k, v = rearrange(
            self.qkv(x), "n l (three h e) -> three n h l e", three=3, h=self.num_heads
        )
        drop = self.attn_drop if self.training else 0.0
        x = attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(rearrange(x, "n h l e -> n l (h e)")))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (Huang et al., 2016)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """Pre-norm transformer block around any attention over [..., L, D] tokens: attention and MLP,
    each a residual branch with drop-path. ViT's block with ``Attention``, Motionformer's with
    trajectory attention, X-ViT's with space-time mixing (and its consensus head's, with
    ``norm_eps=1e-5``); the parameter names are those of timm and the official checkpoints."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        *,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def tap_patch_tokens(
    tokens: torch.Tensor, pattern: str, *, dim: int = 1, num_prefix: int = 1, **axes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's patch tokens as a [B, T, S, D] grid, and the tokens rebuilt from that grid.

    ``tokens`` holds ``num_prefix`` CLS tokens and then the patches along ``dim``; ``pattern`` is
    the einops pattern from the patch part to ``b t s d`` (e.g. ``"b (t s) d -> b t s d"``).
    The next block must read the rebuilt tokens, not ``tokens``: then the grid is on the graph
    and GradCAM's gradient, taken with respect to it, reaches it.
    """
    prefix, patches = tokens.split([num_prefix, tokens.shape[dim] - num_prefix], dim=dim)
    grid = rearrange(patches, pattern, **axes)
    source, target = pattern.split("->")
    rebuilt = rearrange(grid, f"{target} -> {source}", **axes)
    return torch.cat([prefix, rebuilt], dim=dim), grid


class BlockCheckpointing:
    """Activation checkpointing per block (``model.grad_checkpointing``), mixed into a backbone.

    A checkpointed block keeps only its input for the backward pass and recomputes its
    activations there: peak memory falls to about one block's activations plus the block inputs,
    for a second forward pass of each block. The recomputation replays the RNG state, so dropout
    and drop-path draw the same masks and the gradients are those of the plain step.
    """

    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def run_block(self, block: nn.Module, *inputs: torch.Tensor):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *inputs, use_reentrant=False)
        return block(*inputs)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic-depth rates over the blocks, as in timm and the official codes."""
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


def init_weights(module: nn.Module) -> None:
    """ViT initialisation: truncated normal (std 0.02) for linear layers, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix: int = 1
) -> torch.Tensor:
    """Resize a [1, prefix + h*w, D] spatial position embedding to a new patch grid (bicubic)."""
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = int(round(grid.shape[1] ** 0.5))
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding with {grid.shape[1]} patches is not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    grid = rearrange(grid, "1 (h w) d -> 1 d h w", h=old)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False)
    grid = rearrange(grid, "1 d h w -> 1 (h w) d").to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def resample_time_embed(
    time_embed: torch.Tensor, num_frames: int, dim: int = 1, mode: str = "nearest"
) -> torch.Tensor:
    """Resize a temporal embedding along ``dim`` (the frame axis) to ``num_frames``.

    Nearest by default, as the official TimeSformer resizes ``time_embed``; "linear" is smoother.
    """
    if time_embed.shape[dim] == num_frames:
        return time_embed
    moved = time_embed.movedim(dim, -1)
    shape = moved.shape
    flat = moved.reshape(1, -1, shape[-1]).float()
    extra = {} if mode == "nearest" else {"align_corners": False}
    flat = F.interpolate(flat, size=num_frames, mode=mode, **extra)
    return flat.reshape(*shape[:-1], num_frames).movedim(-1, dim).to(time_embed.dtype)
