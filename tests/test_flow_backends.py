"""flow.backend=opencv (labels made in the loader) and =torch (made in the training step) agree."""

import torch
from test_train import tiny_config

from timematters.data.build import build_dataset, build_flow_labeller
from timematters.data.collate import collate_videos
from timematters.engine.train import train


def test_torch_backend_sees_the_labels_the_opencv_loader_makes(tmp_path):
    cfg = tiny_config(
        tmp_path, "data.crop_size=64", "model.num_frames=8", "data.synthetic.num_train=24"
    )
    dataset = build_dataset(cfg, "train", flow_labels=True, patch_size=8)
    batch = collate_videos([dataset[i] for i in range(len(dataset))])
    on_device = build_flow_labeller(cfg, patch_size=8).batch(batch["video"])
    assert on_device.shape == batch["flow_labels"].shape == (24, 7, 64)
    agreement = (on_device == batch["flow_labels"]).float().mean().item()
    assert agreement >= 0.995, agreement
    assert (batch["flow_labels"] != 0).float().mean() > 0.05  # the labels are not trivially all 0


def test_training_with_the_torch_backend_runs(tmp_path):
    records = []
    train(
        tiny_config(tmp_path / "run", "flow.backend=torch"),
        step_callback=lambda s, r: records.append(r),
    )
    assert records and all(torch.isfinite(torch.tensor(r["flow_loss"])) for r in records)
