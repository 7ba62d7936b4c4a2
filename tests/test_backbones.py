"""Contract tests over the backbone registry: every registered backbone, built at a tiny size."""

import pytest
import torch
from einops import repeat
from torch import nn

from timematters.backbones import VideoBackbone, VideoTokens, create_backbone, list_backbones

B, T, IMG, PATCH, D, DEPTH, HEADS, K = 2, 4, 32, 8, 48, 2, 3, 5
S = (IMG // PATCH) ** 2
TINY = {
    "num_classes": K,
    "num_frames": T,
    "img_size": IMG,
    "patch_size": PATCH,
    "embed_dim": D,
    "depth": DEPTH,
    "num_heads": HEADS,
    "drop_path_rate": 0.0,
}
BACKBONES = list_backbones()


def _frames(name: str) -> int:
    """Clip length of the tiny build: an image model is a one-frame video model (T = 1)."""
    with torch.device("meta"):
        return T if create_backbone(name).num_frames > 1 else 1


FRAMES = {name: _frames(name) for name in BACKBONES}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, **{**TINY, "num_frames": FRAMES[name]}).eval()


def random_video(name: str, batch: int = B) -> torch.Tensor:
    shape = (batch, 3, FRAMES[name], IMG, IMG)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", ["timesformer", "motionformer", "xvit"])
def test_every_family_has_the_papers_vit_b_and_a_tiny_size(family):
    # The paper's setting: ViT-B/16 (D 768, 12 blocks of 12 heads) on 8 frames of 224²; and a
    # CPU size for tests and the built-in benchmark. Both honour the backbone protocol.
    with torch.device("meta"):
        base = create_backbone(f"{family}_base_patch16_224")
        tiny = create_backbone(f"{family}_tiny_patch8_64")
    for model in (base, tiny):
        assert isinstance(model, VideoBackbone)
        assert model.token_frames == model.num_frames == 8
        assert model.classifier_name in {n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
    assert (base.embed_dim, len(base.blocks), base.patch_size, base.grid) == (768, 12, 16, (14, 14))
    heads = [m.num_heads for m in base.modules() if hasattr(m, "num_heads")]
    assert heads and set(heads) == {12}
    assert (tiny.embed_dim, tiny.patch_size, tiny.grid) == (96, 8, (8, 8))


@pytest.mark.parametrize("name", BACKBONES)
def test_default_size_on_meta_device(name):
    # The registered sizes, without allocating weights: attributes and output shapes.
    with torch.device("meta"):
        model = create_backbone(name)
        H = model.grid[0] * model.patch_size
        tokens = model.forward_features(torch.empty(1, 3, model.num_frames, H, H))
        logits = model.forward_head(tokens.cls)
    assert model.grid == (H // model.patch_size,) * 2
    assert tokens.cls.shape == (1, model.embed_dim)
    assert tokens.patches.shape[2:] == (model.grid[0] * model.grid[1], model.embed_dim)
    assert logits.shape == (1, model.num_classes)


@pytest.mark.parametrize("name", BACKBONES)
def test_shapes_and_finite(name):
    model = build(name)
    T = FRAMES[name]
    assert (model.num_classes, model.num_frames, model.embed_dim) == (K, T, D)
    assert (model.patch_size, model.grid) == (PATCH, (IMG // PATCH, IMG // PATCH))
    video = random_video(name)
    with torch.no_grad():
        tokens = model.forward_features(video, return_blocks=True)
        logits = model(video)
    assert isinstance(tokens, VideoTokens)
    assert tokens.cls.shape == (B, D)
    assert tokens.patches.shape == (B, T, S, D)
    assert tokens.frame_features.shape == (B, T, D)
    assert len(tokens.blocks) == DEPTH
    assert all(block.shape == (B, T, S, D) for block in tokens.blocks)
    assert logits.shape == (B, K)
    torch.testing.assert_close(logits, model.forward_head(tokens.cls))
    for tensor in (tokens.cls, tokens.patches, logits, *tokens.blocks):
        assert torch.isfinite(tensor).all()
    assert model.forward_features(video).blocks is None


@pytest.mark.parametrize("name", BACKBONES)
def test_rejects_wrong_frame_count(name):
    with pytest.raises(ValueError, match="frames"):
        build(name).forward_features(torch.zeros(1, 3, FRAMES[name] + 1, IMG, IMG))


@pytest.mark.parametrize("name", BACKBONES)
def test_every_parameter_gets_a_gradient(name):
    model = build(name)
    # Zero-initialised gates (temporal_fc, time embeddings) would hide a parameter behind them:
    # perturb everything so that only a truly unused parameter gets no gradient.
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokens = model.forward_features(random_video(name))
    logits = model.forward_head(tokens.cls)
    # Random weights: a plain sum over a LayerNorm's output has no gradient when its weight is flat.
    generator = torch.Generator().manual_seed(3)
    loss = (logits * torch.randn(logits.shape, generator=generator)).sum()
    loss = loss + (tokens.patches * torch.randn(tokens.patches.shape, generator=generator)).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"parameters without gradient: {missing}"


def _tagging_model(name: str) -> nn.Module:
    """A model whose every patch token keeps only its own input, readable in channel 0.

    All weights are zero (so every block is the identity: zero attention and MLP branches), every
    LayerNorm is a plain normalisation and square per-token layers (Motionformer's pre-logits)
    become 0.1 * identity. The patch embedding writes its input into channel 0 next to constant
    channels 1 and -1, so after the final norm channel 0 is strictly increasing in that input.
    """
    model = build(name)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, nn.Linear) and module.in_features == module.out_features:
                module.weight.copy_(0.1 * torch.eye(module.in_features))
        model.patch_embed.proj.bias[1:3] = torch.tensor([1.0, -1.0])
    return model


def _assert_increasing_in_t_s_order(patches: torch.Tensor) -> None:
    # patches [1, T, S, D]: channel 0 read in (t s) order must follow the tags t + s / S.
    values = patches[0, :, :, 0].flatten()
    assert (values.diff() > 0).all(), "patch tokens are not at patches[:, t, s]"


@pytest.mark.parametrize("name", BACKBONES)
def test_token_order_from_content(name):
    # Frame t, patch s (row-major) is filled with the value t + s / S.
    T = FRAMES[name]
    model = _tagging_model(name)
    with torch.no_grad():
        model.patch_embed.proj.weight[0] = 1.0 / model.patch_embed.proj.weight[0].numel()
    tags = torch.arange(T)[:, None] + torch.arange(S)[None] / S  # [T, S]
    video = repeat(tags, "t (h w) -> 1 c t (h ph) (w pw)", c=3, h=IMG // PATCH, ph=PATCH, pw=PATCH)
    with torch.no_grad():
        _assert_increasing_in_t_s_order(model.forward_features(video).patches)


@pytest.mark.parametrize("name", BACKBONES)
def test_token_order_from_embeddings(name):
    # A blank video: position embedding s carries s / S, time embedding t carries t (image models
    # have one frame and no time embedding).
    T = FRAMES[name]
    model = _tagging_model(name)
    params = dict(model.named_parameters())
    time_embed = [params[n] for n in ("time_embed", "temp_embed") if n in params]
    assert len(time_embed) == int(T > 1), (
        "expected one time embedding named time_embed or temp_embed"
    )
    with torch.no_grad():
        params["pos_embed"][0, 1:, 0] = torch.arange(S) / S
        for embed in time_embed:
            embed.view(T, D)[:, 0] = torch.arange(T).float()
        patches = model.forward_features(torch.zeros(1, 3, T, IMG, IMG)).patches
    _assert_increasing_in_t_s_order(patches)


@pytest.mark.parametrize("name", BACKBONES)
def test_loads_timm_vit_weights(name):
    timm = pytest.importorskip("timm")
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=K,
    )
    model = build(name)
    converted, expected_missing = model.convert_state_dict(vit.state_dict(), "timm_vit")
    own = model.state_dict()
    assert set(converted) <= set(own), f"unexpected keys: {set(converted) - set(own)}"
    assert set(own) - set(converted) == expected_missing
    model.load_state_dict(converted, strict=False)
    torch.testing.assert_close(
        model.state_dict()["blocks.1.attn.qkv.weight"], vit.state_dict()["blocks.1.attn.qkv.weight"]
    )


@pytest.mark.parametrize("keys", [8, 17, 65])
def test_attention_matches_softmax_attention_on_either_path(keys, monkeypatch):
    from timematters.backbones import layers

    torch.manual_seed(0)
    exact = [torch.randn(6, 3, keys, 32, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    q, k, v = exact
    reference = ((q @ k.transpose(-2, -1)) / 32**0.5).softmax(dim=-1) @ v
    grad_out = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, exact, grad_out)
    inputs = [t.detach().float().requires_grad_() for t in exact]
    for max_keys in (0, 1000):  # the fused kernel, then the two matmuls
        monkeypatch.setattr(layers, "CPU_MATMUL_MAX_KEYS", max_keys)
        out = layers.attention(*inputs)
        grads = torch.autograd.grad(out, inputs, grad_out.float())
        torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-6)
        for grad, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(grad.double(), want, rtol=0, atol=1e-5)
