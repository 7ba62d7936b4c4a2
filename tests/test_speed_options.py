"""The speed options change cost, never results: activation checkpointing, torch.compile, fused
AdamW and the flow-label prefetcher give the losses and gradients of the plain training step."""

import json

import pytest
import torch
from test_backbones import BACKBONES, build, random_video
from test_train import tiny_config

from timematters.config import ConfigError, OptimConfig, load_config
from timematters.engine.model import build_model
from timematters.engine.optim import build_optimizer
from timematters.engine.prefetch import FlowLabelPrefetcher
from timematters.engine.train import train
from timematters.flow.labeller import FlowLabeller


def _loss_and_grads(model, video, *, seed):
    torch.manual_seed(seed)  # the same dropout / drop-path masks in both runs
    tokens = model.forward_features(video, return_blocks=True)
    loss = model.forward_head(tokens.cls).logsumexp(-1).mean() + tokens.blocks[0].square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("name", BACKBONES)
def test_checkpointed_blocks_give_the_same_loss_and_gradients(name):
    model = build(name).train()
    for module in model.modules():  # drop path on: the recomputation must replay its masks
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.3
    video = random_video(name)
    loss, grads = _loss_and_grads(model, video, seed=3)
    model.set_grad_checkpointing(True)
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, video, seed=3)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    assert checkpointed_grads.keys() == grads.keys() and len(grads) > 10
    for key, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[key], grad, rtol=1e-5, atol=1e-6, msg=key)


def _train_records(out, *extra):
    cfg = tiny_config(out, "train.max_steps=3", "model.drop_path_rate=0.2", *extra)
    train(cfg)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"kind": "train"' in line]


@pytest.mark.parametrize(
    "option",
    [
        ["model.grad_checkpointing=true"],
        # aot_eager traces forward and backward as compile does, without generating code (seconds
        # instead of a minute on the CPU); inductor is measured in benchmarks/train_step.py.
        ["train.compile=true", "train.compile_backend=aot_eager"],
    ],
    ids=["grad_checkpointing", "compile"],
)
def test_training_with_a_speed_option_logs_the_same_losses(tmp_path, option):
    plain = _train_records(tmp_path / "plain")
    faster = _train_records(tmp_path / "faster", *option)
    assert len(plain) == len(faster) == 3
    for a, b in zip(plain, faster, strict=True):
        for key in ("loss", "ce_loss", "order_loss", "debias_loss", "flow_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_grad_checkpointing_of_a_model_that_cannot_is_a_config_error():
    cfg = load_config(
        None,
        [
            "model.name=torchvision:r3d_18",
            "model.grad_checkpointing=true",
            "data.dataset=synthetic",
            "data.crop_size=32",
        ],
    )
    with pytest.raises(ConfigError, match="model.grad_checkpointing"):
        build_model(cfg, num_classes=3)


def test_fused_adamw_takes_the_same_steps_as_the_default():
    params = {}
    for fused in (None, True):
        model = build("timesformer_tiny_patch8_64").train()
        optimizer = build_optimizer(model, OptimConfig(lr=1e-3, fused=fused))
        assert optimizer.defaults["fused"] == fused
        video = random_video("timesformer_tiny_patch8_64")
        for _ in range(3):
            model(video).logsumexp(-1).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        params[fused] = [p.detach().clone() for p in model.parameters()]
    # Adam divides by sqrt(v): rounding in a tiny gradient moves its parameter by ~1e-6; a wrong
    # update rule would move it by ~lr (1e-3).
    for default, fused in zip(params[None], params[True], strict=True):
        torch.testing.assert_close(fused, default, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("background", [False, True])
def test_prefetched_flow_labels_are_the_labels_of_each_batch(background):
    labeller = FlowLabeller(patch_size=8)
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"video": torch.rand(2, 3, 4, 32, 32, generator=generator) * 2 - 1, "label": [i, i]}
        for i in range(4)
    ]
    batches.insert(2, {"dropped": []})  # a batch whose videos were all bad passes unlabelled
    out = list(FlowLabelPrefetcher(batches, labeller, torch.device("cpu"), background=background))
    assert len(out) == len(batches) and "flow_labels" not in out[2]
    for given, got in zip(batches, out, strict=True):
        if "video" in given:
            assert got["label"] == given["label"]
            torch.testing.assert_close(got["flow_labels"], labeller.batch(given["video"]))


def test_a_prefetcher_left_early_stops_and_reraises_the_loaders_errors():
    def failing():
        yield {"video": torch.zeros(1, 3, 2, 8, 8), "label": [0]}
        raise RuntimeError("decoder broke")

    labeller = FlowLabeller(patch_size=8)
    prefetched = iter(
        FlowLabelPrefetcher(failing(), labeller, torch.device("cpu"), background=True)
    )
    assert "flow_labels" in next(prefetched)
    with pytest.raises(RuntimeError, match="decoder broke"):
        next(prefetched)
