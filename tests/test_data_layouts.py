"""Annotation files as users and spreadsheets save them: labels with spaces, classes named twice,
short or malformed rows, byte-order marks and files that are not UTF-8; and frame folders that
are there but hold no frames, which are bad videos rather than missing ones."""

import json

import pytest
from test_data_messages import TINY_CLIPS
from test_errors import _cli, _one_clear_line
from videos import numbered_frames, write_frame_folder, write_video

from timematters.config import Config, DataConfig, ModelConfig
from timematters.data import build_dataset
from timematters.data.collate import BadVideo
from timematters.data.diving48 import read_diving48_classes
from timematters.data.hmdb51 import read_hmdb51_split
from timematters.data.jester import read_classes, read_split
from timematters.data.kinetics import KineticsDataset, read_kinetics_csv
from timematters.data.ssv2 import read_ssv2_classes
from timematters.data.subsets import read_subsets
from timematters.data.transforms import TrainTransform
from timematters.data.ucf101 import read_ucf101_classes
from timematters.data.videolist import VideoListDataset, read_class_list, read_video_list

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"


def _options(**kw):
    transform = TrainTransform(crop_size=32, short_side=(36, 40), randaugment_ops=1)
    return dict(transform=transform, train=True, num_frames=4, **kw)


def test_a_label_with_spaces_after_a_file_name_is_one_label(tmp_path):
    # It was split after its first word: the path "... 0.mp4 air", a phantom class "drumming".
    (tmp_path / "train.txt").write_text(
        "clips/jump/my clip 0.mp4 air drumming\n"
        "clips/with space.MP4 jump\n"
        "frames/my clip 1 jump\n"  # a frame folder: its name ends at the last space
        "my.mp4 files/clip 2 jump\n"  # a folder named like a video: the label has no "/"
    )
    assert read_video_list(tmp_path / "train.txt") == [
        ("clips/jump/my clip 0.mp4", "air drumming"),
        ("clips/with space.MP4", "jump"),
        ("frames/my clip 1", "jump"),
        ("my.mp4 files/clip 2", "jump"),
    ]


@pytest.mark.parametrize(
    "name, text, reader, words",
    [
        ("classes.txt", "jump\nsit\n\njump\n", read_class_list, ["classes.txt:4", "'jump'", "1"]),
        (
            "jester-v1-labels.csv",
            "Thumb Up\nThumb Down\nThumb Up\n",
            lambda path: read_classes(path.parent, "jester-v1"),
            ["jester-v1-labels.csv:3", "'Thumb Up'", "line 1"],
        ),
        (
            "classInd.txt",
            "1 ApplyEyeMakeup\n2 Archery\n3 applyeyemakeup\n",
            lambda path: read_ucf101_classes(path.parent),
            ["classInd.txt:3", "'applyeyemakeup'", "line 1"],
        ),
        (
            "classInd.txt",
            "1 ApplyEyeMakeup\n1 Archery\n2 Basketball\n",
            lambda path: read_ucf101_classes(path.parent),
            ["classInd.txt:2", "index 1", "'ApplyEyeMakeup'"],
        ),
    ],
)
def test_a_class_named_twice_is_refused_naming_the_line(tmp_path, name, text, reader, words):
    # The class would be an output that no video is labelled with.
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as error:
        reader(tmp_path / name)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_a_duplicate_in_the_class_list_exits_2_in_one_line(tmp_path, capsys):
    write_video(tmp_path / "clips" / "a.mp4", numbered_frames(8, 16, 16))
    (tmp_path / "train.txt").write_text("a.mp4 jump\n")
    (tmp_path / "classes.txt").write_text("jump\nsit\njump\n")
    args = [
        f"data.root={tmp_path / 'clips'}",
        f"data.annotations={tmp_path / 'train.txt'}",
        f"data.class_list={tmp_path / 'classes.txt'}",
    ]
    code, err = _cli(capsys, "train", "videolist/time", *TINY_CLIPS, *args)
    assert code == 2
    _one_clear_line(err, "classes.txt:3", "'jump'", "name each class once")


@pytest.mark.parametrize(
    "row, words",
    [
        ("abseiling,zzz", [":2:", "no time_start or time_end", "'abseiling,zzz'"]),
        ("abseiling,zzz,abc,10", [":2:", "time_start 'abc' is not a number"]),
        (",zzz,0,10", [":2:", "no label"]),
        ("abseiling,,0,10", [":2:", "no youtube_id"]),
    ],
)
def test_a_malformed_kinetics_row_is_named_by_its_line(tmp_path, capsys, row, words):
    csv = tmp_path / "train.csv"
    csv.write_text(f"{KINETICS_HEADER}{row}\nabseiling,yyy,0,10,train\n")
    with pytest.raises(ValueError) as error:  # which `data check` reports, not a traceback
        read_kinetics_csv(csv)
    for word in [str(csv), *words]:
        assert word in str(error.value), (word, str(error.value))
    (tmp_path / "k400").mkdir()
    data = [f"data.root={tmp_path / 'k400'}", f"data.annotations={csv}"]
    code, err = _cli(capsys, "train", "videolist/time", "data.dataset=kinetics", *TINY_CLIPS, *data)
    assert code == 2
    _one_clear_line(err, f"{csv}:2:")


def test_an_evaluation_label_outside_the_training_classes_names_the_csv_and_line(tmp_path):
    write_video(tmp_path / "k400" / "a_000000_000010.mp4", numbered_frames(8, 16, 16))
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "train.csv").write_text(f"{KINETICS_HEADER}abseiling,a,0,10,train\n")
    (annotations / "validate.csv").write_text(
        f"{KINETICS_HEADER}abseiling,a,0,10,val\nabseilin,a,0,10,val\n"
    )
    with pytest.raises(ValueError) as error:
        KineticsDataset(tmp_path / "k400", annotations, "val", **_options())
    message = str(error.value)
    assert message.startswith(f"{annotations / 'validate.csv'}:3: the val label 'abseilin'")
    assert str(annotations / "train.csv") in message and "correct the label" in message


def _bom(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8-sig"))
    return path


def test_annotation_files_with_a_byte_order_mark_are_read(tmp_path):
    # Excel's "CSV UTF-8" starts with one: "\ufefflabel" was no column, "\ufeffSwiping Left" no
    # class, and json refused the file.
    k = _bom(tmp_path / "k" / "train.csv", f"{KINETICS_HEADER}abseiling,zzz,1,10,train\n")
    assert read_kinetics_csv(k) == [("abseiling", "zzz_000001_000010")]
    jester = tmp_path / "jester"
    _bom(jester / "jester-v1-labels.csv", "Swiping Left\nThumb Up\n")
    _bom(jester / "jester-v1-train.csv", "100;Swiping Left\n101;Thumb Up\n")
    classes = read_classes(jester, "jester-v1")
    assert classes == ["Swiping Left", "Thumb Up"]
    assert read_split(jester, "jester-v1", "train", classes)[1] == [("100", 0), ("101", 1)]
    _bom(tmp_path / "ssv2" / "labels.json", json.dumps({"Folding something": "0"}))
    assert read_ssv2_classes(tmp_path / "ssv2") == ["Folding something"]
    _bom(tmp_path / "diving" / "Diving48_vocab.json", json.dumps([["Back", "15som"]]))
    assert read_diving48_classes(tmp_path / "diving") == ["Back 15som"]
    _bom(tmp_path / "hmdb" / "kick_test_split1.txt", "a.avi 1\n")
    assert read_hmdb51_split(tmp_path / "hmdb", "train", 1) == (["kick"], [("a", 0)])
    assert read_subsets(_bom(tmp_path / "subsets.yaml", "temporal: [a]\n")) == {"temporal": ["a"]}


@pytest.mark.parametrize(
    "name, reader",
    [
        ("train.csv", read_kinetics_csv),
        ("jester-v1-labels.csv", lambda path: read_classes(path.parent, "jester-v1")),
        ("labels.json", lambda path: read_ssv2_classes(path.parent)),
        ("classInd.txt", lambda path: read_ucf101_classes(path.parent)),
        ("kick_test_split1.txt", lambda path: read_hmdb51_split(path.parent, "train", 1)),
        ("classes.txt", read_class_list),
        ("list.txt", read_video_list),
        ("subsets.yaml", read_subsets),
    ],
)
def test_a_file_that_is_not_utf8_is_named_with_the_fix(tmp_path, name, reader):
    # Latin-1 "café": "'utf-8' codec can't decode byte 0xe9" named no file.
    (tmp_path / name).write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{tmp_path / name}: not UTF-8 text .*save it as UTF-8"):
        reader(tmp_path / name)


def test_an_empty_jester_frame_folder_is_a_bad_video_not_a_missing_one(tmp_path):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "jester-v1-labels.csv").write_text("Thumb Up\nThumb Down\n")
    (annotations / "jester-v1-train.csv").write_text("100;Thumb Up\n101;Thumb Down\n102;Thumb Up\n")
    root = tmp_path / "20bn-jester-v1"
    write_frame_folder(root / "100", numbered_frames(8), "{:05d}", ".jpg")
    (root / "101").mkdir()  # extracted to nothing
    cfg = Config(
        model=ModelConfig(num_frames=4),
        data=DataConfig(
            dataset="jester",
            root=str(root),
            annotations=str(annotations),
            decoder="frames",
            crop_size=32,
            train_short_side=(36, 40),
            eval_short_side=32,
        ),
    )
    dataset = build_dataset(cfg, "train", flow_labels=False, patch_size=16)
    assert len(dataset) == 2 and dataset.missing == ["102/"]  # 102 is absent
    bad = dataset[1]
    assert isinstance(bad, BadVideo) and "no frame images" in bad.reason


def test_a_frame_folder_in_a_list_of_video_files_is_read_not_missing(tmp_path):
    write_video(tmp_path / "a.mp4", numbered_frames(8))
    write_frame_folder(tmp_path / "b", numbered_frames(8))
    (tmp_path / "train.txt").write_text("a.mp4 jump\nb sit\ngone.mp4 sit\n")
    dataset = VideoListDataset(tmp_path / "train.txt", **_options())
    assert len(dataset) == 2 and dataset.missing == [str(tmp_path / "gone.mp4")]
    assert dataset[1]["video"].shape == (3, 4, 32, 32)  # open_video reads the folder's frames
