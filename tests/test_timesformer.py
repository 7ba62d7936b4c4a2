"""TimeSformer parity: against Hugging Face ``transformers`` (same weights -> same logits and
tokens) and against timm's ViT (T = 1, or identical frames, with zero temporal_fc and time_embed)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange, repeat

from timematters.backbones.pretrained import load_pretrained
from timematters.backbones.timesformer import TimeSformer

TOL = 1e-4


def _tiny_timesformer(**kwargs) -> TimeSformer:
    defaults = {
        "num_classes": 5,
        "num_frames": 4,
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "drop_path_rate": 0.0,
    }
    return TimeSformer(**{**defaults, **kwargs}).eval()


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter, so no zero or unit init can hide a wiring mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_matches_hugging_face_timesformer(tmp_path, suffix):
    transformers = pytest.importorskip("transformers")
    config = transformers.TimesformerConfig(
        image_size=32,
        patch_size=8,
        num_frames=4,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=5,
        attention_type="divided_space_time",
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    torch.manual_seed(0)
    theirs = transformers.TimesformerForVideoClassification(config).eval()
    _perturb(theirs, seed=1)
    assert theirs.timesformer.encoder.layer[0].temporal_dense.weight.abs().min() > 0
    assert theirs.timesformer.embeddings.time_embeddings.abs().min() > 0

    path = tmp_path / f"hf{suffix}"
    state_dict = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)

    ours = _tiny_timesformer(mlp_ratio=2.0)
    report = load_pretrained(ours, path)
    assert report.source == "hf_timesformer"
    assert report.new == [] and report.resized == {} and report.dropped == []

    video = torch.randn(2, 3, 4, 32, 32)  # [B, C, T, H, W]
    with torch.no_grad():
        out = theirs(
            pixel_values=rearrange(video, "b c t h w -> b t c h w"), output_hidden_states=True
        )
        their_tokens = theirs.timesformer(rearrange(video, "b c t h w -> b t c h w"))
        tokens = ours.forward_features(video)
        logits = ours.forward_head(tokens.cls)

    assert (logits - out.logits).abs().max() <= TOL
    assert (tokens.cls - their_tokens.last_hidden_state[:, 0]).abs().max() <= TOL
    # Hugging Face (like the official code) orders the patch tokens space-major: (s t).
    their_patches = rearrange(their_tokens.last_hidden_state[:, 1:], "b (s t) d -> b t s d", t=4)
    assert (tokens.patches - their_patches).abs().max() <= TOL
    assert out.logits.abs().max() > 0.1  # a non-trivial comparison


def _tiny_vit(timm):
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        num_classes=5,
    ).eval()
    _perturb(vit, seed=2)
    return vit


@pytest.mark.parametrize("num_frames", [1, 4])
def test_inflated_vit_matches_timm_on_repeated_frames(tmp_path, num_frames):
    timm = pytest.importorskip("timm")
    vit = _tiny_vit(timm)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)

    ours = _tiny_timesformer(num_frames=num_frames)
    report = load_pretrained(ours, path)
    assert report.source == "timm_vit"
    assert set(report.new) == {"time_embed"} | {
        f"blocks.{i}.temporal_fc.{p}" for i in range(2) for p in ("weight", "bias")
    }
    # The temporal branch starts as a copy of the spatial one.
    assert torch.equal(ours.blocks[1].temporal_attn.qkv.weight, vit.blocks[1].attn.qkv.weight)

    frame = torch.randn(2, 3, 32, 32)
    video = repeat(frame, "b c h w -> b c t h w", t=num_frames)
    with torch.no_grad():
        expected = vit(frame)
        tokens = ours.forward_features(video)
        logits = ours.forward_head(tokens.cls)
        their_tokens = vit.forward_features(frame)  # [B, 1 + S, D] after the final norm

    assert (logits - expected).abs().max() <= TOL
    assert (tokens.cls - their_tokens[:, 0]).abs().max() <= TOL
    for t in range(num_frames):
        assert (tokens.patches[:, t] - their_tokens[:, 1:]).abs().max() <= TOL
    assert expected.abs().max() > 0.1


def test_nonzero_temporal_fc_breaks_vit_equality(tmp_path):
    """The timm check above can fail: a temporal branch that is switched on changes the output."""
    timm = pytest.importorskip("timm")
    vit = _tiny_vit(timm)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    ours = _tiny_timesformer(num_frames=1)
    load_pretrained(ours, path)
    with torch.no_grad():
        ours.blocks[0].temporal_fc.weight.normal_(std=0.1)
        frame = torch.randn(2, 3, 32, 32)
        assert (ours(frame[:, :, None]) - vit(frame)).abs().max() > 1e-3
