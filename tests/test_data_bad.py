"""Bad videos: returned as markers, dropped from batches, counted, logged, written, limited."""

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from videos import numbered_frames, write_video

from timematters.data.collate import BadVideo, BadVideoLog, TooManyBadVideos, collate_videos
from timematters.data.transforms import TrainTransform
from timematters.data.videolist import VideoListDataset


@pytest.fixture(scope="module")
def mixed_list(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    good = write_video(tmp / "good.webm", numbered_frames(20))
    write_video(tmp / "good2.mp4", numbered_frames(20))
    write_video(tmp / "short.webm", numbered_frames(3))
    data = good.read_bytes()
    (tmp / "truncated.webm").write_bytes(data[: len(data) // 2])
    (tmp / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    names = ["good.webm", "short.webm", "truncated.webm", "good2.mp4", "garbage.mp4"]
    (tmp / "list.txt").write_text("".join(f"{name} 0\n" for name in names))
    return tmp


def _dataset(tmp):
    transform = TrainTransform(crop_size=32, short_side=(36, 40), randaugment_ops=0)
    return VideoListDataset(tmp / "list.txt", transform=transform, train=True, num_frames=4)


def test_bad_videos_become_markers(mixed_list):
    dataset = _dataset(mixed_list)
    reasons = {
        i: dataset[i].reason for i in range(len(dataset)) if isinstance(dataset[i], BadVideo)
    }
    assert set(reasons) == {1, 2, 4}
    assert "too short: 3 frames" in reasons[1]
    assert "truncated" in reasons[2]
    assert "cannot read" in reasons[4]
    assert dataset[1].path.endswith("short.webm") and dataset[1].index == 1


def test_collate_drops_and_log_counts(mixed_list, tmp_path, caplog):
    loader = DataLoader(_dataset(mixed_list), batch_size=5, collate_fn=collate_videos)
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 4, 32, 32)
    assert batch["label"].tolist() == [0, 0] and batch["index"].tolist() == [0, 3]
    assert batch["video_id"] == ["good.webm", "good2.mp4"]
    assert [bad.path.rsplit("/", 1)[1] for bad in batch["dropped"]] == [
        "short.webm",
        "truncated.webm",
        "garbage.mp4",
    ]
    assert [bad.index for bad in batch["dropped"]] == [1, 2, 4]
    assert [bad.label for bad in batch["dropped"]] == [0, 0, 0]

    bad_log = BadVideoLog(tmp_path / "run" / "bad_videos.jsonl")
    with caplog.at_level(logging.WARNING):
        assert len(bad_log.update(batch)) == 3
    assert bad_log.bad == 3
    assert "truncated.webm" in caplog.text
    assert bad_log.update(batch) == [] and bad_log.bad == 3  # the next epoch's drops count once

    with pytest.raises(TooManyBadVideos) as info:
        bad_log.check(0.01, total=5)
    message = str(info.value)
    assert "3 of 5 videos (60.00%)" in message and "bad_videos.jsonl" in message
    lines = [
        json.loads(line)
        for line in (tmp_path / "run" / "bad_videos.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 3 and lines[0]["reason"].startswith("too short")

    bad_log.check(0.7, total=5)  # under the limit: no error
    bad_log.check(0.01, total=300)  # 3 of 300 is exactly 1%: not above it


def test_all_bad_batch_and_merged_log(tmp_path):
    a, b = BadVideo("a.mp4", "cannot read"), BadVideo("b.mp4", "truncated")
    batch = collate_videos([a, b])
    assert batch == {"dropped": [a, b]}
    bad_log = BadVideoLog()
    bad_log.update(batch)
    bad_log.merge([b, BadVideo("c.mp4", "no video stream")])  # what another rank found
    assert bad_log.bad == 3
    with pytest.raises(TooManyBadVideos, match="3 of 4"):
        bad_log.check(0.5, total=4)
    assert BadVideoLog().bad == 0


def test_good_batch_keeps_flow_labels():
    sample = {
        "video": torch.zeros(3, 4, 8, 8),
        "label": 1,
        "video_id": "x",
        "index": 0,
        "flow_labels": torch.zeros(3, 4, dtype=torch.int64),
    }
    batch = collate_videos([sample, BadVideo("b", "r"), sample])
    assert batch["flow_labels"].shape == (2, 3, 4) and batch["dropped"] == [BadVideo("b", "r")]
