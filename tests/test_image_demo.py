"""The image miniature (a procedural Backgrounds Challenge) and `demo --image` end to end, tiny."""

import json
from pathlib import Path

import numpy as np
import pytest
from torchvision.io import decode_image

from timematters import image_demo
from timematters.data.imagenet9 import read_class_folders
from timematters.data.synthetic_images import (
    CLASSES,
    VARIATIONS,
    assign_backgrounds,
    background_class,
    write_backgrounds_tree,
)


def _read(path) -> np.ndarray:
    return decode_image(str(path)).permute(1, 2, 0).numpy().astype(int)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("miniature")
    return write_backgrounds_tree(root, num_train=10, num_test=10, img_size=32, seed=3)


def test_tree_has_the_in9_layout(tree):
    assert read_class_folders(tree / "original" / "train") == list(CLASSES)
    assert len(list((tree / "original" / "train").rglob("*.png"))) == 10
    for variation in VARIATIONS:
        folder = tree / variation / "val"
        assert read_class_folders(folder) == list(CLASSES)
        names = sorted(p.relative_to(folder) for p in folder.rglob("*.png"))
        assert len(names) == 10
        # The same test images (class and index) in every variation.
        assert names == sorted(
            p.relative_to(tree / "original" / "val")
            for p in (tree / "original" / "val").rglob("*.png")
        )


def test_variations_share_the_foreground_and_only_change_the_background(tree):
    # Compositing: image = background * (1 - alpha) + premultiplied object. Only-FG is the object
    # on black and Only-BG-T the Original's background, so Original - Only-FG must be Only-BG-T
    # scaled by one (1 - alpha) per pixel, whatever the object's colours.
    for path in (tree / "original" / "val").rglob("*.png"):
        relative = path.relative_to(tree / "original" / "val")
        original = _read(path)
        background = _read(tree / "only_bg_t" / "val" / relative)
        only_fg = _read(tree / "only_fg" / "val" / relative)
        residual = original - only_fg
        assert (residual >= -1).all() and (residual <= background + 1).all()
        bright = background.sum(-1) > 60
        keep = residual.sum(-1) / np.maximum(background.sum(-1), 1)  # 1 - alpha
        error = np.abs(residual - background * keep[..., None])[bright]
        assert error.max() <= 3
        covered = (keep < 0.5)[bright].mean()
        assert 0.03 < covered < 0.6, "an object covers part of the image"
        mixed = _read(tree / "mixed_same" / "val" / relative)
        assert (np.abs(mixed - original) <= 1).all(-1)[keep < 0.02].mean() > 0.95  # same object
        assert (mixed != original).any(-1)[keep > 0.98].mean() > 0.5  # another background


def test_tree_is_a_pure_function_of_its_seed(tree, tmp_path):
    again = write_backgrounds_tree(
        tmp_path / "again", num_train=10, num_test=10, img_size=32, seed=3
    )
    for relative in ("original/train", "mixed_rand/val"):
        for path in (tree / relative).rglob("*.png"):
            assert (
                path.read_bytes()
                == (again / relative / path.relative_to(tree / relative)).read_bytes()
            )


def test_training_backgrounds_follow_the_class_at_the_spurious_rate():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % len(CLASSES)
    backgrounds = assign_backgrounds(labels, 0.9, rng)
    own = backgrounds == labels
    for c in range(len(CLASSES)):
        assert own[labels == c].sum() == 36  # exactly 90% of each class's 40 images
        others = backgrounds[(labels == c) & ~own]
        assert sorted(np.bincount(others, minlength=len(CLASSES))) == [0, 1, 1, 1, 1]


def test_background_class_per_variation():
    rng = np.random.default_rng(0)
    assert background_class("original", 2, own=4, rng=rng) == 4
    assert background_class("only_bg_t", 2, own=4, rng=rng) == 4
    assert background_class("only_fg", 2, own=4, rng=rng) is None
    assert background_class("mixed_same", 2, own=4, rng=rng) == 2
    assert background_class("mixed_next", 4, own=4, rng=rng) == 0
    draws = [background_class("mixed_rand", 2, own=2, rng=rng) for _ in range(500)]
    assert set(draws) == set(range(len(CLASSES)))
    with pytest.raises(ValueError, match="unknown variation"):
        background_class("no_fg", 2, own=2, rng=rng)


def test_demo_runs_end_to_end_and_writes_the_table(tmp_path, monkeypatch, capsys):
    tiny = image_demo.Budget(num_train=64, num_test=10, epochs=1, img_size=32)
    monkeypatch.setattr(image_demo, "BUDGETS", {"full": tiny, "quick": tiny})
    result = image_demo.run_image_demo(tmp_path, quick=True, seeds=1)

    assert set(result["columns"]) == {"baseline", "+TIME"}
    for accuracy in result["columns"].values():
        assert set(accuracy) == {*VARIATIONS, "bg_gap"}
        assert accuracy["bg_gap"] == pytest.approx(accuracy["mixed_same"] - accuracy["mixed_rand"])
    for name in ("report.md", "metrics.json", "background_accuracy.png", "training_curves.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "metrics.json").read_text())["mean"] == result["columns"]
    records = (tmp_path / "seed0" / "plus_TIME" / "metrics.jsonl").read_text()
    assert '"order_loss"' in records and '"debias_loss"' in records
    assert '"order_loss"' not in (tmp_path / "seed0" / "baseline" / "metrics.jsonl").read_text()
    printed = capsys.readouterr().out
    assert "| Dataset | baseline | +TIME |" in printed and "BG-Gap" in printed


def test_the_quick_image_demo_has_a_folder_of_its_own(monkeypatch, tmp_path):
    # It took the full image demo's runs/demo_image, which then refused to start there.
    from timematters.cli import main

    folders = []
    monkeypatch.setattr(image_demo, "run_image_demo", lambda out, **kwargs: folders.append(out))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--image", "--quick"]) == 0 and main(["demo", "--image"]) == 0
    assert folders == [Path("runs/demo_image_quick"), Path("runs/demo_image")]
