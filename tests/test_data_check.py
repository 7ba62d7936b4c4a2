"""``data check``: summary and exit codes on good and broken datasets."""

import json
from pathlib import Path

import pytest
from videos import numbered_frames, write_frame_folder, write_ssv2_tree, write_video

from timematters.config import Config, ConfigError, DataConfig, ModelConfig
from timematters.data.check import check_dataset
from timematters.data.subsets import STATIC_CLASSES, TEMPORAL_CLASSES


def _config(**data):
    defaults = dict(crop_size=32, train_short_side=(36, 40), eval_short_side=32, num_workers=0)
    return Config(model=ModelConfig(num_frames=4), data=DataConfig(**{**defaults, **data}))


@pytest.fixture
def list_tree(tmp_path):
    for name in ("a.mp4", "b.webm", "c.webm"):
        write_video(tmp_path / name, numbered_frames(10))
    (tmp_path / "train.txt").write_text("a.mp4 run\nb.webm walk\n")
    (tmp_path / "val.txt").write_text("c.webm walk\n")
    return tmp_path


def _list_config(tmp):
    return _config(
        dataset="videolist",
        annotations=str(tmp / "train.txt"),
        val_annotations=str(tmp / "val.txt"),
    )


def test_good_video_list_passes(list_tree, capsys):
    assert check_dataset(_list_config(list_tree)) == 0
    out = capsys.readouterr().out
    assert "train: 2 videos listed, 2 found, 0 missing, 0 of 2 checked undecodable" in out
    assert "no problems found" in out
    assert "walk" in out


def test_undecodable_and_missing_fail(list_tree, capsys):
    (list_tree / "b.webm").write_bytes(b"not a video at all")
    (list_tree / "val.txt").write_text("c.webm walk\nabsent.mp4 run\n")
    assert check_dataset(_list_config(list_tree)) == 1
    out = capsys.readouterr().out
    assert "1 video undecodable" in out and "b.webm" in out
    assert "1 video missing" in out and "absent.mp4" in out
    # Without decoding only the missing file is found.
    assert check_dataset(_list_config(list_tree), decode=False) == 1
    assert "videos undecodable" not in capsys.readouterr().out


def test_frame_folders_with_lost_frames_fail(tmp_path, capsys):
    # Every other frame extracted is a constant step, not a gap; a frame lost in extraction is.
    write_frame_folder(tmp_path / "strided", numbered_frames(8), name="img_{:05d}")
    for i, file in reversed(list(enumerate(sorted((tmp_path / "strided").iterdir())))):
        file.rename(file.with_name(f"img_{2 * i + 1:05d}.png"))
    write_frame_folder(tmp_path / "gap", numbered_frames(8))
    (tmp_path / "gap" / "img_00005.png").unlink()
    (tmp_path / "train.txt").write_text("strided run\ngap walk\n")
    (tmp_path / "val.txt").write_text("strided walk\n")
    cfg = _list_config(tmp_path)
    cfg.data.decoder = "frames"
    assert check_dataset(cfg) == 1
    out = capsys.readouterr().out
    assert "train: 1 frame folder with frames missing" in out
    assert "gap: frame numbering skips from img_00004.png to img_00006.png" in out
    assert "strided:" not in out


def test_missing_annotations_named(tmp_path, capsys):
    cfg = _config(dataset="videolist", annotations=str(tmp_path / "nope.txt"))
    assert check_dataset(cfg) == 1
    assert str(tmp_path / "nope.txt") in capsys.readouterr().out


def test_class_without_training_videos_fails(list_tree, capsys):
    (list_tree / "classes.txt").write_text("run\nwalk\nswim\n")
    cfg = _list_config(list_tree)
    cfg.data.class_list = str(list_tree / "classes.txt")
    assert check_dataset(cfg) == 1
    assert "1 class has no videos" in capsys.readouterr().out


def test_ssv2_subset_names_checked(tmp_path, capsys):
    classes = ["Approaching something with your camera", *TEMPORAL_CLASSES, *STATIC_CLASSES]
    root, annotations = write_ssv2_tree(tmp_path / "full", classes, per_class=1, num_frames=6)
    cfg = _config(dataset="ssv2", root=str(root), annotations=str(annotations))
    assert check_dataset(cfg, decode=False) == 0
    assert "temporal 6, static 17" in capsys.readouterr().out

    root, annotations = write_ssv2_tree(tmp_path / "part", classes[:5], per_class=1, num_frames=6)
    cfg = _config(dataset="ssv2", root=str(root), annotations=str(annotations))
    assert check_dataset(cfg, decode=False) == 1
    out = capsys.readouterr().out
    assert "temporal subset names not in labels.json" in out
    assert "Moving something and something so they collide with each other" in out


def test_synthetic_has_nothing_to_check(capsys):
    assert check_dataset(_config(dataset="synthetic")) == 0


def test_the_evaluation_split_is_checked(tmp_path, capsys):
    # eval.split=test was never loaded: "no problems found", then `train` exited 2.
    write_video(tmp_path / "k400" / "a_000000_000010.mp4", numbered_frames(8))
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    for name in ("train.csv", "validate.csv"):
        (annotations / name).write_text("label,youtube_id,time_start,time_end\nrun,a,0,10\n")
    cfg = _config(dataset="kinetics", root=str(tmp_path / "k400"), annotations=str(annotations))
    assert check_dataset(cfg, decode=False) == 0
    cfg.eval.split = "test"
    assert check_dataset(cfg, decode=False) == 1
    assert "test: no test CSV" in capsys.readouterr().out


def test_a_frame_folder_with_an_empty_frame_file_fails(tmp_path, capsys):
    # The probe decodes one clip's frames: an empty file elsewhere passed, then train dropped it.
    write_frame_folder(tmp_path / "good", numbered_frames(12))
    folder = write_frame_folder(tmp_path / "clip", numbered_frames(12))
    (folder / "img_00001.png").write_bytes(b"")  # no test clip reads the first of 12 frames
    (tmp_path / "train.txt").write_text("good run\n")
    (tmp_path / "val.txt").write_text("clip run\n")
    cfg = _list_config(tmp_path)
    cfg.data.decoder = "frames"
    assert check_dataset(cfg) == 1
    out = capsys.readouterr().out
    assert "val: 1 video undecodable" in out
    assert "clip: 1 empty (0-byte) frame files, first img_00001.png" in out


def test_every_frame_is_decoded_so_the_answer_is_the_same_each_time(tmp_path, capsys):
    """A video whose last frames are corrupt, and a frame folder with one frame of another size,
    are found every time: the check decodes every frame, not a random clip."""
    import av
    import numpy as np

    video = write_video(tmp_path / "tail.mp4", numbered_frames(32), options={"g": "8", "bf": "0"})
    with av.open(str(video)) as container:
        positions = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(video.read_bytes())
    for position, size in positions[-8:]:  # the last GOP: noise where its frames were
        data[position : position + size] = np.random.default_rng(0).bytes(size)
    video.write_bytes(bytes(data))
    folder = write_frame_folder(tmp_path / "sizes", numbered_frames(16))
    write_frame_folder(tmp_path / "odd", numbered_frames(1, 40, 40))
    (tmp_path / "odd" / "img_00001.png").replace(folder / "img_00009.png")
    write_video(tmp_path / "good.mp4", numbered_frames(32))
    (tmp_path / "train.txt").write_text("tail.mp4 run\nsizes walk\ngood.mp4 walk\n")
    (tmp_path / "val.txt").write_text("good.mp4 walk\n")
    for _ in range(3):
        assert check_dataset(_list_config(tmp_path)) == 1
        out = capsys.readouterr().out
        assert "2 of 3 checked undecodable" in out
        assert "tail.mp4" in out and "frames of different sizes (40x40, 48x64)" in out
    # Every one of them in a file (the summary shows a few of each kind).
    assert check_dataset(_list_config(tmp_path), list_to=tmp_path / "problems.jsonl") == 1
    listed = [json.loads(line) for line in (tmp_path / "problems.jsonl").read_text().splitlines()]
    assert [(v["split"], Path(v["path"]).name, v["problem"]) for v in listed] == [
        ("train", "tail.mp4", "undecodable"),
        ("train", "sizes", "undecodable"),
    ]
    assert "every video with a problem: " in capsys.readouterr().out
    # It replaces its own list, and no other file: `--list train.txt` emptied the list it read.
    assert check_dataset(_list_config(tmp_path), list_to=tmp_path / "problems.jsonl") == 1
    for other in ("train.txt", "good.mp4"):
        before = (tmp_path / other).read_bytes()
        with pytest.raises(
            ConfigError, match=rf"--list .*{other} exists and is not a problem list"
        ):
            check_dataset(_list_config(tmp_path), list_to=tmp_path / other)
        assert (tmp_path / other).read_bytes() == before
