"""Hand-checkable cases for the TIME losses (paper Eq. 6-15)."""

import math

import pytest
import torch
import torch.nn.functional as F

from timematters.backbones import create_backbone
from timematters.backbones.protocol import VideoTokens
from timematters.config import LossConfig
from timematters.flow import FlowLabeller
from timematters.losses import (
    CrossEntropyLoss,
    DebiasLoss,
    FlowLoss,
    LossInputs,
    OrderLoss,
    build_objective,
    objective_for_model,
    sample_frame_permutations,
    shuffle_frames,
)

B, T, S, D, K = 3, 4, 6, 8, 5


def _inputs(logits=None, shuffled=None, patches=None, batch=None):
    tokens = VideoTokens(
        cls=torch.zeros(B, D), patches=patches if patches is not None else torch.zeros(B, T, S, D)
    )
    return LossInputs(
        tokens=tokens,
        logits=logits if logits is not None else torch.zeros(B, K),
        batch=batch or {"label": torch.zeros(B, dtype=torch.long)},
        shuffled_logits=shuffled,
    )


def test_debias_uniform_logits_give_zero_in_kl_form_and_log_k_in_released_form():
    uniform = torch.full((B, K), 3.7)
    kl = DebiasLoss(form="kl")(_inputs(shuffled=uniform))["debias_loss"]
    released = DebiasLoss(form="uniform_ce")(_inputs(shuffled=uniform))["debias_loss"]
    assert kl.item() == pytest.approx(0.0, abs=1e-6)
    assert released.item() == pytest.approx(math.log(K), abs=1e-6)


def test_debias_matches_kl_divergence_from_uniform():
    logits = torch.randn(B, K)
    p = logits.softmax(-1)
    u = torch.full_like(p, 1 / K)
    expected = (u * (u.log() - p.log())).sum(-1).mean()
    got = DebiasLoss(form="kl")(_inputs(shuffled=logits))["debias_loss"]
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert got.item() > 0


def test_order_confident_correct_logits_give_near_zero_loss():
    loss = OrderLoss(D, T, smoothing=0.0)
    # Features that are one-hot in the frame index, and a head that reads them out with a big gain.
    patches = torch.zeros(B, T, S, D)
    for t in range(T):
        patches[:, t, :, t] = 1.0
    with torch.no_grad():
        loss.temp_head.weight.zero_()
        loss.temp_head.bias.zero_()
        loss.temp_head.weight[:, :T] = 50 * torch.eye(T)
    value = loss(_inputs(patches=patches))["order_loss"]
    assert value.item() < 1e-6
    # Reversed frames make the same head confidently wrong.
    wrong = loss(_inputs(patches=patches.flip(1)))["order_loss"]
    assert wrong.item() > 10


def test_label_smoothing_matches_closed_form():
    eps = 0.2
    logits = torch.randn(B, K)
    labels = torch.tensor([0, 2, 4])
    log_p = logits.log_softmax(-1)
    nll = -log_p[torch.arange(B), labels]
    closed = ((1 - eps) * nll - eps * log_p.mean(-1)).mean()
    got = CrossEntropyLoss(smoothing=eps)(_inputs(logits=logits, batch={"label": labels}))[
        "ce_loss"
    ]
    assert got.item() == pytest.approx(closed.item(), abs=1e-6)


def test_flow_head_shapes_and_loss_with_perfect_logits():
    loss = FlowLoss(D, smoothing=0.0)
    patches = torch.randn(B, T, S, D)
    assert loss.predict(patches).shape == (B, T - 1, S, 9)
    labels = torch.randint(0, 9, (B, T - 1, S))
    value = loss(_inputs(patches=patches, batch={"flow_labels": labels}))["flow_loss"]
    # Chance level of a random head is about log 9; the loss is a mean over B·(T-1)·S tokens.
    assert 0.5 * math.log(9) < value.item() < 2 * math.log(9)
    # The attention runs from frame j+1's queries to frame j's keys: changing only the last frame
    # changes only the last pair's predictions.
    moved = patches.clone()
    moved[:, -1] += 1.0
    diff = (loss.predict(moved) - loss.predict(patches)).abs().amax(dim=(0, 2, 3))
    assert torch.all(diff[:-1] == 0) and diff[-1] > 0


def test_unlabelled_flow_tokens_are_left_out_and_a_batch_of_none_adds_zero_not_nan():
    loss = FlowLoss(D, smoothing=0.2)
    patches = torch.randn(B, T, S, D, requires_grad=True)
    labels = torch.randint(0, 9, (B, T - 1, S))
    partly = labels.clone()
    partly[0] = -100  # the first clip unlabelled: the mean is over the others
    value = loss(_inputs(patches=patches, batch={"flow_labels": partly}))["flow_loss"]
    rest = loss(_inputs(patches=patches[1:], batch={"flow_labels": labels[1:]}))["flow_loss"]
    torch.testing.assert_close(value, rest)
    # Before, a batch with every token unlabelled gave NaN, which poisoned the whole step.
    none = loss(_inputs(patches=patches, batch={"flow_labels": torch.full_like(labels, -100)}))
    assert none["flow_loss"].item() == 0.0
    none["flow_loss"].backward()
    assert torch.isfinite(patches.grad).all() and loss.flow_head.weight.grad.abs().sum() == 0


def test_flow_loss_is_near_zero_for_a_head_that_reads_the_labels():
    # Tokens carry their position s (channels [0, S)) and, in frame j, the one-hot label of pair j
    # at that position (channels [S, S + 9)). A head whose query and key match positions makes
    # token s of frame j+1 attend to token s of frame j, whose value is that label: the logits are
    # right, confidently, and the loss is about 0; with the labels moved by one class it is large.
    width = S + 9
    loss = FlowLoss(width, smoothing=0.0)
    labels = torch.randint(0, 9, (B, T - 1, S))
    patches = torch.zeros(B, T, S, width)
    patches[..., :S] = torch.eye(S)
    patches[:, :-1, :, S:] = F.one_hot(labels, 9).float()
    with torch.no_grad():
        for layer in (loss.mlp_q, loss.mlp_k, loss.mlp_v, loss.mlp_proj, loss.flow_head):
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        loss.mlp_q.weight[:S, :S] = 100 * torch.eye(S)  # logits 100² / sqrt(width) on the match
        loss.mlp_k.weight[:S, :S] = torch.eye(S)
        loss.mlp_v.weight[S:, S:] = torch.eye(9)
        loss.mlp_proj.weight.copy_(torch.eye(width))
        loss.flow_head.weight[:, S:] = 50 * torch.eye(9)
    perfect = loss(_inputs(patches=patches, batch={"flow_labels": labels}))["flow_loss"]
    assert perfect.item() < 1e-3
    wrong = loss(_inputs(patches=patches, batch={"flow_labels": (labels + 1) % 9}))["flow_loss"]
    assert wrong.item() > 10


def test_zero_weight_removes_the_head_and_its_inputs():
    full = build_objective(LossConfig(), embed_dim=D, num_frames=T)
    cfg = LossConfig()
    cfg.order.weight = 0.0
    cfg.flow.weight = 0.0
    cfg.debias.weight = 0.0
    ce_only = build_objective(cfg, embed_dim=D, num_frames=T)
    assert set(full.losses) == {"ce", "order", "debias", "flow"}
    assert set(ce_only.losses) == {"ce"}
    assert sum(p.numel() for p in ce_only.parameters()) == 0
    names = {n for n, _ in full.named_parameters()}
    assert any("temp_head" in n for n in names) and any("flow_head" in n for n in names)
    assert not ce_only.needs_flow_labels and full.needs_flow_labels


def test_objective_sums_weighted_terms_and_runs_one_backbone_pass():
    torch.manual_seed(0)
    model = create_backbone(
        "timesformer_tiny_patch8_64",
        num_classes=K,
        img_size=16,
        embed_dim=16,
        depth=1,
        num_heads=2,
        num_frames=T,
        drop_path_rate=0.0,
    )
    cfg = LossConfig()
    cfg.order.weight, cfg.debias.weight, cfg.flow.weight = 0.5, 2.0, 0.25
    objective = build_objective(cfg, embed_dim=model.embed_dim, num_frames=model.num_frames)
    batch = {
        "video": torch.randn(2, 3, T, 16, 16),
        "label": torch.tensor([1, 3]),
        "flow_labels": torch.randint(0, 9, (2, T - 1, 4)),
    }
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    handle = model.patch_embed.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    out = objective(model, batch, generator=torch.Generator().manual_seed(0))
    handle.remove()
    t = out.terms
    expected = t["ce_loss"] + 0.5 * t["order_loss"] + 2.0 * t["debias_loss"] + 0.25 * t["flow_loss"]
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert calls == [4]  # one patch-embedding pass over original + shuffled clips
    assert out.logits.shape == (2, K) and out.tokens.patches.shape[0] == 2
    # The shuffled half really is the same clips with permuted frames.
    perms = sample_frame_permutations(2, T, "per_batch", torch.Generator().manual_seed(0))
    shuffled, _ = shuffle_frames(batch["video"], perms=perms)
    model.eval()
    objective.eval()
    with torch.no_grad():
        direct = model(shuffled)
        again = objective(model, batch, generator=torch.Generator().manual_seed(0))
    log_p = direct.float().log_softmax(-1)
    assert again.terms["debias_loss"].item() == pytest.approx(-log_p.mean().item(), rel=1e-5)


def test_objective_for_a_model_reads_its_sizes_and_labels_flow_between_tubelets():
    kwargs = dict(num_classes=K, num_frames=4, img_size=16, depth=1, embed_dim=16, num_heads=2)
    plain = create_backbone("motionformer_tiny_patch8_64", **kwargs)
    objective = objective_for_model(plain)
    assert sorted(objective.losses) == ["ce", "debias", "flow", "order"]
    assert objective.losses["order"].temp_head.out_features == 4
    assert objective.losses["flow"].mlp_q.in_features == 16

    # 2-frame tubelets: 2 token frames; the flow labels are those between the tubelets' first
    # frames (frame_step 2), one map per pair of consecutive token frames.
    tubelets = create_backbone("motionformer_tiny_patch8_64", tubelet_size=2, **kwargs)
    objective = objective_for_model(tubelets)
    assert objective.losses["order"].temp_head.out_features == 2  # token frames, not input frames
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    labels = FlowLabeller(patch_size=8, frame_step=2).batch(video)
    assert labels.shape == (2, 1, 4)
    batch = {"video": video, "label": torch.tensor([0, 1]), "flow_labels": labels}
    out = objective(tubelets, batch)
    assert set(out.terms) == {"ce_loss", "order_loss", "debias_loss", "flow_loss"}
    out.total.backward()
    assert objective.losses["flow"].flow_head.weight.grad.abs().sum() > 0
    cfg = LossConfig()

    one_frame = create_backbone("motionformer_tiny_patch8_64", **{**kwargs, "num_frames": 1})
    cfg.flow.weight = 0  # a single position would give an order loss of 0 that teaches nothing
    with pytest.raises(ValueError, match=r"order and debias losses .* tokens have 1 frame, no"):
        objective_for_model(one_frame, cfg)
    # Nor the frame-shuffle debias: a one-frame clip shuffled is itself, and debiasing it would
    # push the real prediction to uniform. The message names the image variant.
    cfg.order.weight = 0
    with pytest.raises(ValueError, match=r"debias loss .* clips have 1 frame.*debias.axis=space"):
        objective_for_model(one_frame, cfg)
    cfg.order.weight = 1
    # The image variant: one frame, and the order loss predicts each patch's position.
    image = create_backbone("vit_tiny_patch16_64", num_classes=K)
    cfg.order.axis = cfg.debias.axis = "space"
    objective = objective_for_model(image, cfg)
    assert objective.losses["order"].temp_head.out_features == image.grid[0] * image.grid[1]


def test_every_loss_a_model_cannot_train_is_named_at_once():
    # A 4-frame model with tubelets of 4 frames: one token frame, so neither order nor flow; one
    # message names both, so that the command it suggests runs.
    kwargs = dict(num_classes=K, num_frames=4, img_size=16, depth=1, embed_dim=16, num_heads=2)
    model = create_backbone("motionformer_tiny_patch8_64", tubelet_size=4, **kwargs)
    with pytest.raises(ValueError) as caught:
        objective_for_model(model)
    message = str(caught.value)
    assert message.startswith("the order and flow losses cannot train ")
    assert "(order: its tokens have 1 frame, no order; flow: its 4 frames become 1 " in message
    assert message.endswith("give them weight 0 (loss.order.weight=0 loss.flow.weight=0)")
    cfg = LossConfig()
    cfg.order.weight = cfg.flow.weight = 0
    assert sorted(objective_for_model(model, cfg).losses) == ["ce", "debias"]


def test_losses_built_for_other_tokens_say_so_instead_of_scoring_them():
    # An order head built with 8 input frames for tokens of 4 frames would silently train 4 unused
    # classes; flow labels at another patch size would fail inside cross_entropy.
    with pytest.raises(ValueError, match="predicts 8 positions but the tokens have 4 frames"):
        OrderLoss(D, num_frames=8)(_inputs())
    wrong = {"label": torch.zeros(B, dtype=torch.long), "flow_labels": torch.zeros(B, T - 1, 24)}
    with pytest.raises(ValueError, match=r"flow_labels are \(3, 3, 24\) .* \(3, 3, 6\)"):
        FlowLoss(D)(_inputs(batch=wrong))


def test_shuffle_frames_permutes_frames_per_sample_without_identity():
    video = torch.arange(T).float().view(1, 1, T, 1, 1).expand(50, 3, T, 2, 2).clone()
    shuffled, perms = shuffle_frames(video, "per_sample", torch.Generator().manual_seed(1))
    assert not (perms == torch.arange(T)).all(dim=1).any()
    assert torch.equal(shuffled[:, 0, :, 0, 0], perms.float())
    assert len({tuple(p.tolist()) for p in perms}) > 5
    _, batch_perms = shuffle_frames(video, "per_batch", torch.Generator().manual_seed(1))
    assert (batch_perms == batch_perms[0]).all()
    with pytest.raises(ValueError, match="per_batch"):
        sample_frame_permutations(2, T, "sometimes")


def test_per_sample_permutations_do_not_depend_on_the_batch_split():
    # Evaluation draws clip by clip from one generator: 2 frames (identity half the time) in
    # batches of 1, 3 or 12 give the same permutation per clip.
    def draws(batch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(5)
        return torch.cat(
            [
                sample_frame_permutations(batch, 2, "per_sample", generator)
                for _ in range(12 // batch)
            ]
        )

    assert torch.equal(draws(1), draws(3)) and torch.equal(draws(3), draws(12))
    assert (draws(12) == torch.tensor([1, 0])).all()  # never the identity
