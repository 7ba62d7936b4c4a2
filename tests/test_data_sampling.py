"""Frame sampling: segment (SSv2) and dense (Kinetics) indices, test views."""

import numpy as np
import pytest
import torch

from timematters.data.sampling import (
    sample_clip_indices,
    sample_dense_indices,
    sample_segment_indices,
)


def test_segment_test_takes_segment_centres():
    np.testing.assert_array_equal(
        sample_segment_indices(16, 8, train=False), [1, 3, 5, 7, 9, 11, 13, 15]
    )
    # 30 frames / 8 segments = 3.75 frames each; centres at 1.875 + 3.75 k.
    np.testing.assert_array_equal(
        sample_segment_indices(30, 8, train=False), [1, 5, 9, 13, 16, 20, 24, 28]
    )


def test_segment_train_draws_one_frame_per_segment():
    generator = torch.Generator().manual_seed(0)
    bounds = np.floor(np.arange(9) * 3.75).astype(int)  # segments partition the 30 frames
    seen = set()
    for _ in range(200):
        indices = sample_segment_indices(30, 8, train=True, generator=generator)
        assert np.all(bounds[:-1] <= indices) and np.all(indices < bounds[1:]), indices
        seen.update(indices.tolist())
    assert seen == set(range(30))  # every frame can be drawn


def test_segment_short_video_repeats_frames():
    indices = sample_segment_indices(5, 8, train=False)
    assert indices.min() >= 0 and indices.max() <= 4
    assert np.all(np.diff(indices) >= 0)
    train = sample_segment_indices(5, 8, train=True, generator=torch.Generator().manual_seed(0))
    assert train.max() <= 4 and np.all(np.diff(train) >= 0)


def test_dense_indices():
    np.testing.assert_array_equal(
        sample_dense_indices(100, 4, stride=8, train=False), [38, 46, 54, 62]
    )  # span 25, latest start 75, centre 38 (37.5 rounds to even)
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(300):
        indices = sample_dense_indices(40, 4, stride=5, train=True, generator=generator)
        np.testing.assert_array_equal(np.diff(indices), 5)
        starts.add(int(indices[0]))
    assert starts == set(range(40 - 16 + 1))


def test_dense_short_video_repeats_last_frame():
    np.testing.assert_array_equal(sample_dense_indices(10, 4, stride=4, train=True), [0, 4, 8, 9])


@pytest.mark.parametrize(
    "sampling, frames, views",
    [("segment", 48, 2), ("segment", 30, 3), ("dense", 120, 2), ("dense", 90, 4)],
)
def test_test_views_really_differ(sampling, frames, views):
    clips = sample_clip_indices(sampling, frames, 8, train=False, stride=4, num_views=views)
    assert len(clips) == views
    for a in range(views):
        for b in range(a + 1, views):
            assert not np.array_equal(clips[a], clips[b]), (a, b, clips)
    assert all(c.min() >= 0 and c.max() < frames for c in clips)


def test_segment_views_spread_within_segments():
    first, second = sample_clip_indices("segment", 48, 8, train=False, num_views=2)
    np.testing.assert_array_equal(first, np.arange(8) * 6 + 1)  # 1/4 of each 6-frame segment
    np.testing.assert_array_equal(second, np.arange(8) * 6 + 4)  # 3/4


def test_dense_views_cover_the_video():
    clips = sample_clip_indices("dense", 120, 8, train=False, stride=4, num_views=3)
    assert clips[0][0] == 0 and clips[-1][-1] == 119


def test_train_gives_one_clip():
    assert len(sample_clip_indices("segment", 30, 8, train=True, num_views=3)) == 1
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_clip_indices("uniform", 30, 8, train=True)
