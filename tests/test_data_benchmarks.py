"""Diving48, UCF101, HMDB51, Jester and Something-Something v1 from their official annotation
files, on small real video trees laid out as the releases are."""

import json

import pytest
from test_data_messages import _dataset_config
from videos import frame_numbers, numbered_frames, write_frame_folder, write_video

from timematters.config import ConfigError, validate
from timematters.data import build_dataset
from timematters.data.diving48 import Diving48Dataset
from timematters.data.hmdb51 import HMDB51Dataset
from timematters.data.jester import TwentyBNDataset
from timematters.data.transforms import EvalTransform, TrainTransform
from timematters.data.ucf101 import UCF101Dataset

DIVES = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"]]


def _options(train=True, **kw):
    transform = (
        TrainTransform(crop_size=32, short_side=(36, 40), randaugment_ops=1)
        if train
        else EvalTransform(crop_size=32, short_side=32, num_crops=1)
    )
    return dict(transform=transform, train=train, num_frames=4, **kw)


def _config(dataset, root, annotations, **data):
    return _dataset_config(dataset, root, annotations, num_workers=0, **data)


def _entry(name, label):
    return {"vid_name": name, "label": label, "start_frame": 0, "end_frame": 12}


@pytest.fixture(scope="module")
def diving_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diving48")
    annotations = tmp / "annotations"
    annotations.mkdir()
    (annotations / "Diving48_vocab.json").write_text(json.dumps(DIVES))
    train = [_entry(f"train{i}_00000", i % 2) for i in range(4)]
    test = [_entry("test0_00001", 1), _entry("test1_00002", 0), _entry("never_00003", 0)]
    (annotations / "Diving48_V2_train.json").write_text(json.dumps(train))
    (annotations / "Diving48_V2_test.json").write_text(json.dumps(test))
    for entry in train + test[:2]:
        write_video(tmp / "rgb" / f"{entry['vid_name']}.mp4", numbered_frames(12))
    return tmp / "rgb", annotations


def test_diving48_classes_splits_and_missing(diving_tree):
    root, annotations = diving_tree
    train = Diving48Dataset(root, annotations, "train", **_options())
    assert train.classes == ["Back 15som 05Twis FREE", "Forward 25som NoTwis PIKE"]
    assert train.labels == [0, 1, 0, 1] and train.missing == []
    # No validation split: val is the test list, the one every Diving48 result reports.
    val = Diving48Dataset(root, annotations, "val", **_options(train=False))
    assert [s.video_id for s in val.samples] == ["test0_00001", "test1_00002"]
    assert val.labels == [1, 0] and val.missing == ["never_00003.mp4"]
    assert frame_numbers(val[0]["video"][0].permute(1, 2, 3, 0).mul(0.5).add(0.5).mul(255)) == [
        1,
        4,
        7,
        10,
    ]


def test_diving48_first_release_and_bad_labels(tmp_path, diving_tree):
    root, annotations = diving_tree
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(DIVES))
    (tmp_path / "Diving48_train.json").write_text(json.dumps([_entry("train0_00000", 1)]))
    assert Diving48Dataset(root, tmp_path, "train", **_options()).labels == [1]

    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps([_entry("train0_00000", 48)]))
    with pytest.raises(ValueError, match=r"Diving48_V2_train.json: entry 0 .* label 48"):
        Diving48Dataset(root, tmp_path, "train", **_options())
    (tmp_path / "Diving48_vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="Diving48_vocab.json"):
        Diving48Dataset(root, tmp_path, "train", **_options())


def test_diving48_frame_folders(tmp_path, diving_tree):
    _, annotations = diving_tree
    for i in range(4):
        write_frame_folder(tmp_path / "frames" / f"train{i}_00000", numbered_frames(8), ext=".jpg")
    train = Diving48Dataset(
        tmp_path / "frames", annotations, "train", decoder="frames", **_options()
    )
    assert len(train) == 4 and train[0]["video"].shape == (3, 4, 32, 32)
    # The frame folders read as videos: none found, and the error says what to set.
    with pytest.raises(FileNotFoundError, match="data.decoder=frames"):
        Diving48Dataset(tmp_path / "frames", annotations, "train", **_options())


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ucf101")
    lists = tmp / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n")
    # The release's spelling: class folder HandstandPushups, file names HandStandPushups.
    videos = {
        "train": [
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
            "HandstandPushups/v_HandStandPushups_g08_c01.avi",
            "HandstandPushups/v_HandStandPushups_g09_c01.avi",
        ],
        "test": [
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
            "HandstandPushups/v_HandStandPushups_g01_c01.avi",
        ],
    }
    (lists / "trainlist01.txt").write_text(
        "".join(f"{path} {1 if 'Apply' in path else 2}\r\n" for path in videos["train"])
    )
    (lists / "testlist01.txt").write_text("".join(f"{path}\r\n" for path in videos["test"]))
    (lists / "testlist02.txt").write_text(f"{videos['train'][0]}\n{videos['test'][0]}\n")
    for path in videos["train"] + videos["test"][:1]:
        write_video(tmp / "UCF-101" / path, numbered_frames(10))
    # A copy transcoded to MP4 is found under its own extension.
    write_video(tmp / "UCF-101" / videos["test"][1].replace(".avi", ".mp4"), numbered_frames(10))
    return tmp / "UCF-101", lists


def test_ucf101_folds_and_classes(ucf_tree, tmp_path):
    root, lists = ucf_tree
    train = UCF101Dataset(root, lists, "train", **_options())
    assert train.classes == ["ApplyEyeMakeup", "HandstandPushups"]
    assert train.labels == [0, 1, 1] and len(train) == 3
    test = UCF101Dataset(root, lists, "test", **_options(train=False))
    assert test.labels == [0, 1] and test.samples[1].path.endswith("g01_c01.mp4")
    fold2 = UCF101Dataset(root, lists, "val", fold=2, **_options(train=False))
    assert [s.video_id for s in fold2.samples] == [
        "v_ApplyEyeMakeup_g08_c01",
        "v_ApplyEyeMakeup_g01_c01",
    ]
    with pytest.raises(FileNotFoundError, match="testlist03.txt"):
        UCF101Dataset(root, lists, "test", fold=3, **_options(train=False))
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n")
    (tmp_path / "trainlist01.txt").write_text("Fencing/v_Fencing_g01_c01.avi 1\n")
    with pytest.raises(ValueError, match=r"trainlist01.txt:1: 'Fencing/v_Fencing_g01_c01.avi'"):
        UCF101Dataset(root, tmp_path, "train", **_options())


def test_ucf101_missing_video_is_named_as_listed(ucf_tree, tmp_path):
    root, lists = ucf_tree
    (tmp_path / "classInd.txt").write_text((lists / "classInd.txt").read_text())
    (tmp_path / "trainlist01.txt").write_text(
        (lists / "trainlist01.txt").read_text() + "ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi 1\n"
    )
    train = UCF101Dataset(root, tmp_path, "train", **_options())
    assert train.missing == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi"]


@pytest.fixture(scope="module")
def hmdb_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hmdb51")
    splits = tmp / "testTrainMulti_7030_splits"
    splits.mkdir()
    ids = {"brush_hair": ["1", "1", "2", "0"], "sword_exercise": ["2", "1", "1", "0"]}
    for name, marks in ids.items():
        for fold in (1, 2):
            lines = [f"{name}_clip{i}.avi {mark} \n" for i, mark in enumerate(marks)]
            (splits / f"{name}_test_split{fold}.txt").write_text("".join(lines))
            for i in range(len(marks) - 1):  # the fold's unused videos exist too
                path = tmp / "hmdb51" / name / f"{name}_clip{i}.avi"
                if not path.exists():
                    write_video(path, numbered_frames(10))
    return tmp / "hmdb51", splits


def test_hmdb51_split_ids(hmdb_tree, tmp_path):
    root, splits = hmdb_tree
    train = HMDB51Dataset(root, splits, "train", **_options())
    assert train.classes == ["brush_hair", "sword_exercise"]
    assert [s.video_id for s in train.samples] == [
        "brush_hair_clip0",
        "brush_hair_clip1",
        "sword_exercise_clip1",
        "sword_exercise_clip2",
    ]
    test = HMDB51Dataset(root, splits, "test", fold=2, **_options(train=False))
    assert test.labels == [0, 1] and test.missing == []
    with pytest.raises(FileNotFoundError, match="_test_split3.txt"):
        HMDB51Dataset(root, splits, "train", fold=3, **_options())
    # Classes sorted by name, as everyone numbers them, not in the files' order.
    from timematters.data.hmdb51 import find_hmdb51_split_files

    names = tmp_path / "names"
    names.mkdir()
    for name in ("kick_ball", "kick", "sword", "sword_exercise"):
        (names / f"{name}_test_split1.txt").write_text("x.avi 1\n")
    assert list(find_hmdb51_split_files(names, 1)) == [
        "kick",
        "kick_ball",
        "sword",
        "sword_exercise",
    ]
    (tmp_path / "climb_test_split1.txt").write_text("climb_clip0.avi train\n")
    with pytest.raises(ValueError, match=r"climb_test_split1.txt:1: expected 'VIDEO.avi 0\|1\|2'"):
        HMDB51Dataset(root, tmp_path, "train", **_options())


def test_configs_build_each_dataset(diving_tree, ucf_tree, hmdb_tree):
    for dataset, (root, annotations), count in (
        ("diving48", diving_tree, 2),
        ("ucf101", ucf_tree, 2),
        ("hmdb51", hmdb_tree, 2),
    ):
        val = build_dataset(
            _config(dataset, root, annotations), "val", flow_labels=False, patch_size=16
        )
        assert len(val) == count and val[0]["video"].shape == (3, 3, 4, 32, 32)  # 3 crops
    fold2 = _config("ucf101", *ucf_tree, fold=2)
    assert len(build_dataset(fold2, "val", flow_labels=False, patch_size=16)) == 2


def test_config_mistakes_name_the_key(diving_tree, tmp_path):
    root, annotations = diving_tree
    with pytest.raises(ConfigError, match="data.annotations .*Diving48_vocab.json"):
        validate(_config("diving48", root, ""))
    with pytest.raises(ConfigError, match="data.fold=2 applies to ucf101 and hmdb51 only"):
        validate(_config("diving48", root, annotations, fold=2))
    with pytest.raises(ConfigError, match="data.fold=4"):
        validate(_config("hmdb51", root, annotations, fold=4))
    with pytest.raises(FileNotFoundError, match="data.annotations=.* set data.annotations to the"):
        build_dataset(
            _config("ucf101", root, tmp_path / "absent"), "train", flow_labels=False, patch_size=16
        )


JESTER = ["Swiping Left", "Swiping Right", "Thumb Up", "Drumming Fingers"]


@pytest.fixture(scope="module")
def jester_tree(tmp_path_factory):
    """Jester as released: <id>/00001.jpg frame folders and the 20BN CSV files."""
    tmp = tmp_path_factory.mktemp("jester")
    annotations = tmp / "annotations"
    annotations.mkdir()
    (annotations / "jester-v1-labels.csv").write_text("".join(f"{n}\n" for n in JESTER))
    train = [(str(100 + i), JESTER[i % 4]) for i in range(8)]
    val = [("200", "Swiping Right"), ("201", "Thumb Up")]
    for name, rows in (("train", train), ("validation", val)):
        (annotations / f"jester-v1-{name}.csv").write_text("".join(f"{i};{n}\n" for i, n in rows))
    (annotations / "jester-v1-test.csv").write_text("300\n")
    for video_id, _ in train + val:
        write_frame_folder(tmp / "20bn-jester-v1" / video_id, numbered_frames(12), "{:05d}", ".jpg")
    return tmp / "20bn-jester-v1", annotations


def test_jester_subsets_pairs_and_frames(jester_tree):
    root, annotations = jester_tree
    train = TwentyBNDataset(root, annotations, "train", decoder="frames", **_options())
    assert train.classes == JESTER and train.labels == [0, 1, 2, 3] * 2
    assert train.subsets == {"temporal": [0, 1], "static": [2]} and train.pairs == {0: 1, 1: 0}
    val = TwentyBNDataset(root, annotations, "val", decoder="frames", **_options(train=False))
    assert val.labels == [1, 2]
    assert frame_numbers(val[0]["video"][0].permute(1, 2, 3, 0).mul(0.5).add(0.5).mul(255)) == [
        1,
        4,
        7,
        10,
    ]
    with pytest.raises(ValueError, match=r"jester-v1-test.csv:1: .*no labels"):
        TwentyBNDataset(root, annotations, "test", decoder="frames", **_options(train=False))
    with pytest.raises(FileNotFoundError, match="data.decoder=frames"):
        TwentyBNDataset(root, annotations, "train", **_options())


def test_something_something_v1_reads_the_same_format(jester_tree, tmp_path):
    root, jester = jester_tree
    for name in ("labels", "train", "validation"):
        text = (jester / f"jester-v1-{name}.csv").read_text()
        (tmp_path / f"something-something-v1-{name}.csv").write_text(text)
    cfg = _config("ssv1", root, tmp_path, decoder="frames")
    val = build_dataset(cfg, "val", flow_labels=False, patch_size=16)
    assert val.classes == JESTER and val.labels == [1, 2]
    assert val.subsets == {} and not getattr(val, "pairs", {})  # SSv1 ships no subsets
    (tmp_path / "something-something-v1-train.csv").write_text("100;Waving\n")
    with pytest.raises(ValueError, match=r"train.csv:1: class 'Waving' is not in"):
        build_dataset(cfg, "train", flow_labels=False, patch_size=16)
