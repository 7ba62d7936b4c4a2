"""X-ViT: space-time mixing against its definition, ViT equivalence, consensus head, official keys."""

import pytest
import torch

from timematters.backbones import create_backbone
from timematters.backbones.xvit import SpaceTimeMixingAttention, shift_channel_groups


def test_shift_moves_channel_groups_with_zeros_at_the_ends():
    T, D = 3, 8
    x = (torch.arange(T)[:, None] * 100 + torch.arange(D)[None]).float()  # frame t, channel d
    shifted = shift_channel_groups(x[None, :, None], shift_div=4)[0, :, 0]
    expected = torch.tensor(
        [
            [100, 101, 0, 0, 4, 5, 6, 7],  # frame 0: no previous frame
            [200, 201, 2, 3, 104, 105, 106, 107],
            [0, 0, 102, 103, 204, 205, 206, 207],  # frame 2: no next frame
        ]
    ).float()
    torch.testing.assert_close(shifted, expected)


def test_mixing_equals_heads_attending_to_neighbouring_frames():
    # 4 heads of 12 channels and shift_div 4: head 0 reads frame t+1's keys and values, head 1
    # frame t-1's, heads 2 and 3 their own frame; a missing neighbour gives zero keys and values.
    B, T, N, D, H = 2, 4, 5, 48, 4
    torch.manual_seed(0)
    attn = SpaceTimeMixingAttention(D, num_heads=H, shift_div=4).eval()
    x = torch.randn(B, T, N, D)
    q, k, v = attn.qkv(x).reshape(B, T, N, 3, H, D // H).unbind(dim=3)  # [B, T, N, H, E] each
    zeros = torch.zeros_like(k[:, :1])
    source = {
        0: (torch.cat([k[:, 1:], zeros], 1), torch.cat([v[:, 1:], zeros], 1)),
        1: (torch.cat([zeros, k[:, :-1]], 1), torch.cat([zeros, v[:, :-1]], 1)),
    }
    heads = []
    for h in range(H):
        keys, values = source.get(h, (k, v))
        logits = torch.einsum("btne,btme->btnm", q[..., h, :], keys[..., h, :]) * (D // H) ** -0.5
        heads.append(torch.einsum("btnm,btme->btne", logits.softmax(dim=-1), values[..., h, :]))
    with torch.no_grad():
        expected = attn.proj(torch.cat(heads, dim=-1))
        torch.testing.assert_close(attn(x), expected)


def _timm_vit(depth: int):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=64,
        patch_size=8,
        embed_dim=96,
        depth=depth,
        num_heads=3,
        num_classes=0,
    ).eval()


@pytest.mark.parametrize("shift_div", [None, 4])
def test_without_mixing_equals_timm_vit_per_frame(shift_div):
    vit = _timm_vit(depth=2)
    model = create_backbone("xvit_tiny_patch8_64", num_frames=3, depth=2, shift_div=shift_div)
    converted, expected_missing = model.convert_state_dict(vit.state_dict(), "timm_vit")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert set(missing) == expected_missing and not unexpected
    assert not model.temp_embed.any()

    video = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        patches = model.eval().forward_features(video).patches
        per_frame = torch.stack([vit.forward_features(video[:, :, t]) for t in range(3)], dim=1)
    if shift_div is None:
        torch.testing.assert_close(patches, per_frame[:, :, 1:])
    else:  # the mixing really mixes
        assert not torch.allclose(patches, per_frame[:, :, 1:], rtol=1e-2, atol=1e-2)


def test_consensus_has_no_frame_order_and_feeds_the_classifier():
    model = create_backbone("xvit_tiny_patch8_64", num_classes=5, num_frames=4, depth=1).eval()
    frame_cls = torch.randn(2, 4, 96)
    with torch.no_grad():
        pooled = model.consensus(frame_cls)
        # No position embedding in the temporal head: the frame order does not reach the CLS.
        torch.testing.assert_close(model.consensus(frame_cls[:, [2, 0, 3, 1]]), pooled)
        x = model.consensus.temporal_encoder(
            torch.cat([model.consensus.cls_token.expand(2, -1, -1), frame_cls], 1)
        )
        torch.testing.assert_close(model.forward_head(pooled), model.consensus.mlp_head(x[:, 0]))


def _official_state_dict(depth: int) -> dict:
    """Key names and shapes of the official X-ViT checkpoints (tiny sizes, SSv2 settings)."""
    dim, S, T, K = 96, 64, 8, 5
    sd = {
        "base_model.cls_token": torch.randn(1, 1, dim),
        "base_model.pos_embed": torch.randn(1, 1 + S, dim),
        "base_model.temp_embed": torch.randn(1, T, 1, dim),
        "base_model.patch_embed.proj.weight": torch.randn(dim, 3, 8, 8),
        "base_model.patch_embed.proj.bias": torch.randn(dim),
        "base_model.norm.weight": torch.randn(dim),
        "base_model.norm.bias": torch.randn(dim),
        # Built by the official code next to the consensus head, and unused.
        "new_fc.weight": torch.randn(K, dim),
        "new_fc.bias": torch.randn(K),
        "consensus.cls_token": torch.randn(1, 1, dim),
        "consensus.mlp_head.0.weight": torch.randn(dim),
        "consensus.mlp_head.0.bias": torch.randn(dim),
        "consensus.mlp_head.1.weight": torch.randn(dim, dim),
        "consensus.mlp_head.1.bias": torch.randn(dim),
        "consensus.mlp_head.4.weight": torch.randn(K, dim),
        "consensus.mlp_head.4.bias": torch.randn(K),
    }
    shapes = {
        "norm1": (dim,),
        "attn.qkv": (3 * dim, dim),
        "attn.proj": (dim, dim),
        "norm2": (dim,),
        "mlp.fc1": (4 * dim, dim),
        "mlp.fc2": (dim, 4 * dim),
    }
    blocks = [f"base_model.blocks.{i}" for i in range(depth)] + ["consensus.temporal_encoder.0"]
    for prefix in blocks:
        for name, shape in shapes.items():
            sd[f"{prefix}.{name}.weight"] = torch.randn(shape)
            if not (prefix.startswith("consensus") and name == "attn.qkv"):  # qkv bias off there
                sd[f"{prefix}.{name}.bias"] = torch.randn(shape[0])
    return sd


def test_official_key_names_load():
    model = create_backbone("xvit_tiny_patch8_64", num_classes=5, depth=2)
    official = _official_state_dict(depth=2)
    converted, expected_missing = model.convert_state_dict(official, "official")
    assert expected_missing == set()
    model.load_state_dict(converted, strict=True)
    torch.testing.assert_close(model.temp_embed, official["base_model.temp_embed"])
    torch.testing.assert_close(
        model.consensus.mlp_head[4].weight, official["consensus.mlp_head.4.weight"]
    )
