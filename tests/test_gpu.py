"""The CUDA path: mixed-precision training and evaluation on a GPU (skipped without one)."""

import math

import pytest
import torch
from test_train import tiny_config

from timematters.engine.train import autocast_dtype, train

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
