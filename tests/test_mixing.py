"""Mixup and CutMix of clips (data.mixup / data.cutmix) and the targets the losses take from them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import assert_resumes_exactly, tiny_config

from timematters.backbones import create_backbone
from timematters.config import ConfigError, load_config, validate
from timematters.flow import clip_flow_labels
from timematters.losses import FlowLoss, LossInputs, objective_for_model
from timematters.losses.mixing import Mix, mix_clips, mixed_cross_entropy

B, K, P = 4, 6, 8  # clips, classes, patch size


def _batch(T: int = 4, size: int = 32) -> dict:
    torch.manual_seed(0)
    return {"video": torch.rand(B, 3, T, size, size) * 2 - 1, "label": torch.tensor([0, 3, 5, 1])}


def test_mixup_blends_each_clip_with_its_partner_in_the_flipped_batch():
    batch = _batch()
    out = mix_clips(batch, mixup=0.8, rng=np.random.default_rng(0))
    lam = out["mix"].lam
    assert 0 < lam < 1 and out["mix"].partner_tokens is None
    torch.testing.assert_close(
        out["video"], lam * batch["video"] + (1 - lam) * batch["video"].flip(0)
    )
    assert out["label"] is batch["label"]  # the labels stay; the losses mix their targets


def test_mixed_cross_entropy_equals_timms_soft_mixup_targets():
    # timm's Mixup pairs clips the same way (the flipped batch) and smooths before mixing.
    from timm.data.mixup import mixup_target

    torch.manual_seed(1)
    logits, labels = torch.randn(B, K), torch.tensor([0, 3, 5, 1])
    for lam in (0.3, 0.77):
        target = mixup_target(labels, K, lam=lam, smoothing=0.2)
        expected = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        got = mixed_cross_entropy(logits, labels, Mix(lam=lam), smoothing=0.2)
        torch.testing.assert_close(got, expected)
    plain = F.cross_entropy(logits, labels, label_smoothing=0.2)
    torch.testing.assert_close(mixed_cross_entropy(logits, labels, None, smoothing=0.2), plain)


def test_cutmix_pastes_a_box_of_whole_patches_on_every_frame():
    batch = _batch()
    for seed in range(20):
        out = mix_clips(batch, cutmix=1.0, patch_size=P, rng=np.random.default_rng(seed))
        mix = out["mix"]
        box = mix.partner_tokens.view(4, 4)  # on the 4 x 4 patch grid
        assert mix.lam == 1 - box.sum().item() / 16
        rows, cols = box.any(dim=1), box.any(dim=0)
        assert torch.equal(box, rows[:, None] & cols[None, :])  # a rectangle
        inside = box.repeat_interleave(P, 0).repeat_interleave(P, 1)  # [32, 32] pixels
        partner = batch["video"].flip(0)
        assert torch.equal(out["video"][..., inside], partner[..., inside])
        assert torch.equal(out["video"][..., ~inside], batch["video"][..., ~inside])


def test_off_or_not_drawn_leaves_the_batch_as_it_is():
    batch = _batch()
    assert mix_clips(batch, rng=np.random.default_rng(0)) is batch
    assert mix_clips(batch, mixup=0.8, prob=0.0, rng=np.random.default_rng(0)) is batch
    kinds = {
        mix_clips(batch, mixup=0.8, cutmix=1.0, rng=np.random.default_rng(seed))[
            "mix"
        ].partner_tokens
        is None
        for seed in range(30)
    }
    assert kinds == {True, False}  # both on: some batches blended, some cut


def _tiny_model() -> torch.nn.Module:
    return create_backbone(
        "timesformer_tiny_patch8_64",
        num_classes=K,
        num_frames=4,
        img_size=32,
        embed_dim=24,
        depth=1,
        num_heads=2,
    )


def _flow_inputs(model, batch) -> LossInputs:
    tokens = model.forward_features(batch["video"])
    return LossInputs(tokens=tokens, logits=model.forward_head(tokens.cls), batch=batch)


def test_the_flow_loss_takes_the_partners_labels_inside_a_cutmix_box():
    model = _tiny_model()
    loss = FlowLoss(embed_dim=24, smoothing=0.2)
    batch = _batch()
    labels = torch.stack([clip_flow_labels(clip, P) for clip in batch["video"]])  # [B, 3, 16]
    for seed in range(10):  # a box that is neither empty nor the whole frame
        mixed = mix_clips(
            {**batch, "flow_labels": labels},
            cutmix=1.0,
            patch_size=P,
            rng=np.random.default_rng(seed),
        )
        mask = mixed["mix"].partner_tokens
        if 0 < mask.sum() < 16:
            break
    assert 0 < mask.sum() < 16
    by_hand = {**mixed, "flow_labels": torch.where(mask, labels.flip(0), labels)}
    by_hand.pop("mix")
    torch.testing.assert_close(
        loss(_flow_inputs(model, mixed))["flow_loss"],
        loss(_flow_inputs(model, by_hand))["flow_loss"],
    )
    # After a blend, each token's loss is the λ-weighted sum over the two clips' labels.
    blended = mix_clips({**batch, "flow_labels": labels}, mixup=0.8, rng=np.random.default_rng(0))
    lam = blended["mix"].lam
    inputs = _flow_inputs(model, blended)
    own = loss(_flow_inputs(model, {**blended, "mix": None}))["flow_loss"]
    other = loss(_flow_inputs(model, {**blended, "mix": None, "flow_labels": labels.flip(0)}))
    torch.testing.assert_close(
        loss(inputs)["flow_loss"], lam * own + (1 - lam) * other["flow_loss"]
    )


def test_the_whole_objective_trains_on_a_mixed_batch():
    model = _tiny_model()
    objective = objective_for_model(model)
    batch = _batch()
    batch["flow_labels"] = torch.stack([clip_flow_labels(c, P) for c in batch["video"]])
    out = objective(
        model, mix_clips(batch, mixup=0.8, cutmix=1.0, patch_size=P, rng=np.random.default_rng(0))
    )
    assert set(out.terms) == {"ce_loss", "order_loss", "debias_loss", "flow_loss"}
    out.total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.mixup=-0.1", "data.mixup must be at least 0"),
        ("data.cutmix=-1", "data.cutmix must be at least 0"),
        ("data.mix_prob=1.5", r"data.mix_prob must be in \[0, 1\]"),
        ("data.mix_switch_prob=-0.5", r"data.mix_switch_prob must be in \[0, 1\]"),
        ("data.random_erase=2", r"data.random_erase must be in \[0, 1\]"),
    ],
)
def test_bad_mixing_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config("synthetic/time", [override]))


def test_a_run_with_mixup_and_cutmix_resumes_exactly(tmp_path):
    from timematters.engine.train import train

    extra = ["data.mixup=0.8", "data.cutmix=1.0", "train.save_every_steps=3"]
    full, _ = assert_resumes_exactly(tmp_path, *extra)
    plain = {}
    train(tiny_config(tmp_path / "plain"), step_callback=lambda s, r: plain.update({s: r}))
    assert full[1]["ce_loss"] != plain[1]["ce_loss"]  # the first batch was mixed
