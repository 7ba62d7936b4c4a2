"""Motionformer: trajectory attention against its definition, tubelets, official key names."""

import pytest
import torch
import torch.nn.functional as F

from timematters.backbones import create_backbone
from timematters.backbones.motionformer import (
    TrajectoryAttention,
    frame_trajectories,
    naive_trajectories,
)

D, HEADS = 24, 3
E = D // HEADS


def naive_trajectory_attention(attn, x, num_frames):
    """Trajectory attention written out from its definition, with plain reshapes and indexing."""
    Bx, N, _ = x.shape
    H, scale = attn.num_heads, E**-0.5
    q, k, v = attn.qkv(x).reshape(Bx, N, 3, H, E).permute(2, 0, 3, 1, 4)  # [B, H, N, E] each
    cls = ((q[:, :, :1] @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v  # [B, H, 1, E]

    traj = naive_trajectories(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], num_frames)
    n = N - 1
    traj = traj.permute(0, 2, 3, 1, 4).reshape(Bx, n, num_frames, D)  # [B, T*S, T, D]
    own_frame = torch.arange(n) // (n // num_frames)  # query n = (t, s) lies in frame t
    own = traj[:, torch.arange(n), own_frame]  # [B, T*S, D]
    q2 = attn.proj_q(own).reshape(Bx, n, H, E)
    k2, v2 = attn.proj_kv(traj).reshape(Bx, n, num_frames, 2, H, E).unbind(dim=3)
    weights = (torch.einsum("bnhe,bnfhe->bnhf", q2, k2) * scale).softmax(dim=-1)
    values = v2 if attn.use_projected_values else traj.reshape(Bx, n, num_frames, H, E)
    patches = torch.einsum("bnhf,bnfhe->bnhe", weights, values).reshape(Bx, n, D)
    cls = cls.permute(0, 2, 1, 3).reshape(Bx, 1, D)
    return attn.proj(torch.cat([cls, patches], dim=1))


def test_frame_by_frame_equals_full_logits():
    T, S = 3, 5
    q, k, v = torch.randn(3, 2, HEADS, T * S, E, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frame_trajectories(q, k, v, T), naive_trajectories(q, k, v, T))
    # The model can run either path and gives the same output.
    attn = TrajectoryAttention(D, num_heads=HEADS, num_frames=T).eval()
    x = torch.randn(2, 1 + T * S, D)
    efficient = attn(x)
    attn.trajectories = naive_trajectories
    torch.testing.assert_close(attn(x), efficient)


@pytest.mark.parametrize("use_projected_values", [False, True])
def test_attention_equals_naive_definition(use_projected_values):
    T, S = 4, 6
    torch.manual_seed(0)
    attn = TrajectoryAttention(
        D, num_heads=HEADS, num_frames=T, use_projected_values=use_projected_values
    ).eval()
    x = torch.randn(2, 1 + T * S, D)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), naive_trajectory_attention(attn, x, T))


def test_projected_values_option_changes_the_output():
    torch.manual_seed(0)
    released = TrajectoryAttention(D, num_heads=HEADS, num_frames=2).eval()
    projected = TrajectoryAttention(
        D, num_heads=HEADS, num_frames=2, use_projected_values=True
    ).eval()
    projected.load_state_dict(released.state_dict())
    x = torch.randn(1, 1 + 2 * 4, D)
    with torch.no_grad():
        assert not torch.allclose(released(x)[:, 1:], projected(x)[:, 1:])
        torch.testing.assert_close(released(x)[:, :1], projected(x)[:, :1])


def test_single_frame_is_attention_without_cls_key_for_patches():
    S = 7
    torch.manual_seed(0)
    attn = TrajectoryAttention(D, num_heads=HEADS, num_frames=1).eval()
    x = torch.randn(2, 1 + S, D)
    q, k, v = attn.qkv(x).reshape(2, 1 + S, 3, HEADS, E).permute(2, 0, 3, 1, 4)

    def attend(query, key, value):
        weights = ((query @ key.transpose(-2, -1)) * E**-0.5).softmax(dim=-1)
        return (weights @ value).permute(0, 2, 1, 3).reshape(2, -1, D)

    cls = attend(q[:, :, :1], k, v)
    with torch.no_grad():
        expected = attn.proj(torch.cat([cls, attend(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:])], 1))
        with_cls_key = attn.proj(torch.cat([cls, attend(q[:, :, 1:], k, v)], 1))
        out = attn(x)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, with_cls_key)


def test_tubelets_halve_the_frames_and_inflate_image_weights():
    model = create_backbone(
        "motionformer_tiny_patch8_64", num_frames=4, tubelet_size=2, depth=1
    ).eval()
    assert model.patch_embed.proj.weight.shape == (96, 3, 2, 8, 8)
    assert model.temp_embed.shape == (1, 2, 96)
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(1, 3, 4, 64, 64))
    assert tokens.patches.shape == (1, 2, 64, 96)

    image_weight = torch.randn(96, 3, 8, 8)
    converted, _ = model.convert_state_dict({"patch_embed.proj.weight": image_weight}, "timm_vit")
    frame = torch.randn(1, 3, 64, 64)
    static_clip = frame[:, :, None].expand(-1, -1, 2, -1, -1)
    clip_embedding = F.conv3d(static_clip, converted["patch_embed.proj.weight"], stride=(2, 8, 8))
    torch.testing.assert_close(clip_embedding[:, :, 0], F.conv2d(frame, image_weight, stride=8))


def _official_state_dict(depth: int, tubelet_size: int) -> dict:
    """Key names and shapes of the official Motionformer checkpoints (tiny sizes)."""
    dim, patch, S, T = 96, 8, 64, 8 // tubelet_size
    sd = {
        "cls_token": torch.randn(1, 1, dim),
        "pos_embed": torch.randn(1, 1 + S, dim),
        "temp_embed": torch.randn(1, T, dim),
        # Both embeddings are in every official checkpoint; the model uses one of them.
        "patch_embed.proj.weight": torch.randn(dim, 3, patch, patch),
        "patch_embed.proj.bias": torch.randn(dim),
        "patch_embed_3d.proj.weight": torch.randn(dim, 3, tubelet_size, patch, patch),
        "patch_embed_3d.proj.bias": torch.randn(dim),
        "norm.weight": torch.randn(dim),
        "norm.bias": torch.randn(dim),
        "pre_logits.fc.weight": torch.randn(dim, dim),
        "pre_logits.fc.bias": torch.randn(dim),
        "head.weight": torch.randn(5, dim),
        "head.bias": torch.randn(5),
    }
    shapes = {
        "norm1": (dim,),
        "attn.qkv": (3 * dim, dim),
        "attn.proj_q": (dim, dim),
        "attn.proj_kv": (2 * dim, dim),
        "attn.proj": (dim, dim),
        "norm2": (dim,),
        "mlp.fc1": (4 * dim, dim),
        "mlp.fc2": (dim, 4 * dim),
    }
    for i in range(depth):
        for name, shape in shapes.items():
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(shape)
            sd[f"blocks.{i}.{name}.bias"] = torch.randn(shape[0])
    return sd


@pytest.mark.parametrize("tubelet_size", [1, 2])
def test_official_key_names_load(tubelet_size):
    model = create_backbone(
        "motionformer_tiny_patch8_64", num_classes=5, depth=2, tubelet_size=tubelet_size
    )
    official = _official_state_dict(depth=2, tubelet_size=tubelet_size)
    converted, expected_missing = model.convert_state_dict(official, "official")
    assert expected_missing == set()
    model.load_state_dict(converted, strict=True)
    used = "patch_embed_3d" if tubelet_size > 1 else "patch_embed"
    torch.testing.assert_close(model.patch_embed.proj.weight, official[f"{used}.proj.weight"])
    torch.testing.assert_close(
        model.blocks[1].attn.proj_kv.weight, official["blocks.1.attn.proj_kv.weight"]
    )
