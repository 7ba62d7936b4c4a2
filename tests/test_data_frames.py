"""Videos stored as folders of frame images (``data.decoder=frames``): the frame-extracted copies
of SSv2 and Kinetics, and video lists of frame folders, read as their video files are."""

import json

import numpy as np
import pytest
from videos import (
    frame_numbers,
    moving_square_frames,
    numbered_frames,
    write_frame_folder,
    write_ssv2_tree,
    write_video,
)

from timematters.cli import main
from timematters.config import load_config
from timematters.data import build_dataset
from timematters.data.video import VideoDecodeError, open_video

CLASSES = ["Approaching something with your camera", "Folding something"]
SMALL = ["data.crop_size=32", "data.train_short_side=[36,40]", "data.eval_short_side=32"]


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_the_frames_asked_for_come_in_natural_file_name_order(tmp_path, ext):
    # frame_1 ... frame_12: a plain sort would put frame_10 before frame_2.
    folder = write_frame_folder(tmp_path / "clip", numbered_frames(12), name="frame_{}", ext=ext)
    (folder / "notes.txt").write_text("not a frame")
    reader = open_video(folder, "frames")
    assert reader.num_frames == 12
    frames = reader.get_frames([3, 0, 10, 3, 11])
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert frame_numbers(frames) == [3, 0, 10, 3, 11]


def test_sixteen_bit_frames_come_as_eight_bit_ones(tmp_path):
    import cv2

    folder = tmp_path / "deep"
    folder.mkdir()
    for i, level in enumerate((0, 257 * 100, 65535)):  # 16-bit levels of 0, 100 and 255
        cv2.imwrite(str(folder / f"{i}.png"), np.full((4, 6, 3), level, np.uint16))
    frames = open_video(folder, "frames").get_frames([0, 1, 2])
    assert frames.dtype == np.uint8 and frames[:, 0, 0, 0].tolist() == [0, 100, 255]


def test_the_same_clips_as_from_the_video_file(tmp_path):
    frames = moving_square_frames(10)
    video = open_video(write_video(tmp_path / "clip.webm", frames), "pyav")
    folder = open_video(write_frame_folder(tmp_path / "clip", frames), "frames")
    assert folder.num_frames == video.num_frames == 10
    np.testing.assert_array_equal(folder.get_frames([0, 4, 9]), frames[[0, 4, 9]])  # PNG: exact


def test_a_bad_frame_folder_is_a_bad_video_that_names_the_problem(tmp_path):
    good = write_frame_folder(tmp_path / "good", numbered_frames(4))
    (good / "img_00003.png").write_bytes(b"not an image")
    with pytest.raises(VideoDecodeError, match="frame img_00003.png: Unsupported image") as error:
        open_video(good, "frames").get_frames([0, 2])
    assert ".cpp" not in error.value.reason  # torchvision's words, not its source lines
    assert open_video(good, "frames").get_frames([0, 1]).shape[0] == 2  # only what is asked

    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no frame images"):
        open_video(tmp_path / "empty", "frames")
    with pytest.raises(VideoDecodeError, match="not a folder of frame images"):
        open_video(tmp_path / "good" / "img_00001.png", "frames")
    mixed = write_frame_folder(tmp_path / "mixed", numbered_frames(2))
    small = write_frame_folder(tmp_path / "small", numbered_frames(1, height=32))
    (small / "img_00001.png").rename(mixed / "img_00003.png")
    with pytest.raises(VideoDecodeError, match="different sizes"):
        open_video(mixed, "frames").get_frames([0, 1, 2])


def test_ssv2_as_frame_folders(tmp_path, capsys):
    root, annotations = write_ssv2_tree(tmp_path, CLASSES, per_class=2, as_frames=True)
    (root / "1001").rename(root / "elsewhere")  # a training video whose frames are missing
    data = [
        "data.dataset=ssv2",
        f"data.root={root}",
        f"data.annotations={annotations}",
        "data.decoder=frames",
        "model.num_frames=4",
        "data.num_workers=0",
        *SMALL,
    ]
    cfg = load_config(None, data)
    train = build_dataset(cfg, "train", flow_labels=False, patch_size=16)
    assert len(train) == 3 and train.missing == [str(root / "1001")]
    test = build_dataset(cfg, "val", flow_labels=False, patch_size=16)
    item = test[0]
    assert item["video"].shape == (3, 3, 4, 32, 32)  # 3 crops of 4 frames
    # Segment sampling of 20 numbered frames (the middle of each of 4 segments at test time).
    means = item["video"][0].mean(dim=(0, 2, 3)) * 0.5 + 0.5
    assert frame_numbers(means.numpy()[:, None] * 255) == [2, 7, 12, 17]
    assert main(["data", "check", "synthetic/time", *data, "--limit", "8"]) == 1  # 1 missing
    printed = capsys.readouterr().out
    assert "train: 4 videos listed, 3 found, 1 missing, 0 of 3 checked undecodable" in printed
    assert "val: 4 videos listed, 4 found, 0 missing, 0 of 4 checked undecodable" in printed


def test_kinetics_and_video_lists_of_frame_folders(tmp_path):
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    lines, listed = [], []
    for i, label in enumerate(["abseiling", "air drumming"] * 2):
        stem = f"vid{i:08d}_{10 * i:06d}_{10 * i + 10:06d}"
        write_frame_folder(tmp_path / "k400" / label / stem, numbered_frames(8))
        lines.append(f"{label},vid{i:08d},{10 * i},{10 * i + 10},train,0\n")
        listed.append(f"k400/{label}/{stem},{label}\n")
    (tmp_path / "train.csv").write_text(header + "".join(lines))
    options = ["data.decoder=frames", "model.num_frames=4", *SMALL]
    kinetics = load_config(
        None,
        [
            "data.dataset=kinetics",
            f"data.root={tmp_path / 'k400'}",
            f"data.annotations={tmp_path / 'train.csv'}",
            *options,
        ],
    )
    dataset = build_dataset(kinetics, "train", flow_labels=False, patch_size=16)
    assert dataset.classes == ["abseiling", "air drumming"] and len(dataset) == 4
    assert dataset[0]["video"].shape == (3, 4, 32, 32)

    gone = "k400/abseiling/gone,abseiling\n"  # a CSV: the folder names hold spaces
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(listed) + gone)
    videolist = load_config(
        None,
        ["data.dataset=videolist", f"data.annotations={tmp_path / 'list.csv'}", *options],
    )
    dataset = build_dataset(videolist, "train", flow_labels=False, patch_size=16)
    assert len(dataset) == 4 and dataset.missing == [str(tmp_path / "k400/abseiling/gone")]


def test_predict_takes_frame_folders_as_videos(tmp_path, monkeypatch, capsys):
    from timematters.diagnostics.predict import list_videos

    clips = tmp_path / "clips"
    write_frame_folder(clips / "a", numbered_frames(8))
    write_frame_folder(clips / "b", numbered_frames(8), ext=".jpg")
    write_video(clips / "c.mp4", numbered_frames(8))
    assert list_videos([clips]) == [clips / "a", clips / "b", clips / "c.mp4"]
    assert list_videos([clips / "a"]) == [clips / "a"]  # a folder of frames is one video

    (tmp_path / "frame_pool.py").write_text(
        "from torch import nn\n"
        "def pool(num_classes=3):\n"
        "    return nn.Sequential(nn.Flatten(2), nn.Flatten(1), nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    options = ["--config", "videolist/time", "-o", "model.num_frames=4", "-o", "data.crop_size=32"]
    assert main(["predict", str(clips), "--model", "frame_pool:pool", *options]) == 0
    printed = capsys.readouterr().out
    assert all(f"{clips / name}\n" in printed for name in ("a", "b", "c.mp4"))


def test_only_a_folder_of_nothing_but_images_is_a_frame_folder(tmp_path):
    from timematters.data.video import is_frame_folder

    frames = write_frame_folder(tmp_path / "frames", numbered_frames(3))
    (frames / ".DS_Store").write_text("")  # hidden files and Windows' thumbnails aside
    (frames / "Thumbs.db").write_bytes(b"\0")
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4", numbered_frames(4))
    write_frame_folder(videos, numbered_frames(1), name="thumbnail")  # a video's thumbnail
    report = write_frame_folder(tmp_path / "report", numbered_frames(1), name="plot")
    (report / "report.json").write_text("{}")
    assert is_frame_folder(frames)
    assert not is_frame_folder(videos) and not is_frame_folder(report)
    assert not is_frame_folder(tmp_path / "missing") and not is_frame_folder(videos / "a.mp4")


def test_rgb_frames_beside_flow_images_or_hidden_files_are_the_frames(tmp_path):
    # MMAction2's rawframes: img_ frames beside flow_x_ / flow_y_ images, which were read as
    # frames of the video (70 of them for 24); macOS's ._ files were frames that failed.
    folder = write_frame_folder(tmp_path / "rawframes", numbered_frames(8), ext=".jpg")
    grey = np.full((7, 48, 64, 3), 128, np.uint8)
    write_frame_folder(folder, grey, name="flow_x_{:05d}", ext=".jpg")
    write_frame_folder(folder, grey, name="flow_y_{:05d}", ext=".jpg")
    (folder / "._img_00001.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    reader = open_video(folder, "frames")
    assert reader.num_frames == 8 and frame_numbers(reader.get_frames([0, 7, 3])) == [0, 7, 3]
    # Frames named two ways, neither the RGB ones by its name: refused, not mixed.
    mixed = write_frame_folder(tmp_path / "mixed", numbered_frames(2), name="a_{:05d}")
    write_frame_folder(mixed, numbered_frames(2), name="b_{:05d}")
    with pytest.raises(VideoDecodeError, match=r"frames named in 2 ways \(a_#.png, b_#.png"):
        open_video(mixed, "frames")


def test_frame_folders_read_as_video_files_name_the_fix(tmp_path):
    root, annotations = write_ssv2_tree(tmp_path / "ssv2", CLASSES, per_class=1, as_frames=True)
    ssv2 = ["data.dataset=ssv2", f"data.root={root}", f"data.annotations={annotations}"]
    kinetics_root = tmp_path / "k400"
    write_frame_folder(
        kinetics_root / "abseiling" / "vid00000000_000000_000010", numbered_frames(4)
    )
    csv = tmp_path / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,vid00000000,0,10,train\n")
    kinetics = ["data.dataset=kinetics", f"data.root={kinetics_root}", f"data.annotations={csv}"]
    (tmp_path / "list.txt").write_text("k400/abseiling/vid00000000_000000_000010 abseiling\n")
    videolist = ["data.dataset=videolist", f"data.annotations={tmp_path / 'list.txt'}"]
    for data in (ssv2, kinetics, videolist):
        cfg = load_config(None, [*data, *SMALL, "model.num_frames=4"])
        with pytest.raises(FileNotFoundError, match="set data.decoder=frames"):
            build_dataset(cfg, "train", flow_labels=False, patch_size=16)


def test_video_files_read_as_frame_folders_name_the_fix(tmp_path):
    root, annotations = write_ssv2_tree(tmp_path / "ssv2", CLASSES, per_class=1)
    ssv2 = ["data.dataset=ssv2", f"data.root={root}", f"data.annotations={annotations}"]
    write_video(tmp_path / "clips" / "a.mp4", numbered_frames(8))
    (tmp_path / "list.txt").write_text("clips/a.mp4 0\n")
    videolist = ["data.dataset=videolist", f"data.annotations={tmp_path / 'list.txt'}"]
    for data in (ssv2, videolist):
        cfg = load_config(None, [*data, *SMALL, "model.num_frames=4", "data.decoder=frames"])
        with pytest.raises(FileNotFoundError, match="they are video files: data.decoder=frames"):
            build_dataset(cfg, "train", flow_labels=False, patch_size=16)


def test_data_frames_writes_every_frame_resumes_and_skips_bad_videos(tmp_path, capsys):
    root = tmp_path / "videos"
    write_video(root / "jump" / "a.mp4", numbered_frames(20))
    write_video(root / "sit" / "b c.webm", numbered_frames(9))
    (root / "sit" / "broken.mp4").write_text("not a video")
    (tmp_path / "classes.txt").write_text("sit\njump\n")
    (tmp_path / "train.txt").write_text("jump/a.mp4 jump\nsit/b c.webm sit\nsit/broken.mp4 sit\n")
    (tmp_path / "val.txt").write_text("sit/b c.webm sit\n")
    given = [
        f"data.root={root}",
        f"data.annotations={tmp_path / 'train.txt'}",
        f"data.val_annotations={tmp_path / 'val.txt'}",
        f"data.class_list={tmp_path / 'classes.txt'}",
        "data.num_workers=0",
        *SMALL,
    ]
    out = tmp_path / "frames"
    assert main(["data", "frames", "videolist/time", *given, "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "3 videos: 0 done already, 3 to extract" in printed and "1 video could not" in printed
    assert json.loads((out / "bad_videos.jsonl").read_text())["path"].endswith("broken.mp4")
    # Frame i of the folder is frame i of the video: every frame, in order, the class layout kept.
    reader = open_video(out / "jump" / "a", "frames")
    assert reader.num_frames == 20 and frame_numbers(reader.get_frames(range(20))) == list(
        range(20)
    )
    assert open_video(out / "sit" / "b c", "frames").num_frames == 9
    # The new lists name the folders; with the class list the classes keep their order.
    read = [f"data.root={out}", "data.decoder=frames", *given[3:]]
    read += [f"data.annotations={out / 'train.csv'}", f"data.val_annotations={out / 'val.csv'}"]
    train = build_dataset(
        load_config("videolist/time", read), "train", flow_labels=False, patch_size=16
    )
    assert train.classes == ["sit", "jump"] and train.labels == [1, 0, 0]
    # The video that could not be decoded stays a bad one (not a missing one) on the frames.
    assert not train.missing and "could not be decoded when they were extracted" in train[2].reason
    assert f"data.annotations={out / 'train.csv'}" in printed

    # A killed extraction's half-written folder is redone; finished folders are kept.
    (out / "sit" / "b c").rename(out / "sit" / "b c.partial")
    (out / "sit" / "b c.partial" / "img_00009.jpg").unlink()
    assert main(["data", "frames", "videolist/time", *given, "--out", str(out)]) == 1
    assert "3 videos: 1 done already, 2 to extract" in capsys.readouterr().out
    assert open_video(out / "sit" / "b c", "frames").num_frames == 9
    assert not (out / "sit" / "b c.partial").exists()


def test_data_frames_of_a_dataset_found_by_name_and_its_mistakes(tmp_path, capsys):
    root, annotations = write_ssv2_tree(tmp_path, CLASSES, per_class=1, num_frames=10)
    given = [f"data.root={root}", f"data.annotations={annotations}", "data.num_workers=0", *SMALL]
    out = tmp_path / "frames"
    command = ["data", "frames", "ssv2/timesformer_time", *given, "--out", str(out)]
    assert main([*command, "--split", "val", "--short-side", "24", "--quality", "80"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1002", "1003", "frames.json"]  # <id>/
    assert open_video(out / "1002", "frames").get_frames([0]).shape == (1, 24, 32, 3)
    framed = [f"data.root={out}", "data.decoder=frames", *given[1:]]
    val = build_dataset(
        load_config("ssv2/timesformer_time", framed), "val", flow_labels=False, patch_size=16
    )
    assert len(val) == 2
    capsys.readouterr()
    assert main(["data", "frames", "ssv2/timesformer_time", *framed, "--out", str(out)]) == 2
    assert "frame folders already" in capsys.readouterr().err
    assert main([*command, "--quality", "0"]) == 2
    assert main([*command, "--short-side", "-5"]) == 2
    assert main(["data", "frames", "synthetic/time", "--out", str(out)]) == 2
    # Going on in the folder with other settings would mix two kinds of frames in it.
    assert main([*command, "--split", "val", "--short-side", "32"]) == 2
    assert "holds frames extracted with short_side 24" in capsys.readouterr().err
    # A run's folder is not a place for frame folders.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    assert main(["data", "frames", "ssv2/timesformer_time", *given, "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]


def test_list_files_with_commas_byte_order_marks_and_twin_names(tmp_path, capsys):
    from timematters.diagnostics.predict import list_videos

    folder = tmp_path / "my videos" / "a, b"
    write_video(folder / "clip one.mp4", numbered_frames(10))
    listed = tmp_path / "list.csv"
    listed.write_text('path,label\n"my videos/a, b/clip one.mp4",walk\n')
    # --video LIST.csv (predict, flow, diagnose) splits it as a CSV: the quoted comma is a name's.
    assert list_videos([listed]) == [folder / "clip one.mp4"]
    # A class list saved with a byte-order mark: its first name is the name, not "\ufeffwalk".
    classes = tmp_path / "classes.txt"
    classes.write_text("\ufeffwalk\nrun\n", encoding="utf-8")
    from timematters.data.videolist import read_class_list

    assert read_class_list(classes) == ["walk", "run"]
    # a.mp4 and a.webm would share the frame folder a/: refused, naming both.
    write_video(tmp_path / "a.mp4", numbered_frames(10))
    write_video(tmp_path / "a.webm", numbered_frames(10))
    (tmp_path / "train.txt").write_text("a.mp4 walk\na.webm run\n")
    options = ["data.dataset=videolist", f"data.annotations={tmp_path / 'train.txt'}", *SMALL]
    command = ["data", "frames", "videolist/time", *options, "--out", str(tmp_path / "frames")]
    assert main([*command, "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "1 frame folders would hold two videos each" in err and "a.webm" in err
    # Refused, it recorded no settings: the list mended, other settings are taken.
    assert not (tmp_path / "frames" / "frames.json").exists()
    (tmp_path / "train.txt").write_text("a.mp4 walk\n")
    assert main([*command, "--split", "train", "--quality", "80", "--workers", "0"]) == 0


def test_data_frames_never_replaces_a_users_lists(tmp_path, capsys):
    # --out the folder of the user's lists: its train.csv became a list of frame folders.
    write_video(tmp_path / "jump" / "a.mp4", numbered_frames(10))
    users = "path,label\njump/a.mp4,jump\n"
    (tmp_path / "train.csv").write_text(users)
    (tmp_path / "other.txt").write_text("jump/a.mp4 jump\n")
    given = ["data.dataset=videolist", "data.num_workers=0", *SMALL]
    for listed, replaced in (
        ("train.csv", "the video list being read"),
        ("other.txt", "which this command did not write"),
    ):
        read = [f"data.annotations={tmp_path / listed}", "--split", "train"]
        assert (
            main(["data", "frames", "videolist/time", *given, *read, "--out", str(tmp_path)]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and replaced in err and "choose another --out" in err
        assert (tmp_path / "train.csv").read_text() == users
        assert not (tmp_path / "jump" / "a").exists() and not (tmp_path / "frames.json").exists()
    # Its own lists, which frames.json names, are replaced when it goes on.
    command = ["data", "frames", "videolist/time", *given, *read, "--out", str(tmp_path / "frames")]
    assert main(command) == 0 and main(command) == 0
    assert "1 video: 1 done already" in capsys.readouterr().out


def test_undecodable_videos_stay_bad_on_the_frames_and_are_listed_once(tmp_path, capsys):
    # They were left out of the frames: missing there, not bad, so that data.max_bad_fraction
    # judged fewer videos, and a run that stops on the videos trained on the frames.
    root, annotations = write_ssv2_tree(tmp_path, CLASSES, per_class=2, num_frames=6)
    (root / "1001.webm").write_bytes(b"not a video")
    given = [f"data.root={root}", f"data.annotations={annotations}", "data.num_workers=0", *SMALL]
    out = tmp_path / "frames"
    command = ["data", "frames", "ssv2/timesformer_time", *given, "--out", str(out)]
    for _ in range(2):  # the resumed extraction tries it again, and lists it once
        assert main([*command, "--split", "train"]) == 1
        lines = (out / "bad_videos.jsonl").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["path"] == str(root / "1001.webm")
    framed = [f"data.root={out}", "data.decoder=frames", *given[1:]]
    cfg = load_config("ssv2/timesformer_time", framed)
    train = build_dataset(cfg, "train", flow_labels=False, patch_size=16)
    assert len(train) == 4 and not train.missing
    bad = train[[s.video_id for s in train.samples].index("1001")]
    assert "1001.webm could not be decoded when they were extracted" in bad.reason
    # A video replaced since is extracted, and no longer listed.
    write_video(root / "1001.webm", numbered_frames(6))
    assert main([*command, "--split", "train"]) == 0
    assert "4 videos: 3 done already, 1 to extract" in capsys.readouterr().out
    assert open_video(out / "1001", "frames").num_frames == 6
    assert not (out / "bad_videos.jsonl").exists()
