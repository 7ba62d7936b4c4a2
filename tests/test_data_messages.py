"""The data layer's messages name what the user has to fix: the config key and its path, the file
and line of a bad entry, the list a missing video was listed in."""

import logging

import pytest
from test_errors import _cli, _one_clear_line
from videos import numbered_frames, write_ssv2_tree, write_video

from timematters.config import Config, DataConfig, ModelConfig
from timematters.data import build_dataset
from timematters.engine.metrics import copy_output

TINY_CLIPS = [
    "data.crop_size=32",
    "data.train_short_side=[36, 40]",
    "data.eval_short_side=32",
    "model.num_frames=4",
    "data.num_workers=0",
]


@pytest.fixture
def clips(tmp_path):
    """Four short videos, a training list, an evaluation list and a class list."""
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        write_video(tmp_path / "clips" / name, numbered_frames(8, 16, 16))
    (tmp_path / "train.txt").write_text("a.mp4 jump\nb.mp4 sit\nc.mp4 jump\n")
    (tmp_path / "val.txt").write_text("d.mp4 sit\n")
    (tmp_path / "classes.txt").write_text("jump\nsit\n")
    return tmp_path


def _list_args(tmp, **paths):
    """The CLI arguments of a video list in ``tmp``; ``paths``: other file names there, by key."""
    paths = {"root": "clips", "annotations": "train.txt", "val_annotations": "val.txt", **paths}
    return [
        "videolist/time",
        *TINY_CLIPS,
        *(f"data.{key}={tmp / name}" for key, name in paths.items()),
    ]


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("root", "nope", ["data.root=", "nope", "no such folder", "relative to"]),
        ("root", "train.txt", ["data.root=", "train.txt", "is a file, not a folder"]),
        ("annotations", "nope.txt", ["data.annotations=", "nope.txt", "training list"]),
        ("val_annotations", "nope.txt", ["data.val_annotations=", "nope.txt", "evaluation list"]),
        ("class_list", "nope.txt", ["data.class_list=", "nope.txt", "one class name per line"]),
    ],
)
def test_a_missing_video_list_path_names_its_key(clips, tmp_path, capsys, key, value, words):
    args = _list_args(clips, **{key: value})
    code, err = _cli(capsys, "train", *args, f"train.out={tmp_path / 'run'}")
    assert code == 2
    _one_clear_line(err, *words)


def test_a_wrong_training_list_is_told_from_a_wrong_evaluation_list(clips, tmp_path, capsys):
    train_run, val_run = (f"train.out={tmp_path / name}" for name in ("run1", "run2"))
    _, train_err = _cli(capsys, "train", *_list_args(clips, annotations="nope.txt"), train_run)
    _, val_err = _cli(capsys, "train", *_list_args(clips, val_annotations="nope.txt"), val_run)
    nope = clips / "nope.txt"
    assert f"data.annotations={nope}" in train_err and "data.val_annotations" not in train_err
    assert f"data.val_annotations={nope}" in val_err


def _dataset_config(dataset, root, annotations, **data):
    """A config of 4-frame 32² clips of ``dataset``; ``data``: other ``DataConfig`` fields."""
    return Config(
        model=ModelConfig(num_frames=4),
        data=DataConfig(
            dataset=dataset,
            root=str(root),
            annotations=str(annotations),
            crop_size=32,
            train_short_side=(36, 40),
            eval_short_side=32,
            **data,
        ),
    )


@pytest.mark.parametrize("dataset", ["ssv2", "kinetics"])
def test_missing_ssv2_and_kinetics_paths_name_their_key(tmp_path, dataset):
    (tmp_path / "videos").mkdir()
    (tmp_path / "annotations").mkdir()
    for root, annotations, key in [
        ("nope", "annotations", "data.root"),
        ("videos", "nope", "data.annotations"),
    ]:
        cfg = _dataset_config(dataset, tmp_path / root, tmp_path / annotations)
        with pytest.raises(FileNotFoundError) as error:
            build_dataset(cfg, "train", flow_labels=False, patch_size=8)
        assert str(error.value).startswith(f"{key}={tmp_path / 'nope'}: no such folder")


@pytest.mark.parametrize("name", ["labels.json", "train.json"])
def test_malformed_ssv2_json_names_the_file_and_place(tmp_path, name):
    root, annotations = write_ssv2_tree(tmp_path, ["Folding something"], per_class=1)
    (annotations / name).write_text("{not json: 1}")
    cfg = _dataset_config("ssv2", root, annotations)
    with pytest.raises(ValueError) as error:
        build_dataset(cfg, "train", flow_labels=False, patch_size=8)
    message = str(error.value)
    assert str(annotations / name) in message and "line 1 column 2" in message, message


def test_an_ssv2_labels_file_of_the_wrong_shape_is_named(tmp_path):
    root, annotations = write_ssv2_tree(tmp_path, ["Folding something"], per_class=1)
    (annotations / "labels.json").write_text('["Folding something"]')
    with pytest.raises(ValueError, match="labels.json: expected an object"):
        build_dataset(
            _dataset_config("ssv2", root, annotations), "train", flow_labels=False, patch_size=8
        )
    (annotations / "labels.json").write_text('{"Folding something": "zero"}')
    with pytest.raises(ValueError, match="labels.json: .*'zero'"):
        build_dataset(
            _dataset_config("ssv2", root, annotations), "train", flow_labels=False, patch_size=8
        )
    (annotations / "labels.json").write_text('{"Folding something": "0"}')
    (annotations / "train.json").write_text('[{"id": "1000"}]')
    with pytest.raises(ValueError, match="train.json: entry 0 has no 'template'"):
        build_dataset(
            _dataset_config("ssv2", root, annotations), "train", flow_labels=False, patch_size=8
        )


@pytest.mark.parametrize(
    "extra, words",
    [
        ([], ["unk.txt:3:", "'sideways'", "classes.txt", "add the class to"]),
        (["e.mp4 fly\n"], ["unk.txt:3:", "'sideways'", "nor is 1 other label", "['fly']"]),
        (["e.mp4 fly\n", "f.mp4 swim\n"], ["nor are 2 other labels", "['fly', 'swim']"]),
    ],
)
def test_labels_outside_the_class_list_name_the_line_and_the_class_list(
    clips, tmp_path, capsys, extra, words
):
    (clips / "unk.txt").write_text("a.mp4 jump\n\nb.mp4 sideways\nc.mp4 sit\n" + "".join(extra))
    args = _list_args(clips, annotations="unk.txt", class_list="classes.txt")
    code, err = _cli(capsys, "train", *args, f"train.out={tmp_path / 'run'}")
    assert code == 2
    _one_clear_line(err, *words)
    assert "labels is" not in err and "1 labels" not in err


@pytest.mark.parametrize(
    "lines, class_list, words",
    [
        ("a.mp4 0\nb.mp4 -1\n", None, [":2: label -1 is a negative class index", "from 0"]),
        ("a.mp4 0\nb.mp4 1\nc.mp4 5\n", "classes.txt", [":3: class index 5 is outside the 2"]),
        # One stray label would make every index a name (and "10" sort before "2").
        ("a.mp4 0\nb.mp4 1\nc.mp4 1.5\n", None, [":3: label '1.5' is not a class index"]),
    ],
)
def test_index_labels_that_are_no_class_name_their_line(
    clips, tmp_path, capsys, lines, class_list, words
):
    (clips / "idx.txt").write_text(lines)
    paths = {"class_list": class_list} if class_list else {}
    args = _list_args(clips, annotations="idx.txt", **paths)
    code, err = _cli(capsys, "train", *args, f"train.out={tmp_path / 'run'}")
    assert code == 2
    _one_clear_line(err, str(clips / "idx.txt"), *words)


def test_evaluation_labels_outside_the_training_lists_classes_name_that_list(clips, tmp_path):
    (clips / "val.txt").write_text("d.mp4 sit\nd.mp4 sit\nc.mp4 fly\n")
    cfg = _dataset_config("videolist", clips / "clips", clips / "train.txt")
    cfg.data.val_annotations = str(clips / "val.txt")
    with pytest.raises(ValueError) as error:
        build_dataset(cfg, "val", flow_labels=False, patch_size=8)
    message = str(error.value)
    assert message.startswith(f"{clips / 'val.txt'}:3: label 'fly' is not among the 2 classes")
    assert str(clips / "train.txt") in message


@pytest.mark.parametrize(
    "name, first_line",
    [("bad.csv", "path,lbl"), ("bad.txt", "path,lbl"), ("bad.csv", "a.mp4,jump")],
)
def test_a_csv_with_a_wrong_or_no_header_is_told_the_header(
    clips, tmp_path, capsys, name, first_line
):
    (clips / name).write_text(f"{first_line}\na.mp4,jump\nb.mp4,sit\n")
    args = _list_args(clips, annotations=name)
    code, err = _cli(capsys, "train", *args, f"train.out={tmp_path / 'run'}")
    assert code == 2
    _one_clear_line(err, f"{name}:1:", "a CSV needs the header path,label", repr(first_line))


def test_a_csv_file_of_path_label_lines_is_still_read(clips):
    (clips / "spaces.csv").write_text("a.mp4 jump\nb.mp4 sit\n")
    cfg = _dataset_config("videolist", clips / "clips", clips / "spaces.csv")
    assert build_dataset(cfg, "train", flow_labels=False, patch_size=8).labels == [0, 1]


def test_missing_videos_are_noticed_naming_the_list(clips, caplog):
    (clips / "val.txt").write_text("d.mp4 sit\ngone.mp4 jump\n")
    cfg = _dataset_config("videolist", clips / "clips", clips / "train.txt")
    cfg.data.val_annotations = str(clips / "val.txt")
    with caplog.at_level(logging.WARNING, logger="timematters"):
        dataset = build_dataset(cfg, "val", flow_labels=False, patch_size=8)
    assert len(dataset) == 1 and dataset.missing == [str(clips / "clips" / "gone.mp4")]
    notices = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(notices) == 1 and notices[0].startswith(
        f"1 of 2 videos listed in {clips / 'val.txt'} is missing under {clips / 'clips'}"
    ), notices
    assert caplog.records[-1].name.startswith("timematters.")  # what train.log's handler takes


def test_missing_ssv2_videos_are_noticed_naming_the_split_file(tmp_path, caplog):
    root, annotations = write_ssv2_tree(tmp_path, ["Folding something"], per_class=2)
    (root / "1000.webm").unlink()
    with caplog.at_level(logging.WARNING, logger="timematters"):
        build_dataset(
            _dataset_config("ssv2", root, annotations), "train", flow_labels=False, patch_size=8
        )
    assert f"1 of 2 videos listed in {annotations / 'train.json'} is missing" in caplog.text


def test_the_missing_videos_notice_reaches_a_log_copied_to_a_file(clips, tmp_path):
    (clips / "half.txt").write_text("a.mp4 jump\nb.mp4 sit\ngone.mp4 jump\n")
    cfg = _dataset_config("videolist", clips / "clips", clips / "half.txt")
    with copy_output(tmp_path / "train.log"):
        build_dataset(cfg, "train", flow_labels=False, patch_size=8)
    log = (tmp_path / "train.log").read_text()
    assert f"1 of 3 videos listed in {clips / 'half.txt'} is missing" in log


def test_a_training_runs_missing_videos_notice_is_in_its_train_log(clips, tmp_path, capsys):
    (clips / "half.txt").write_text("a.mp4 jump\nb.mp4 sit\nc.mp4 jump\nd.mp4 sit\ngone.mp4 jump\n")
    run = tmp_path / "run"
    tiny_model = [
        "model.name=timesformer_tiny_patch8_64",
        "model.kwargs={embed_dim: 24, depth: 1, num_heads: 2}",
        "model.drop_path_rate=0.0",
        "loss.flow.weight=0",
        "train.epochs=1",
        "train.batch_size=4",
        "train.device=cpu",
        "train.progress=false",
    ]
    args = _list_args(clips, annotations="half.txt")
    # A new run that fails before its first step leaves nothing behind: the corrected command
    # is not refused for a folder holding "a run" (its train.log).
    code, err = _cli(
        capsys, "train", *args, *tiny_model, f"train.out={run}", "data.val_annotations=no.txt"
    )
    assert code == 2 and "data.val_annotations=no.txt" in err
    assert not list(run.glob("*"))
    code, err = _cli(capsys, "train", *args, *tiny_model, f"train.out={run}")
    assert code == 0
    notice = f"videos listed in {clips / 'half.txt'} is missing"
    assert notice in (run / "train.log").read_text()


def test_the_official_ssv2_file_shapes_are_still_read(tmp_path):
    # The stricter reading above must not refuse labels.json's string indices or the entries.
    root, annotations = write_ssv2_tree(tmp_path, ["Folding something", "Tearing something"])
    dataset = build_dataset(
        _dataset_config("ssv2", root, annotations), "val", flow_labels=False, patch_size=8
    )
    assert dataset.classes == ["Folding something", "Tearing something"] and len(dataset) == 4
