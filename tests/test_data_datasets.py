"""SSv2, Kinetics and video-list datasets on small real video trees; flow labels in the items."""

import functools
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from videos import (
    frame_numbers,
    moving_square_frames,
    numbered_frames,
    write_frame_folder,
    write_ssv2_tree,
    write_video,
)

from timematters.config import Config, DataConfig, ModelConfig
from timematters.data import build_dataset
from timematters.data.build import loader_workers
from timematters.data.collate import collate_videos
from timematters.data.kinetics import KineticsDataset
from timematters.data.ssv2 import SSv2Dataset
from timematters.data.subsets import STATIC_CLASSES, TEMPORAL_CLASSES
from timematters.data.transforms import EvalTransform, TrainTransform
from timematters.data.video import open_video
from timematters.data.videolist import VideoListDataset
from timematters.flow import clip_flow_labels

SSV2_CLASSES = [
    "Approaching something with your camera",
    "Moving something and something closer to each other",  # temporal
    "Folding something",  # static
    "Pouring something into something",  # static
    "moving something and something away from each other",  # near miss: must not match
]


def _options(train=True, **kw):
    transform = (
        TrainTransform(crop_size=32, short_side=(36, 40), randaugment_ops=1)
        if train
        else EvalTransform(crop_size=32, short_side=32, num_crops=3)
    )
    return dict(transform=transform, train=train, num_frames=4, **kw)


@pytest.fixture(scope="module")
def ssv2_tree(tmp_path_factory):
    return write_ssv2_tree(tmp_path_factory.mktemp("ssv2"), SSV2_CLASSES, per_class=2)


@pytest.mark.parametrize("old_names", [False, True])
def test_ssv2_both_file_name_generations(tmp_path, old_names):
    root, annotations = write_ssv2_tree(
        tmp_path, SSV2_CLASSES[:2], per_class=1, old_names=old_names
    )
    dataset = SSv2Dataset(root, annotations, "val", **_options(train=False))
    assert len(dataset) == 2 and dataset.classes == SSV2_CLASSES[:2]


def test_ssv2_labels_and_items(ssv2_tree):
    root, annotations = ssv2_tree
    dataset = SSv2Dataset(root, annotations, "train", **_options())
    assert dataset.classes == SSV2_CLASSES and len(dataset) == 10
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["label"] == (int(item["video_id"]) - 1000) % len(SSV2_CLASSES)
        assert item["index"] == index
        assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
        assert "flow_labels" not in item


def test_ssv2_subsets_match_exactly(ssv2_tree):
    root, annotations = ssv2_tree
    dataset = SSv2Dataset(root, annotations, "train", **_options())
    assert dataset.subsets == {"temporal": [1], "static": [2, 3]}
    unmatched = dataset.unmatched_subset_names
    assert set(unmatched["temporal"]) == set(TEMPORAL_CLASSES) - {SSV2_CLASSES[1]}
    assert "Moving something and something away from each other" in unmatched["temporal"]
    assert set(unmatched["static"]) == set(STATIC_CLASSES) - set(SSV2_CLASSES[2:4])


def test_ssv2_static_subset_renumbers(ssv2_tree):
    root, annotations = ssv2_tree
    dataset = SSv2Dataset(root, annotations, "val", subset="static", **_options(train=False))
    assert dataset.classes == SSV2_CLASSES[2:4]
    assert dataset.subsets == {"static": [0, 1]}
    assert sorted(dataset.labels) == [0, 0, 1, 1]


def test_ssv2_time_reversed_pairs_follow_the_subset(tmp_path):
    classes = [
        "Closing something",
        "Folding something",
        "Moving something and something away from each other",
        "Opening something",
        "Moving something and something closer to each other",
    ]
    root, annotations = write_ssv2_tree(tmp_path, classes, per_class=1, num_frames=8)
    dataset = SSv2Dataset(root, annotations, "val", **_options(train=False))
    assert dataset.pairs == {0: 3, 3: 0, 2: 4, 4: 2}  # Folding's partner is not a class here
    temporal = SSv2Dataset(root, annotations, "val", subset="temporal", **_options(train=False))
    assert temporal.classes == [classes[2], classes[4]] and temporal.pairs == {0: 1, 1: 0}


def test_ssv2_test_views_differ(ssv2_tree):
    root, annotations = ssv2_tree
    dataset = SSv2Dataset(root, annotations, "val", temporal_views=2, **_options(train=False))
    video = dataset[0]["video"]
    assert video.shape == (6, 3, 4, 32, 32)  # 2 temporal views x 3 crops
    # Numbered frames (20): view 0 shows frames [1, 6, 11, 16], view 1 [3, 8, 13, 18].
    frame_means = video.mean(dim=(1, 3, 4))  # [6, T]
    torch.testing.assert_close(frame_means[0], frame_means[2], atol=0.02, rtol=0)
    assert torch.all(frame_means[3] - frame_means[0] > 0.08)


def test_ssv2_missing_paths_are_named(tmp_path, ssv2_tree):
    root, annotations = ssv2_tree
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SSv2Dataset(tmp_path / "nowhere", annotations, "train", **_options())
    with pytest.raises(FileNotFoundError, match="labels.json"):
        SSv2Dataset(root, tmp_path, "train", **_options())
    (tmp_path / "videos").mkdir()
    with pytest.raises(FileNotFoundError, match="none of the 10 videos"):
        SSv2Dataset(tmp_path / "videos", annotations, "train", **_options())


@pytest.fixture(scope="module")
def kinetics_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinetics")
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    rows = {"train": [], "validate": []}
    frames = numbered_frames(30)
    for i in range(6):
        label = ["abseiling", "air drumming"][i % 2]
        split = "train" if i < 4 else "validate"
        youtube_id, start = f"vid{i:08d}", 10 * i
        rows[split].append(f"{label},{youtube_id},{start},{start + 10},{split},0\n")
        name = f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4"
        # Training videos in class folders, validation videos flat.
        folder = tmp / "videos" / ("train/" + label if split == "train" else "val")
        write_video(folder / name, frames)
    rows["train"].append("air drumming,neverdownloaded,0,10,train,0\n")
    annotations = tmp / "annotations"
    annotations.mkdir()
    for split, lines in rows.items():
        (annotations / f"{split}.csv").write_text(header + "".join(lines))
    return tmp / "videos", annotations


def test_kinetics_labels_layouts_and_missing(kinetics_tree):
    root, annotations = kinetics_tree
    train = KineticsDataset(
        root, annotations, "train", sampling="dense", dense_stride=3, **_options()
    )
    assert train.classes == ["abseiling", "air drumming"]
    assert len(train) == 4 and train.missing == ["air drumming/neverdownloaded_000000_000010.mp4"]
    assert sorted(train.labels) == [0, 0, 1, 1]
    val = KineticsDataset(root, annotations, "val", **_options(train=False, sampling="dense"))
    assert len(val) == 2 and val.labels == [0, 1]
    assert val[1]["video_id"] == "vid00000005_000050_000060"


def test_kinetics_dense_sampling_frames(kinetics_tree):
    root, annotations = kinetics_tree
    dataset = KineticsDataset(
        root, annotations, "val", sampling="dense", dense_stride=3, **_options(train=False)
    )
    frames, views = dataset.read_clips(dataset.samples[0].path)
    # 30 frames, span 10, latest start 20, centre start 10.
    assert views == 1 and frame_numbers(frames) == [10, 13, 16, 19]


def test_kinetics_from_one_csv_reads_each_split_its_rows(tmp_path, kinetics_tree):
    # One file for every split: val read the training rows too, evaluating on training videos.
    root, annotations = kinetics_tree
    both = tmp_path / "kinetics400.csv"
    train_csv, val_csv = (annotations / name for name in ("train.csv", "validate.csv"))
    both.write_text(train_csv.read_text() + val_csv.read_text().split("\n", 1)[1])
    train = KineticsDataset(root, both, "train", **_options())
    val = KineticsDataset(root, both, "val", **_options(train=False))
    assert len(train) == 4 and len(val) == 2 and val.classes == train.classes
    assert {s.path for s in train.samples}.isdisjoint(s.path for s in val.samples)
    with pytest.raises(ValueError, match=r"train.csv has no val rows \(its split column\)"):
        KineticsDataset(root, train_csv, "val", **_options(train=False))


def test_kinetics_missing_csv_is_named(tmp_path, kinetics_tree):
    root, _ = kinetics_tree
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        KineticsDataset(root, tmp_path, "train", **_options())


@pytest.fixture(scope="module")
def list_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videolist")
    frames = numbered_frames(12)
    for name in ("a.mp4", "b.webm", "with space.mp4", "d.webm"):
        write_video(tmp / "clips" / name, frames)
    (tmp / "train.txt").write_text(
        "clips/a.mp4 jump\nclips/b.webm sit\n\nclips/with space.mp4 jump\n"
    )
    (tmp / "val.csv").write_text("path,label\nclips/d.webm,1\nclips/a.mp4,0\n")
    (tmp / "classes.txt").write_text("jump\nsit\n")
    return tmp


def test_video_list_names_and_spaces(list_tree):
    dataset = VideoListDataset(list_tree / "train.txt", **_options())
    assert dataset.classes == ["jump", "sit"]
    assert dataset.labels == [0, 1, 0]
    assert dataset[2]["video_id"] == "clips/with space.mp4"


def test_video_list_csv_indices_with_class_list(list_tree):
    dataset = VideoListDataset(
        list_tree / "val.csv", class_list=list_tree / "classes.txt", **_options(train=False)
    )
    assert dataset.classes == ["jump", "sit"] and dataset.labels == [1, 0]
    assert dataset[0]["video"].shape == (3, 3, 4, 32, 32)


def test_video_list_unknown_label(list_tree, tmp_path):
    (tmp_path / "bad.txt").write_text(f"{list_tree}/clips/a.mp4 fly\n")
    with pytest.raises(ValueError, match="fly"):
        VideoListDataset(tmp_path / "bad.txt", class_list=list_tree / "classes.txt", **_options())


def _list_config(tmp, **data):
    return Config(
        model=ModelConfig(num_frames=4),
        data=DataConfig(
            dataset="videolist",
            annotations=str(tmp / "train.txt"),
            val_annotations=str(tmp / "val.csv"),
            crop_size=32,
            train_short_side=(36, 40),
            eval_short_side=32,
            num_workers=0,
            **data,
        ),
    )


def test_build_dataset_from_config(list_tree):
    cfg = _list_config(list_tree, test_temporal_views=2, test_spatial_crops=1)
    train = build_dataset(cfg, "train", flow_labels=True, patch_size=16)
    item = train[0]
    assert item["video"].shape == (3, 4, 32, 32)
    assert item["flow_labels"].shape == (3, 4) and item["flow_labels"].dtype == torch.int64
    val = build_dataset(cfg, "val", flow_labels=False, patch_size=16)
    assert val.classes == ["jump", "sit"] and val[0]["video"].shape == (2, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="training split"):
        build_dataset(cfg, "val", flow_labels=True, patch_size=16)


def test_folders_of_class_folders_in_place_of_lists(tmp_path, capsys):
    """train/<class>/<video> and val/<class>/<video>, as ImageFolder lays out images: each video
    its folder's class; frame folders in place of videos; other files and hidden ones aside."""
    from timematters.data.check import check_dataset

    for split, names in {"train": ["a.mp4", "b.webm"], "val": ["c.mp4"]}.items():
        for label in ("jump", "sit"):
            for name in names:
                write_video(tmp_path / split / label / name, numbered_frames(12))
    write_frame_folder(tmp_path / "train" / "sit" / "frames_of_d", numbered_frames(12))
    (tmp_path / "train" / "jump" / "notes.txt").write_text("shot on Tuesday")
    (tmp_path / "train" / ".cache").mkdir()
    cfg = _list_config(tmp_path)
    cfg.data.annotations, cfg.data.val_annotations = str(tmp_path / "train"), str(tmp_path / "val")
    train = build_dataset(cfg, "train")
    assert train.classes == ["jump", "sit"] and train.labels == [0, 0, 1, 1, 1]
    assert train.samples[4].path == str(tmp_path / "train" / "sit" / "frames_of_d")
    val = build_dataset(cfg, "val")
    assert val.labels == [0, 1] and val[0]["video"].shape[-4:] == (3, 4, 32, 32)
    assert check_dataset(cfg) == 0, capsys.readouterr().out
    # A folder of videos with no class folders is said as such.
    cfg.data.annotations = str(tmp_path / "train" / "jump")
    with pytest.raises(ValueError, match="no class folders of videos are in it"):
        build_dataset(cfg, "train")


@pytest.mark.parametrize("step, directions", [((2, 0), {1, 8}), ((0, 2), {2, 3})])
def test_flow_labels_of_known_motion(tmp_path, step, directions):
    # A 16 px textured square moving right (classes 1/8 around 0°) or down (2/3 around 90°).
    write_video(tmp_path / "move.mp4", moving_square_frames(8, 64, 64, step=step))
    (tmp_path / "list.txt").write_text("move.mp4 0\n")
    labeller = functools.partial(clip_flow_labels, patch_size=16)
    dataset = VideoListDataset(
        tmp_path / "list.txt",
        transform=TrainTransform(crop_size=64, short_side=(64, 64), randaugment_ops=0),
        train=True,
        num_frames=8,
        flow_labels=labeller,
    )
    item = dataset[0]
    labels = item["flow_labels"]
    assert labels.shape == (7, 16)
    torch.testing.assert_close(labels, labeller(item["video"]))  # from the final crop
    # Axis-aligned motion splits between the two bins either side of the axis (REFERENCE.md).
    moving = labels[labels > 0]
    counts = torch.bincount(moving, minlength=9)
    assert set(torch.topk(counts, 2).indices.tolist()) == directions


def test_annotations_json_is_parsed_not_guessed(tmp_path):
    # A template that is not in labels.json fails with the name, never maps to a wrong class.
    root, annotations = write_ssv2_tree(tmp_path, SSV2_CLASSES[:2], per_class=1)
    entries = json.loads((annotations / "train.json").read_text())
    entries[0]["template"] = "Approaching [something] with your phone"
    (annotations / "train.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="with your phone"):
        SSv2Dataset(root, annotations, "train", **_options())


def test_numbered_frames_survive_coding(tmp_path):
    path = write_video(tmp_path / "n.webm", numbered_frames(20))
    assert frame_numbers(open_video(path).get_frames(np.arange(20))) == list(range(20))


def test_spawned_workers_make_batches_with_flow_labels(list_tree):
    # Spawn pickles the dataset, transform and flow labeller: all must travel to the worker.
    train = build_dataset(_list_config(list_tree), "train", flow_labels=True, patch_size=16)
    loader = DataLoader(
        train,
        batch_size=3,
        num_workers=1,
        multiprocessing_context="spawn",
        collate_fn=collate_videos,
    )
    batch = next(iter(loader))
    assert batch["video"].shape == (3, 3, 4, 32, 32) and batch["flow_labels"].shape == (3, 3, 4)
    assert batch["dropped"] == []


def test_ssv2_test_split_from_answers(tmp_path):
    root, annotations = write_ssv2_tree(tmp_path, SSV2_CLASSES[:2], per_class=1)
    (annotations / "test.json").write_text(json.dumps([{"id": "1002"}, {"id": "1003"}]))
    with pytest.raises(FileNotFoundError, match="test-answers.csv"):
        SSv2Dataset(root, annotations, "test", **_options(train=False))
    answers = f"1002;{SSV2_CLASSES[1]}\n1003;{SSV2_CLASSES[0]}\n"
    (annotations / "test-answers.csv").write_text(answers)
    dataset = SSv2Dataset(root, annotations, "test", **_options(train=False))
    assert [s.video_id for s in dataset.samples] == ["1002", "1003"] and dataset.labels == [1, 0]


def test_loader_workers_are_capped_at_the_cpus_each_process_may_use(monkeypatch):
    # A preset's 8 workers per GPU on a 2-core laptop: 2; under torchrun, the node's CPUs shared.
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert [loader_workers(n) for n in (0, 2, 8)] == [0, 2, 4]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers(8) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_workers(8) == 1  # never 0 workers where some were asked for: one each
