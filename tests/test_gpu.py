"""The CUDA path: mixed-precision training and evaluation on a GPU (skipped without one)."""

import math

import pytest
import torch
from test_train import tiny_config

from timematters.engine.distributed import autocast_dtype
from timematters.engine.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_auto_precision_is_bf16_on_a_recent_gpu_and_off_on_cpu():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("flow_backend", ["opencv", "torch"])
def test_training_runs_on_cuda_with_mixed_precision(tmp_path, flow_backend):
    records = []
    cfg = tiny_config(
        tmp_path / "run",
        "train.device=cuda",
        "train.precision=auto",
        f"flow.backend={flow_backend}",
    )
    result = train(cfg, step_callback=lambda step, record: records.append(record))
    assert records and all(math.isfinite(r["loss"]) for r in records)
    assert all(math.isfinite(r["flow_loss"]) for r in records)
    assert result["metrics"]["all"]["num_clips"] == 8


@pytest.mark.parametrize("name", ["timesformer_tiny_patch8_64", "motionformer_tiny_patch8_64"])
def test_bf16_autocast_agrees_with_fp32(name):
    from timematters.backbones import create_backbone

    torch.manual_seed(0)
    model = create_backbone(name, num_classes=10, num_frames=4, img_size=32).cuda().eval()
    video = torch.randn(4, 3, 4, 32, 32, device="cuda")
    with torch.no_grad():
        reference = model(video).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(video).float()
    # bf16 keeps 8 bits of mantissa: logits of a random tiny model agree to about 1e-2.
    torch.testing.assert_close(low, reference, atol=5e-2, rtol=5e-2)
    assert (low.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75


def test_flow_labels_prefetched_on_a_side_stream_equal_the_in_step_ones():
    from timematters.engine.prefetch import FlowLabelPrefetcher
    from timematters.flow.labeller import FlowLabeller

    labeller = FlowLabeller(patch_size=8)
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"video": (torch.rand(2, 3, 4, 32, 32, generator=generator) * 2 - 1).pin_memory()}
        | {"label": torch.tensor([i, i])}
        for i in range(3)
    ]
    device = torch.device("cuda")
    prefetched = list(FlowLabelPrefetcher(batches, labeller, device))
    for given, got in zip(batches, prefetched, strict=True):
        assert got["video"].is_cuda and got["flow_labels"].is_cuda
        expected = labeller.batch(given["video"].to(device))
        assert torch.equal(got["flow_labels"], expected)


def test_flow_view_draws_the_cuda_labels_and_says_their_agreement_with_opencv(tmp_path):
    from timematters.config import load_config
    from timematters.diagnostics.flow_view import view_flow_labels

    small = ["data.synthetic.num_train=4", "data.num_workers=0"]
    cfg = load_config("synthetic/time", [*small, "flow.backend=torch", "train.device=cuda"])
    result = view_flow_labels(cfg, tmp_path / "flow", clips=2)
    assert result["settings"]["device"].startswith("cuda")
    assert all(clip["agreement_with_opencv"] >= 0.99 for clip in result["clips"])
