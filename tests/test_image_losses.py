"""The image TIME losses (paper Eq. 16-18) on hand-checkable inputs, and their objective."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import repeat

from timematters.backbones import create_backbone
from timematters.backbones.protocol import VideoTokens
from timematters.config import LossConfig, load_config
from timematters.losses import (
    DebiasLoss,
    LossInputs,
    OrderLoss,
    PatchDebiasLoss,
    SpatialOrderLoss,
    build_objective,
    shuffle_patches,
)

B, S, D, K = 2, 4, 6, 5


def _inputs(patches: torch.Tensor) -> LossInputs:
    tokens = VideoTokens(cls=torch.zeros(patches.shape[0], D), patches=patches)
    return LossInputs(tokens, torch.zeros(patches.shape[0], K), {"label": torch.zeros(B).long()})


def test_shuffle_patches_by_hand():
    # A 4x4 one-channel image of 2x2 patches numbered 0 1 / 2 3 (row-major).
    image = repeat(torch.arange(4.0), "(h w) -> 1 1 1 (h p) (w q)", h=2, p=2, q=2)
    shuffled, perms = shuffle_patches(image, 2, perms=torch.tensor([[2, 0, 3, 1]]))
    expected = torch.tensor(
        [[2.0, 2.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0], [3.0, 3.0, 1.0, 1.0], [3.0, 3.0, 1.0, 1.0]]
    )
    assert torch.equal(shuffled[0, 0, 0], expected)
    assert perms.tolist() == [[2, 0, 3, 1]]


def test_shuffle_patches_moves_whole_patches_and_draws_per_sample_or_per_batch():
    video = torch.randn(3, 3, 1, 8, 12)  # a 2x3 grid of 4x4 patches, all channels move together
    generator = torch.Generator().manual_seed(0)
    shuffled, perms = shuffle_patches(video, 4, "per_sample", generator)
    assert perms.shape == (3, 6)
    assert not (perms == torch.arange(6)).all(dim=1).any(), "per_sample never draws the identity"

    def patch(x: torch.Tensor, b: int, k: int) -> torch.Tensor:
        row, col = divmod(k, 3)
        return x[b, :, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4]

    for b in range(3):
        for slot in range(6):
            assert torch.equal(patch(shuffled, b, slot), patch(video, b, perms[b, slot].item()))
    _, batch_perms = shuffle_patches(video, 4, "per_batch", generator)
    assert (batch_perms == batch_perms[0]).all()
    with pytest.raises(ValueError, match="patches"):
        shuffle_patches(video, 5)


def test_shuffling_pixels_equals_shuffling_tokens_before_the_position_embedding():
    model = create_backbone(
        "vit_tiny_patch16_64", num_classes=K, img_size=32, patch_size=8, drop_path_rate=0.0
    )
    model.eval()
    video = torch.randn(2, 3, 1, 32, 32)
    shuffled, perms = shuffle_patches(video, 8, "per_sample", torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = model.patch_embed(video)  # [B, 1, S, D]
        reordered = torch.stack([tokens[b, :, perms[b]] for b in range(2)])
        torch.testing.assert_close(model.patch_embed(shuffled), reordered)
        # Without position embeddings the model is permutation-equivariant: same CLS, moved patches.
        model.pos_embed.zero_()
        plain, moved = model.forward_features(video), model.forward_features(shuffled)
    torch.testing.assert_close(moved.cls, plain.cls, atol=1e-5, rtol=1e-5)
    expected = torch.stack([plain.patches[b, :, perms[b]] for b in range(2)])
    torch.testing.assert_close(moved.patches, expected, atol=1e-5, rtol=1e-5)


def test_spatial_order_loss_by_hand():
    loss = SpatialOrderLoss(D, S, smoothing=0.0)
    assert loss.temp_head.out_features == S
    # Patch s carries a one-hot at channel s; a head reading channels 0..S-1 with a big gain
    # predicts every position, and a head of zeros is uniform (log S).
    patches = torch.zeros(B, 1, S, D)
    for s in range(S):
        patches[:, 0, s, s] = 1.0
    with torch.no_grad():
        loss.temp_head.weight.zero_()
        loss.temp_head.bias.zero_()
        assert loss(_inputs(patches))["order_loss"].item() == pytest.approx(math.log(S), abs=1e-6)
        loss.temp_head.weight[:, :S] = 50.0 * torch.eye(S)
        assert loss(_inputs(patches))["order_loss"].item() < 1e-6
        # Patches in reverse order: every token predicts the wrong position.
        assert loss(_inputs(patches.flip(2)))["order_loss"].item() > 10


def test_spatial_order_loss_is_the_mean_cross_entropy_over_every_patch():
    torch.manual_seed(0)
    loss = SpatialOrderLoss(D, S, smoothing=0.2)
    patches = torch.randn(B, 2, S, D)  # two frames: each frame's patches predict their positions
    logits = loss.temp_head(patches)  # [B, T, S, S]
    expected = F.cross_entropy(
        logits.reshape(-1, S), torch.arange(S).repeat(B * 2), label_smoothing=0.2
    )
    got = loss(_inputs(patches))["order_loss"]
    torch.testing.assert_close(got, expected)


def test_patch_debias_shuffles_patches_and_scores_like_the_video_debias():
    loss = PatchDebiasLoss(patch_size=2, shuffle="per_sample")
    video = torch.arange(2 * 16.0).reshape(2, 1, 1, 4, 4)
    shuffled = loss.shuffled_view(video, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, video)
    for b in range(2):  # same pixels, and every 2x2 patch still whole
        assert torch.equal(shuffled[b].flatten().sort().values, video[b].flatten())
        patch_sums = shuffled[b, 0, 0].reshape(2, 2, 2, 2).sum((1, 3)).flatten().sort().values
        assert torch.equal(patch_sums, video[b, 0, 0].reshape(2, 2, 2, 2).sum((1, 3)).flatten())
    logits = torch.randn(B, K)
    inputs = LossInputs(_inputs(torch.zeros(B, 1, S, D)).tokens, logits, {}, shuffled_logits=logits)
    assert torch.equal(loss(inputs)["debias_loss"], DebiasLoss()(inputs)["debias_loss"])


def test_build_objective_picks_the_axis():
    video_objective = build_objective(
        LossConfig(), embed_dim=D, num_frames=4, grid=(2, 2), patch_size=8
    )
    assert type(video_objective.losses["order"]) is OrderLoss
    assert type(video_objective.losses["debias"]) is DebiasLoss

    cfg = load_config(
        None, ["loss.order.axis=space", "loss.debias.axis=space", "loss.flow.weight=0"]
    )
    image_objective = build_objective(
        cfg.loss, embed_dim=D, num_frames=1, grid=(2, 3), patch_size=8
    )
    assert set(image_objective.losses) == {"ce", "order", "debias"}
    assert isinstance(image_objective.losses["order"], SpatialOrderLoss)
    assert image_objective.losses["order"].temp_head.out_features == 6
    assert image_objective.losses["debias"].patch_size == 8
    with pytest.raises(ValueError, match="grid"):
        build_objective(cfg.loss, embed_dim=D, num_frames=1)


def test_image_objective_on_a_vit_sums_eq_18_and_trains_the_backbone_through_the_shuffled_view():
    cfg = load_config(
        None,
        [
            "loss.order.axis=space",
            "loss.debias.axis=space",
            "loss.flow.weight=0",
            "loss.order.weight=0.5",
            "loss.debias.shuffle=per_sample",
        ],
    )
    torch.manual_seed(0)
    model = create_backbone(
        "vit_tiny_patch16_64", num_classes=K, img_size=32, patch_size=8, drop_path_rate=0.0
    )
    objective = build_objective(
        cfg.loss,
        embed_dim=model.embed_dim,
        num_frames=1,
        grid=model.grid,
        patch_size=model.patch_size,
    )
    batch = {"video": torch.randn(B, 3, 1, 32, 32), "label": torch.tensor([0, 3])}
    out = objective(model, batch, torch.Generator().manual_seed(0))
    terms = out.terms
    assert set(terms) == {"ce_loss", "order_loss", "debias_loss"}
    torch.testing.assert_close(
        out.total, terms["ce_loss"] + 0.5 * terms["order_loss"] + terms["debias_loss"]
    )
    assert out.tokens.patches.shape == (B, 1, 16, model.embed_dim)
    # The debias term alone reaches the patch embedding: the shuffled images went through it.
    model.zero_grad()
    terms["debias_loss"].backward(retain_graph=True)
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.losses["order"].parameters())
