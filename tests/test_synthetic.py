"""The synthetic temporal benchmark: determinism, balance, time-reversed pairs, the scene cue, flow."""

import numpy as np
import pytest
import torch
from einops import rearrange

from timematters.config import Config, apply_overrides
from timematters.data.build import build_dataset
from timematters.data.synthetic import (
    BACKGROUNDS,
    CLASSES,
    PAIRS,
    STATIC,
    TEMPORAL,
    SyntheticVideoDataset,
    object_sprite,
    render_clip,
)
from timematters.flow import FlowLabeller, clip_flow_labels

K = len(CLASSES)


def test_same_seed_gives_the_same_clips_and_another_seed_other_clips():
    first = SyntheticVideoDataset("train", 20, img_size=32, seed=3)
    again = SyntheticVideoDataset("train", 20, img_size=32, seed=3)
    other = SyntheticVideoDataset("train", 20, img_size=32, seed=4)
    test = SyntheticVideoDataset("test", 20, img_size=32, seed=3)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.backgrounds, again.backgrounds)
    for i in (0, 7, 19):
        assert torch.equal(first[i]["video"], again[i]["video"])
        assert not torch.equal(first[i]["video"], other[i]["video"])
        assert not torch.equal(first[i]["video"], test[i]["video"])


def test_items_follow_the_batch_contract():
    dataset = SyntheticVideoDataset("test", 10, img_size=32, num_frames=4)
    item = dataset[3]
    video = item["video"]
    assert video.shape == (3, 4, 32, 32) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.1
    expected = rearrange(
        torch.from_numpy(dataset.clip(3)).float() / 127.5 - 1, "t h w c -> c t h w"
    )
    torch.testing.assert_close(video, expected)
    assert item["label"] == dataset.labels[3] and item["index"] == 3
    assert isinstance(item["video_id"], str) and "flow_labels" not in item
    assert dataset.classes == list(CLASSES)
    assert sorted(dataset.subsets["temporal"] + dataset.subsets["static"]) == list(range(K))
    with pytest.raises(ValueError, match="split"):
        SyntheticVideoDataset("holdout", 10)


@pytest.mark.parametrize("num_clips", [100, 103])
def test_classes_are_balanced(num_clips):
    for split in ("train", "test"):
        counts = np.bincount(SyntheticVideoDataset(split, num_clips).labels, minlength=K)
        assert counts.sum() == num_clips and counts.max() - counts.min() <= 1


@pytest.mark.parametrize(("img_size", "num_frames"), [(64, 8), (48, 5)])
def test_every_temporal_pair_is_a_time_reversal(img_size, num_frames):
    assert set(PAIRS) == set(TEMPORAL) and not set(PAIRS) & set(STATIC)
    for a in TEMPORAL:
        b = PAIRS[a]
        assert PAIRS[b] == a and a != b
        for seed in range(3):
            clip = render_clip(a, seed % K, seed, img_size=img_size, num_frames=num_frames)
            partner = render_clip(b, seed % K, seed, img_size=img_size, num_frames=num_frames)
            assert clip.shape == (num_frames, img_size, img_size, 3) and clip.dtype == np.uint8
            # The reversed clip is exactly a clip of the partner class, so both have the same
            # frames; only their order differs (the clip is not a palindrome).
            np.testing.assert_array_equal(clip[::-1], partner)
            assert not np.array_equal(clip, partner)


def _border_colour(clip: np.ndarray) -> np.ndarray:
    """Mean and spread of the first frame's outer pixels, which show mostly background."""
    frame = clip[0].astype(np.float32)
    sides = (frame[:4], frame[-4:], frame[4:-4, :4], frame[4:-4, -4:])
    border = np.concatenate([side.reshape(-1, 3) for side in sides])
    return np.concatenate([border.mean(0), border.std(0)])


def test_the_scene_cue_rate_of_each_split():
    rate, num_clips = 0.73, 500
    train = SyntheticVideoDataset("train", num_clips, img_size=32, spurious_rate=rate, seed=1)
    matched = train.backgrounds == train.labels
    assert all(train.background_of(i) == train.backgrounds[i] for i in range(num_clips))
    assert abs(matched.mean() - rate) <= 0.5 / num_clips
    for c in range(K):  # the other clips of a class spread evenly over the other backgrounds
        others = np.bincount(train.backgrounds[(train.labels == c) & ~matched], minlength=K)
        assert others[c] == 0 and np.ptp(np.delete(others, c)) <= 1
    for split in ("val", "test"):
        held_out = SyntheticVideoDataset(split, num_clips, img_size=32, spurious_rate=rate, seed=1)
        table = np.zeros((K, K), int)
        np.add.at(table, (held_out.labels, held_out.backgrounds), 1)
        assert table.max() - table.min() <= 1  # class and background are independent
        assert abs((held_out.backgrounds == held_out.labels).mean() - 1 / K) <= 0.02


def test_the_rendered_background_carries_the_cue():
    # A nearest-centroid reader of the border colour, fitted on separate renders, recovers the
    # background, and hence the class at the spurious rate in train and at chance in test.
    assert len(BACKGROUNDS) == K  # one background per class
    colours = np.stack(
        [[_border_colour(render_clip(s, b, (99, s))) for s in range(K)] for b in range(K)]
    )
    centroids = colours.mean(1)

    def read_background(clip):
        return np.argmin(((centroids - _border_colour(clip)) ** 2).sum(1))

    for split, expected in (("train", 0.9), ("test", 1 / K)):
        dataset = SyntheticVideoDataset(split, 200, spurious_rate=0.9, seed=2)
        read = np.array([read_background(dataset.clip(i)) for i in range(len(dataset))])
        assert (read == dataset.backgrounds).mean() >= 0.95
        assert abs((read == dataset.labels).mean() - expected) <= 0.06


def test_flow_labels_have_the_token_shape():
    dataset = SyntheticVideoDataset(
        "train", 10, img_size=32, num_frames=4, flow_labels=FlowLabeller(patch_size=8)
    )
    labels = dataset[0]["flow_labels"]
    assert labels.shape == (3, (32 // 8) ** 2) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() <= 8


def test_motion_gives_flow_labels_and_the_still_background_does_not():
    dataset = SyntheticVideoDataset(
        "train", 60, flow_labels=FlowLabeller(patch_size=8, threshold="absolute"), seed=7
    )
    for c in TEMPORAL:
        labels = torch.stack(
            [dataset[int(i)]["flow_labels"] for i in np.flatnonzero(dataset.labels == c)[:3]]
        )
        assert (labels > 0).float().mean() > 0.03, CLASSES[c]
        assert (labels == 0).float().mean() > 0.5, CLASSES[c]  # the objects cover a small area
    still = np.repeat(render_clip(0, 0, 7)[:1], 8, axis=0)
    assert (clip_flow_labels(still, 8, threshold="absolute") == 0).all()


def test_a_reversed_partner_moves_the_opposite_way():
    for a in (0, 2, 4):
        labels = clip_flow_labels(render_clip(a, 3, 11), 8, threshold="absolute")
        reversed_labels = clip_flow_labels(render_clip(PAIRS[a], 3, 11), 8, threshold="absolute")
        # Pair j of the partner is pair T-2-j of the clip played backwards.
        forward, backward = labels.flip(0), reversed_labels
        both = (forward > 0) & (backward > 0)
        assert both.sum() >= 5, CLASSES[a]
        turn = (forward - backward) % 8  # opposite directions differ by 4 bins, ±1 for bin edges
        assert ((turn >= 3) & (turn <= 5))[both].float().mean() > 0.9, CLASSES[a]


def test_build_from_config_uses_the_synthetic_and_flow_sections():
    cfg = apply_overrides(
        Config(),
        [
            "data.synthetic.num_train=30",
            "data.synthetic.num_test=20",
            "data.crop_size=32",
            "model.num_frames=4",
            "data.synthetic.spurious_rate=0.5",
            "flow.threshold=absolute",
            "data.dataset=synthetic",
            "flow.farneback.winsize=9",
        ],
    )
    train = build_dataset(cfg, "train", flow_labels=True, patch_size=8)
    test = build_dataset(cfg, "test", flow_labels=False, patch_size=8)
    assert len(train) == 30 and len(test) == 20
    assert len(build_dataset(cfg, "val", flow_labels=False, patch_size=8)) == 20
    assert train.flow_labels.farneback.winsize == 9 and train.flow_labels.threshold == "absolute"
    assert (train.backgrounds == train.labels).sum() == 15
    item = train[0]
    assert item["video"].shape == (3, 4, 32, 32) and item["flow_labels"].shape == (3, 16)
    assert not torch.equal(train[0]["video"], test[0]["video"])


def test_object_contrast_sets_the_depth_of_the_object_texture():
    # Same draws at every contrast: only the colours inside the object change, by a spread that
    # grows with the contrast (none when flat); the background is untouched.
    spreads = []
    for contrast in (0.0, 0.3, 1.0):
        sprite = object_sprite("square", 12.0, np.random.default_rng(4), contrast)
        inside = sprite[..., 3] == 1
        spreads.append(sprite[inside][:, :3].std(axis=0).max())
    assert spreads[0] < 1e-5 and 0.01 < spreads[1] < 0.5 * spreads[2]
    flat, textured = (render_clip(6, 0, 5, object_contrast=c) for c in (0.0, 1.0))
    assert (flat == textured).all(axis=-1).mean() > 0.7
    with pytest.raises(ValueError, match="object_contrast"):
        render_clip(6, 0, 5, object_contrast=1.5)


def test_flat_objects_still_give_flow_labels_at_their_edges():
    for c in TEMPORAL:
        textured = clip_flow_labels(
            render_clip(c, 2, 13, object_contrast=1.0), 8, threshold="absolute"
        )
        flat = clip_flow_labels(render_clip(c, 2, 13, object_contrast=0.0), 8, threshold="absolute")
        assert (flat > 0).sum() >= 0.6 * (textured > 0).sum() > 0, CLASSES[c]


def test_cached_clips_and_flow_labels_equal_the_ones_made_each_epoch():
    # The clips are a pure function of (seed, split, index): made once, they are what every
    # epoch would make again; the labels too (the generator itself is untouched).
    labeller = FlowLabeller(patch_size=8)
    kept = SyntheticVideoDataset("train", 12, img_size=32, flow_labels=labeller, cache=True)
    fresh = SyntheticVideoDataset("train", 12, img_size=32, flow_labels=labeller)
    for epoch in range(2):
        for i in range(len(kept)):
            a, b = kept[i], fresh[i]
            assert torch.equal(a["video"], b["video"]) and torch.equal(
                a["flow_labels"], b["flow_labels"]
            )
            assert torch.equal(b["flow_labels"], clip_flow_labels(fresh.clip(i), 8)), (epoch, i)
    assert len(kept.cache) == 12 and fresh.cache is None
    kept[0]["flow_labels"].fill_(-1)  # a caller's change does not reach the kept labels
    assert kept[0]["flow_labels"].min() >= 0
