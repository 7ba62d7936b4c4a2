"""Repeated augmentation (data.repeated_augmentation): a training video decoded once, augmented N
times, N clips of the batch."""

import pytest
import torch
from test_train import assert_resumes_exactly
from torch.utils.data import DataLoader
from videos import frame_numbers, write_ssv2_tree

from timematters.config import ConfigError, load_config, validate
from timematters.data import build_dataset
from timematters.data.collate import BadVideo, collate_videos
from timematters.data.samplers import SeededSamples

CLASSES = ["Approaching something with your camera", "Folding something"]
SMALL = ["data.crop_size=32", "data.train_short_side=[36,48]", "data.eval_short_side=32"]


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root, annotations = write_ssv2_tree(tmp_path_factory.mktemp("ssv2"), CLASSES, per_class=3)
    return ["data.dataset=ssv2", f"data.root={root}", f"data.annotations={annotations}"]


def _config(ssv2, *extra):
    return load_config(None, [*ssv2, *SMALL, "model.num_frames=4", "data.num_workers=0", *extra])


def test_one_decode_gives_n_clips_of_the_same_frames_augmented_apart(ssv2):
    cfg = _config(ssv2, "data.repeated_augmentation=3", "data.randaugment_ops=0")
    dataset = SeededSamples(build_dataset(cfg, "train", flow_labels=True, patch_size=16), seed=0)
    item = dataset[0]
    assert item["video"].shape == (3, 3, 4, 32, 32) and item["repeats"] == 3
    assert item["flow_labels"].shape == (3, 3, 4)  # per clip: 3 frame pairs x 2 x 2 patches
    # The numbered frames are flat: every clip shows the same 4 frames (one temporal draw) ...
    numbers = [
        frame_numbers((clip.mean(dim=(0, 2, 3)) * 0.5 + 0.5)[:, None] * 255)
        for clip in item["video"]
    ]
    assert numbers[0] == numbers[1] == numbers[2]
    # ... while the spatial draws differ (the written videos carry a texture that crops reveal).
    assert not torch.equal(item["video"][0], item["video"][1])
    # Drawn from the sample's seed: the same clips again, as after a resume.
    assert torch.equal(dataset[0]["video"], item["video"])
    # Test items are untouched.
    assert "repeats" not in build_dataset(cfg, "val", flow_labels=False, patch_size=16)[0]


def test_the_batch_holds_each_videos_clips_side_by_side(ssv2):
    cfg = _config(ssv2, "data.repeated_augmentation=2")
    dataset = SeededSamples(build_dataset(cfg, "train", flow_labels=True, patch_size=16), seed=0)
    items = [dataset[i] for i in range(3)] + [BadVideo("broken.webm", "cannot decode", 9, 1)]
    batch = collate_videos(items)
    assert batch["video"].shape == (6, 3, 4, 32, 32) and batch["flow_labels"].shape == (6, 3, 4)
    labels = [item["label"] for item in items[:3]]
    assert batch["label"].tolist() == [label for label in labels for _ in range(2)]
    assert batch["index"].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch["video_id"] == [items[i]["video_id"] for i in (0, 0, 1, 1, 2, 2)]
    assert torch.equal(batch["video"][2], items[1]["video"][0])
    assert [bad.path for bad in batch["dropped"]] == ["broken.webm"]  # a bad video drops its N
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_videos)
    assert next(iter(loader))["video"].shape[0] == 4


def test_a_run_with_repeated_clips_trains_and_resumes_exactly(ssv2, tmp_path):
    extra = [*ssv2, *SMALL, "data.repeated_augmentation=2", "train.save_every_steps=1"]
    extra += ["data.test_spatial_crops=1", "train.batch_size=2"]
    full, _ = assert_resumes_exactly(tmp_path, *extra, kill_at=4)
    # 6 training videos, 2 a step: 3 steps an epoch, each of 4 clips.
    assert sorted(full) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("preset", ["synthetic/time", "imagenet9/time"])
def test_generated_or_image_data_refuse_it_with_the_key(preset):
    cfg = load_config(preset, ["data.root=/somewhere", "data.repeated_augmentation=2"])
    with pytest.raises(ConfigError, match="data.repeated_augmentation applies to decoded videos"):
        validate(cfg)


def test_zero_repeats_are_refused():
    with pytest.raises(ConfigError, match="data.repeated_augmentation must be at least 1"):
        validate(load_config("synthetic/time", ["data.repeated_augmentation=0"]))
