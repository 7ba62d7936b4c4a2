"""Flow labels (Eq. 9-10) on frames with known motion, with OpenCV's Farnebäck as the flow."""

import math

import cv2
import numpy as np
import pytest
import torch

from timematters.flow import clip_flow_labels, clip_to_grey, flow_to_direction_labels

PATCH = 16


def photo_like(size: int, seed: int = 0) -> np.ndarray:
    """A textured, photo-like RGB image: noise at several scales plus a few hard-edged shapes."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.float32)
    for sigma, weight in ((12, 0.5), (4, 0.3), (1.5, 0.2)):
        image += weight * cv2.GaussianBlur(rng.random((size, size, 3), np.float32), (0, 0), sigma)
    image = (image - image.min()) / (image.max() - image.min())
    for _ in range(12):
        center = tuple(int(c) for c in rng.integers(0, size, 2))
        color = tuple(float(c) for c in rng.random(3))
        cv2.circle(image, center, int(rng.integers(4, 14)), color, -1)
    return (image * 255).astype(np.uint8)


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Content moved by (dx, dy) pixels (sub-pixel, bilinear), image axes: +x right, +y down."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("k", range(8))
def test_translation_in_each_direction_gives_its_class(k):
    # Angles in the middle of each 45° bin: bin edges lie on the axes and diagonals (Eq. 10), where
    # labels split between two neighbouring classes.
    angle = math.radians(22.5 + 45 * k)
    dx, dy = 3 * math.cos(angle), 3 * math.sin(angle)
    canvas = photo_like(160, seed=k)
    frames = np.stack([canvas, shifted(canvas, dx, dy)])[:, 16:144, 16:144]  # 128x128 crop
    for threshold in ("relative", "absolute"):
        labels = clip_flow_labels(frames, PATCH, threshold=threshold).view(8, 8)
        inner = labels[1:-1, 1:-1]  # tokens away from the image border
        assert (inner == k + 1).float().mean() >= 0.95, (threshold, labels)


def test_image_axes_y_points_down():
    # Class k covers angles [45(k-1), 45k) with +y down: a bit past straight down is 3, a bit past
    # straight up is 7, just below "right" is 1, just above "left" is 5. With y pointing up
    # (the mathematical convention) down and up would swap.
    canvas = photo_like(160, seed=11)
    for (dx, dy), expected in {
        (-0.5, 3.0): 3,
        (0.5, -3.0): 7,
        (3.0, 0.5): 1,
        (-3.0, -0.5): 5,
    }.items():
        frames = np.stack([canvas, shifted(canvas, dx, dy)])[:, 16:144, 16:144]
        assert torch.mode(clip_flow_labels(frames, PATCH).flatten()).values == expected, (dx, dy)


def test_a_vector_on_a_bin_edge_goes_to_the_bin_it_starts():
    """Each class covers [45(k-1)°, 45k°): a vector along an axis or diagonal is the class it
    starts, to the last bit (float atan2 sent (-3e-9, 3), a hair past straight down, to 2)."""
    edges = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    nudged = [(-3e-9, 3.0), (3.0, -1e-12), (-1.0, -1e-9)]
    vectors = torch.tensor(edges + nudged, dtype=torch.float32)
    flow = vectors[:, None, None, :].expand(-1, 1, 1, 2).reshape(1, -1, 1, 2)  # [1, 11, 1, 2]
    labels = flow_to_direction_labels(flow, 1, threshold="absolute", absolute_tau=0.0)[0]
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8] + [3, 8, 5]


def test_still_background_is_class_0_under_the_absolute_threshold():
    background = photo_like(128, seed=3)
    obj = photo_like(32, seed=4)
    frames = []
    for x in (40, 44):  # a textured 32x32 object moves 4 px right over a still background
        frame = background.copy()
        frame[48:80, x : x + 32] = obj
        frames.append(frame)
    labels = clip_flow_labels(np.stack(frames), PATCH, threshold="absolute", absolute_tau=0.5)
    labels = labels.view(8, 8)
    far = torch.ones(8, 8, dtype=torch.bool)
    far[1:7, 1:7] = False  # tokens at least one patch away from the object's path
    assert (labels[far] == 0).all(), labels
    assert (labels[3:5, 3:5] != 0).all(), labels


def test_relative_threshold_is_the_released_rule():
    # Flow constant inside each 4x4 patch: patch means are exact. Magnitudes 0.1 .. 10.1 px.
    rng = np.random.default_rng(0)
    magnitude = rng.uniform(0.1, 10.1, size=(2, 3, 3))
    magnitude[:, 0, 0] = 0.1  # r_min
    magnitude[:, 0, 1] = 10.1  # r_max
    magnitude[:, 1, 1] = (
        0.1 + 0.01 * 10.0 - 1e-4
    )  # just below the threshold r_min + 1% (r_max - r_min)
    magnitude[:, 1, 2] = 0.1 + 0.01 * 10.0 + 1e-4  # just above it
    angle = rng.uniform(0, 2 * math.pi, size=(2, 3, 3))
    patch_flow = np.stack([magnitude * np.cos(angle), magnitude * np.sin(angle)], -1)
    flow = patch_flow.repeat(4, axis=1).repeat(4, axis=2).astype(np.float32)  # [2, 12, 12, 2]
    labels = flow_to_direction_labels(flow, 4, threshold="relative").view(2, 3, 3)
    expected_class = torch.as_tensor(np.floor(angle / (math.pi / 4)).astype(np.int64) + 1)
    threshold = 0.1 + 0.01 * (10.1 - 0.1)
    moving = torch.as_tensor(magnitude >= threshold)
    assert torch.equal(
        labels, torch.where(moving, expected_class, torch.zeros_like(expected_class))
    )
    assert (labels[:, 1, 1] == 0).all() and (labels[:, 1, 2] != 0).all()
    # The absolute rule compares with tau pixels instead.
    absolute = flow_to_direction_labels(flow, 4, threshold="absolute", absolute_tau=5.0).view(
        2, 3, 3
    )
    assert torch.equal(absolute != 0, torch.as_tensor(magnitude >= 5.0))


def test_uint8_clip_and_normalised_tensor_give_the_same_grey_and_labels():
    canvas = photo_like(96, seed=5)
    frames = np.stack([canvas, shifted(canvas, 2, 1), shifted(canvas, 4, 2)])[:, 16:80, 16:80]
    tensor = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0  # [C, T, H, W] in [0, 1]
    normalised = (tensor - 0.5) / 0.5
    np.testing.assert_allclose(clip_to_grey(frames), clip_to_grey(normalised), atol=1e-3)
    grey = clip_to_grey(frames)
    assert grey.shape == (3, 64, 64) and grey.min() >= -128 and grey.max() <= 128
    other_norm = (tensor - 0.45) / 0.25
    np.testing.assert_allclose(
        clip_to_grey(other_norm, mean=(0.45,) * 3, std=(0.25,) * 3), grey, atol=1e-3
    )
    assert torch.equal(clip_flow_labels(frames, PATCH), clip_flow_labels(normalised, PATCH))
    assert clip_flow_labels(frames, PATCH).shape == (2, 16)
    # A bf16 clip (from an autocast loop) is labelled as its float values; one frame is refused.
    bf16 = normalised.bfloat16()
    assert torch.equal(clip_flow_labels(bf16, PATCH), clip_flow_labels(bf16.float(), PATCH))
    with pytest.raises(ValueError, match=r"two frames or more, got one: \[3, 1, 64, 64\]"):
        clip_flow_labels(normalised[:, :1], PATCH)


def test_frame_pairs_without_motion_are_still_in_both_backends():
    # Black leading frames (a fade-in) and a frozen flat frame: every patch of those pairs has
    # r = 0, so r_max == r_min and the relative rule would call every patch moving (class 1, angle
    # 0); the released min-max normalisation makes them all still. Real motion follows.
    from timematters.flow import batch_flow_labels

    canvas = photo_like(256, seed=5)
    moving = shifted(canvas, 2.0, 1.0)
    black, grey = np.zeros_like(canvas), np.full_like(canvas, 128)
    frames = np.stack([black, black, black, grey, grey, canvas, moving])[:, 16:240, 16:240]  # 224²
    opencv = clip_flow_labels(frames, PATCH)
    for pair in (0, 1, 2, 3):  # black-black twice, black-grey (no texture to track), grey-grey
        assert (opencv[pair] == 0).all(), pair
    assert (opencv[5] != 0).float().mean() > 0.5  # the moving pair still moves
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # mean = std = 0.5
    on_torch = batch_flow_labels(video[None], PATCH)[0]
    assert torch.equal(on_torch, opencv), (on_torch != opencv).float().mean()


def test_tubelets_are_labelled_between_their_first_frames():
    # 2-frame tubelets: the labels of frames 0, 2, 4, ... (one map per pair of token frames),
    # from either backend, the same as labelling those frames alone.
    from timematters.flow import FlowLabeller

    base = photo_like(64)
    clip = np.stack([shifted(base, 1.5 * t, 0) for t in range(8)])  # [T, H, W, 3] uint8
    video = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1  # [C, T, H, W]
    tubelets = FlowLabeller(patch_size=PATCH, frame_step=2)
    every_other = FlowLabeller(patch_size=PATCH)
    labels = tubelets(clip)
    assert labels.shape == (3, (64 // PATCH) ** 2)
    torch.testing.assert_close(labels, every_other(clip[::2]))
    torch.testing.assert_close(
        tubelets.batch(video[None])[0], every_other.batch(video[None, :, ::2])[0]
    )
    assert set(labels[labels > 0].tolist()) <= {1, 8}  # 3 px to the right between them


def test_a_labeller_built_in_python_is_checked_and_needs_two_frames():
    from timematters.flow import FlowLabeller

    with pytest.raises(ValueError, match="threshold must be 'relative' or 'absolute'"):
        FlowLabeller(16, threshold="relativ")
    with pytest.raises(ValueError, match="relative_fraction must be in"):
        FlowLabeller(16, relative_fraction=2.0)
    with pytest.raises(ValueError, match="flow needs two frames or more, got 1"):
        FlowLabeller(16).batch(torch.zeros(1, 3, 1, 32, 32))  # it gave an empty [1, 0, 4]
