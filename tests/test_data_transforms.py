"""Clip transforms: the same augmentation on every frame, crops, flips, normalisation."""

import random

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from timematters.data.transforms import (
    EvalTransform,
    TrainTransform,
    frames_to_video,
    make_randaugment,
    normalise,
)


def _textured_clip(num_frames=6, height=48, width=64, seed=0):
    """One random frame repeated: a consistent augmentation keeps the frames identical."""
    frame = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.repeat(frame[None], num_frames, axis=0)


def _ramp_clip(num_frames=4, height=48, width=64):
    """Brightness grows left to right."""
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    return np.broadcast_to(ramp[None, None, :, None], (num_frames, height, width, 3)).copy()


def _seed_all(seed):
    """The seeding the training loader does per clip (timm draws from random and NumPy)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize(("backend", "least"), [("timm", 20), ("torchvision", 30)])
def test_randaugment_applies_the_same_ops_to_every_frame(backend, least):
    clip = frames_to_video(_textured_clip())
    augment = make_randaugment(2, 10, backend=backend)
    changed = 0
    for seed in range(40):
        _seed_all(seed)
        out = augment(clip)
        assert type(out) is type(clip) and out.shape == clip.shape and out.dtype == torch.uint8
        assert torch.equal(out, out[:1].expand_as(out)), f"frames differ for seed {seed}"
        changed += not torch.equal(out, clip)
    # timm applies each op with chance 0.5 (a quarter of the clips keep both away), torchvision
    # always applies both (Identity aside).
    assert changed > least


def test_timm_randaugment_is_timms_on_every_frame():
    """Frame by frame, the clip's augmentation is timm's own on that frame with the clip's draws."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    frames = [
        np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(3)
    ]
    clip = frames_to_video(np.stack(frames))
    ours = make_randaugment(2, 9, magnitude_std=0.5)
    hparams = {"translate_const": int(48 * 0.45), "img_mean": (128,) * 3}
    timms = rand_augment_transform(
        "rand-m9-n2-mstd0.5-inc1", {**hparams, "interpolation": Image.BICUBIC}
    )
    compared = 0
    for seed in range(30):
        _seed_all(seed)
        out = ours(clip)
        for frame, image in zip(out, frames, strict=True):
            _seed_all(seed)
            try:
                expected = np.asarray(timms(Image.fromarray(image)))
            except ValueError:  # Pillow 13 refuses timm's 0-bit Posterize (black, as released)
                assert not frame.any()
                continue
            assert np.array_equal(frame.permute(1, 2, 0).numpy(), expected), f"seed {seed}"
            compared += 1
    assert compared >= 60


def test_timm_randaugment_at_magnitude_10_blackens_some_clips_as_released():
    # Posterize "increasing" at magnitude 10 keeps no bits: about 1 clip in 15 comes out black.
    clip = frames_to_video(_textured_clip(num_frames=2) | 1)  # no black pixel to begin with
    augment = make_randaugment(2, 10)
    black = 0
    for seed in range(300):
        _seed_all(seed)
        black += not augment(clip).any()
    assert 5 <= black <= 40


def test_randaugment_grey_fill():
    clip = frames_to_video(np.full((2, 48, 64, 3), 7, np.uint8))
    for backend in ("timm", "torchvision"):
        augment = make_randaugment(1, 10, backend=backend)
        fills = set()
        for seed in range(60):
            _seed_all(seed)
            fills.update(torch.unique(augment(clip)).tolist())
        assert 128 in fills, backend  # rotations/shears/translations expose grey


def test_randaugment_options_checked():
    with pytest.raises(ValueError, match="magnitude must be in"):
        make_randaugment(2, 20)
    with pytest.raises(ValueError, match="no magnitude noise"):
        make_randaugment(2, 9, backend="torchvision", magnitude_std=0.5)


def test_train_transform_consistent_across_frames():
    transform = TrainTransform(crop_size=32, short_side=(36, 44), hflip=True)
    clip = _textured_clip()
    for seed in range(20):
        _seed_all(seed)
        out = transform(clip)
        assert out.shape == (3, 6, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out, out[:, :1].expand_as(out))


def test_train_transform_jitters_scale_and_position():
    transform = TrainTransform(crop_size=32, short_side=(36, 60), randaugment_ops=0)
    outs = set()
    for seed in range(10):
        _seed_all(seed)
        outs.add(transform(_textured_clip()).sum().item())
    assert len(outs) > 5


@pytest.mark.parametrize("hflip", [False, True])
def test_flip_only_when_allowed(hflip):
    transform = TrainTransform(crop_size=32, short_side=(48, 48), randaugment_ops=0, hflip=hflip)
    flipped = 0
    for seed in range(30):
        _seed_all(seed)
        row = transform(_ramp_clip())[0, 0, 16]
        flipped += bool(row[0] > row[-1])
    assert (flipped > 0) == hflip


def test_normalise_mean_std_and_layout():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    frames[..., 0] = 255
    out = normalise(frames_to_video(frames), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (3, 2, 4, 4)
    assert torch.all(out[0] == 1.0) and torch.all(out[1:] == -1.0)


def test_eval_three_crops_left_centre_right():
    transform = EvalTransform(crop_size=32, short_side=32, num_crops=3)
    out = transform(_ramp_clip(height=48, width=96))  # resized to 32 x 64
    assert out.shape == (3, 3, 4, 32, 32)
    means = out.mean(dim=(1, 2, 3, 4))
    assert means[0] < means[1] < means[2]
    assert transform.crop_origins(32, 64) == [(0, 0), (0, 16), (0, 32)]
    assert transform.crop_origins(64, 32) == [(0, 0), (16, 0), (32, 0)]  # portrait: top to bottom


def test_eval_single_crop_is_centred():
    transform = EvalTransform(crop_size=32, short_side=40, num_crops=1)
    assert transform.crop_origins(40, 60) == [(4, 14)]
    assert transform(_textured_clip()).shape == (1, 3, 6, 32, 32)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        TrainTransform(crop_size=224, short_side=(128, 160))
    with pytest.raises(ValueError):
        EvalTransform(crop_size=224, short_side=160)
    with pytest.raises(ValueError):
        frames_to_video(np.zeros((2, 4, 4, 3), np.float32))


def test_random_erasing_puts_one_noise_box_on_every_frame_alike():
    transform = TrainTransform(crop_size=32, short_side=(36, 44), random_erase=1.0)
    plain = TrainTransform(crop_size=32, short_side=(36, 44))
    clip = _textured_clip()
    for seed in range(10):
        _seed_all(seed)
        expected = plain(clip)
        _seed_all(seed)
        erased = transform(clip)  # the same draws, then the box
        assert torch.equal(erased, erased[:, :1].expand_as(erased))  # frames still identical
        box = (erased != expected).any(dim=(0, 1))  # [H, W]
        rows, cols = box.any(dim=1), box.any(dim=0)
        assert 0.02 * 32 * 32 <= box.sum() <= 0.34 * 32 * 32  # timm's area range, 2% to 1/3
        assert torch.equal(box, rows[:, None] & cols[None, :])  # one rectangle


def test_image_training_transform_erases_too():
    from timematters.data.imagenet9 import ImageTrainTransform

    image = torch.from_numpy(_textured_clip(1)[0]).permute(2, 0, 1)
    _seed_all(0)
    plain = ImageTrainTransform(crop_size=32, randaugment_ops=0)(image)
    _seed_all(0)
    erased = ImageTrainTransform(crop_size=32, randaugment_ops=0, random_erase=1.0)(image)
    assert erased.shape == plain.shape == (3, 1, 32, 32)
    assert 0 < (erased != plain).any(dim=0).sum() < 32 * 32


def test_image_training_transform_augments_the_crop_as_deit_does():
    """timm's DeiT recipe: a bicubic RandomResizedCrop, the flip, then RandAugment on the crop
    (its translations are a share of the crop, not of the whole photo); bicubic evaluation."""
    from timematters.data.imagenet9 import ImageEvalTransform, ImageTrainTransform

    steps = ImageTrainTransform(crop_size=32).augment.transforms
    assert [type(step).__name__ for step in steps[:2]] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
    ]
    assert steps[0].interpolation == v2.InterpolationMode.BICUBIC
    assert len(steps) == 3  # RandAugment last
    image = torch.from_numpy(_textured_clip(1)[0]).permute(2, 0, 1)
    bicubic = F.center_crop(
        F.resize(image, [40], interpolation=v2.InterpolationMode.BICUBIC, antialias=True), [32]
    )
    evaluated = ImageEvalTransform(crop_size=32, short_side=40, mean=(0,) * 3, std=(1,) * 3)(image)
    torch.testing.assert_close(evaluated[:, 0], bicubic.float() / 255)
