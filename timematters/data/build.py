"""From the experiment config to a dataset: transforms, sampling, decoder and flow labels.

The one place that reads ``cfg.data`` to build datasets; the datasets themselves take plain
arguments. Cross-field rules of the config are checked once, by ``config.validate``. The modules
that need torchvision (transforms, images, the benchmark's clips) are imported when a dataset that
uses them is built, so importing this module (as every command does) stays cheap.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from torch.utils.data import DataLoader, Dataset

from timematters.config import OFFICIAL_DATASETS, Config, ConfigError, DataConfig
from timematters.data.collate import collate_videos
from timematters.data.diving48 import Diving48Dataset
from timematters.data.hmdb51 import HMDB51Dataset
from timematters.data.jester import TwentyBNDataset
from timematters.data.kinetics import KineticsDataset
from timematters.data.samplers import Shard
from timematters.data.ssv2 import SSv2Dataset
from timematters.data.subsets import load_groups
from timematters.data.ucf101 import UCF101Dataset
from timematters.data.videolist import VideoListDataset, classes_of_list
from timematters.flow.labeller import FlowLabeller

SPLITS = ("train", "val", "test")


def loader_workers(requested: int) -> int:
    """``data.num_workers``, at most the CPUs this process may use, shared by the processes of
    this node (torchrun's ``LOCAL_WORLD_SIZE``): the presets' 8 per GPU would otherwise start
    more decoders than a laptop has cores, which slows loading down and makes torch warn. The
    batches do not depend on the count (their random draws are the step's), so it is free to cap.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    per_process = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return min(requested, per_process)


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: SIGINT and SIGTERM are the main process's to handle.
    Ctrl-C and Slurm's scancel or preemption signal every process of the job; the main process
    then stops after its step with a checkpoint and ends its workers itself, but a worker killed
    by the signal would crash it first (torch checks its workers on SIGCHLD). A worker whose
    main process is gone still leaves: torch's workers watch their parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_eval_loader(
    cfg: Config, dataset: Dataset, *, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """``dataset``'s evaluation batches, in order: under torchrun this process's share (every
    world_size-th clip, no padding, so no clip counts twice), decoded in ``data.num_workers``
    workers."""
    return DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        sampler=Shard(len(dataset), rank, world_size),
        num_workers=loader_workers(cfg.data.num_workers),
        collate_fn=collate_videos,
        worker_init_fn=ignore_stop_signals,
    )


def build_transform(data: DataConfig, train: bool) -> Callable:
    from timematters.data.transforms import EvalTransform, TrainTransform

    _check_sizes(data, train)
    if train:
        return TrainTransform(
            crop_size=data.crop_size,
            short_side=data.train_short_side,
            randaugment_ops=data.randaugment_ops,
            randaugment_magnitude=data.randaugment_magnitude,
            randaugment_backend=data.randaugment_backend,
            randaugment_magnitude_std=data.randaugment_magnitude_std,
            hflip=data.hflip,
            mean=data.mean,
            std=data.std,
            random_erase=data.random_erase,
        )
    return EvalTransform(
        crop_size=data.crop_size,
        short_side=data.eval_short_side,
        num_crops=data.test_spatial_crops,
        mean=data.mean,
        std=data.std,
    )


def _check_sizes(data: DataConfig, train: bool) -> None:
    """Crops must fit in the resized frames; the fix keeps the released ratios (224 of 256-320)."""
    crop = data.crop_size
    low, high = data.train_short_side
    if train and not crop <= low <= high:
        fix = [max(crop, round(crop * 256 / 224)), max(crop, round(crop * 320 / 224))]
        raise ConfigError(
            f"data.crop_size={crop} does not fit data.train_short_side=[{low}, {high}] (frames "
            f"are resized to a short side in that range, then cropped): set "
            f"data.train_short_side=[{fix[0]}, {fix[1]}]"
        )
    if crop > data.eval_short_side:
        raise ConfigError(
            f"data.crop_size={crop} is larger than data.eval_short_side={data.eval_short_side} "
            f"(test frames are resized to that short side, then cropped): set "
            f"data.eval_short_side={crop}"
        )


def build_flow_labeller(cfg: Config, patch_size: int, frame_step: int = 1) -> FlowLabeller:
    """The config's flow labeller: clip -> flow labels [T-1, S] (and ``.batch`` on a device);
    ``frame_step``: the model's frames per token frame (its tubelet)."""
    if cfg.data.crop_size % patch_size:
        raise ValueError(f"data.crop_size {cfg.data.crop_size} is not a multiple of {patch_size}")
    return FlowLabeller.from_config(
        cfg.flow, patch_size=patch_size, mean=cfg.data.mean, std=cfg.data.std, frame_step=frame_step
    )


def build_dataset(
    cfg: Config,
    split: str,
    *,
    flow_labels: bool = False,
    patch_size: int = 1,
    classes: list[str] | None = None,
    frame_step: int = 1,
) -> Dataset:
    """The dataset of ``split`` (train / val / test) described by ``cfg.data``.

    ``flow_labels``: the flow loss is on (training). Labels are then made in the DataLoader workers when
    ``flow.backend`` is opencv (for the torch backend the trainer computes them on the device),
    per ``patch_size`` patch and every ``frame_step``-th frame (the model's token grid).
    ``classes``: a video list's class names in order (a trained model's), when no
    ``data.class_list`` names them. With ``data.subsets``, its subsets (and pairs) replace the
    dataset's own.
    """
    labeller = None
    if flow_labels and cfg.flow.backend == "opencv":
        labeller = build_flow_labeller(cfg, patch_size, frame_step)
    dataset = _build(cfg, split, flow_labels, labeller, classes)
    if cfg.data.subsets:
        groups = load_groups(cfg.data.subsets, dataset.classes)
        dataset.subsets = groups.subsets
        if groups.pairs:
            dataset.pairs = groups.pairs
    return dataset


def _build(
    cfg: Config,
    split: str,
    flow_labels: bool,
    labeller: FlowLabeller | None,
    classes: list[str] | None,
) -> Dataset:
    data = cfg.data
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    train = split == "train"
    if flow_labels and not train:
        raise ValueError("flow labels are made for the training split only")
    if data.dataset == "synthetic":
        from timematters.data.synthetic import SyntheticVideoDataset

        syn = data.synthetic
        return SyntheticVideoDataset(
            split,
            syn.num_train if train else syn.num_test,
            img_size=data.crop_size,
            num_frames=cfg.model.num_frames,
            spurious_rate=syn.spurious_rate,
            seed=syn.seed,
            object_contrast=syn.object_contrast,
            flow_labels=labeller,
            mean=data.mean,
            std=data.std,
            cache=syn.cache,
        )
    if data.dataset == "imagenet9":
        return _imagenet9_dataset(data, train)
    options = dict(
        transform=build_transform(data, train),
        train=train,
        num_frames=cfg.model.num_frames,
        sampling=data.sampling,
        dense_stride=data.dense_stride,
        temporal_views=data.test_temporal_views,
        decoder=data.decoder,
        flow_labels=labeller,
        repeats=data.repeated_augmentation if train else 1,
    )
    if data.dataset in OFFICIAL_DATASETS:
        root = _existing_path("data.root", data.root, "folder", _VIDEO_FOLDERS[data.dataset])
        kind = "folder or file" if data.dataset == "kinetics" else "folder"
        annotations = _existing_path(
            "data.annotations", data.annotations, kind, OFFICIAL_DATASETS[data.dataset]
        )
        if data.dataset == "ssv2":
            return SSv2Dataset(root, annotations, split, subset=data.subset, **options)
        if data.dataset == "kinetics":
            return KineticsDataset(root, annotations, split, **options)
        if data.dataset == "diving48":
            return Diving48Dataset(root, annotations, split, **options)
        if data.dataset == "ucf101":
            return UCF101Dataset(root, annotations, split, fold=data.fold, **options)
        if data.dataset == "hmdb51":
            return HMDB51Dataset(root, annotations, split, fold=data.fold, **options)
        return TwentyBNDataset(root, annotations, split, dataset=data.dataset, **options)
    if data.dataset == "videolist":
        return _video_list_dataset(data, split, classes, options)
    raise ValueError(f"unknown dataset {data.dataset!r}")


_VIDEO_FOLDERS = {
    "ssv2": "the folder of the <id>.webm videos (or <id>/ frame folders, data.decoder=frames)",
    "kinetics": "the folder of the videos (in class folders or flat)",
    "diving48": "the folder of the <vid_name>.mp4 videos (the release's rgb/)",
    "ucf101": "the UCF-101 folder of the class folders of .avi videos",
    "hmdb51": "the folder of the class folders of .avi videos",
    "jester": "the 20bn-jester-v1 folder of <id>/ frame folders (with data.decoder=frames)",
    "ssv1": "the 20bn-something-something-v1 folder of <id>/ frame folders (data.decoder=frames)",
}


def _existing_path(
    key: str, path: str, kind: Literal["folder", "file", "folder or file"], what: str
) -> str:
    """``path`` when it is an existing ``kind``; else an error that names the config key.

    Checked here, where the key is known: the datasets take plain paths and can name only those.
    """
    found = Path(path)
    exists = {"folder": found.is_dir, "file": found.is_file, "folder or file": found.exists}[kind]
    if exists():
        return path
    if found.exists():
        actual, wanted = ("a file", "a folder") if found.is_file() else ("a folder", "a file")
        raise FileNotFoundError(f"{key}={path} is {actual}, not {wanted}; set {key} to {what}")
    # A relative path is looked up from the working folder, which is often the mistake.
    where = "" if found.is_absolute() else f" in {Path.cwd()}"
    raise FileNotFoundError(f"{key}={path}: no such {kind}{where}; set {key} to {what}")


_LIST_FORMAT = (
    "'path label' per line, a CSV with the header path,label, or a folder of class folders"
)


def _video_list_dataset(
    data: DataConfig, split: str, classes: list[str] | None, options: dict
) -> VideoListDataset:
    """The split's video list. Its classes, in order: the class list file's (read by the dataset,
    so that a label missing from it is reported with the file's name), a model's ``classes``, or
    the training list's (an evaluation list must number the classes as training did)."""
    list_file = _video_list_file(data, split)
    root = data.root and _existing_path(
        "data.root", data.root, "folder", "the folder the list's paths are relative to"
    )
    if data.class_list:
        class_list = _existing_path(
            "data.class_list", data.class_list, "file", "a file with one class name per line"
        )
        return VideoListDataset(list_file, root=root, class_list=class_list, **options)
    if classes:
        return VideoListDataset(
            list_file, root=root, classes=classes, classes_from="the model", **options
        )
    if split == "train" or not data.annotations:
        return VideoListDataset(list_file, root=root, **options)
    training_list = _existing_path(
        "data.annotations",
        data.annotations,
        "folder or file",
        f"the training list ({_LIST_FORMAT})",
    )
    return VideoListDataset(
        list_file,
        root=root,
        classes=classes_of_list(training_list),
        classes_from=f"the training list {training_list}",
        **options,
    )


def build_variation_dataset(data: DataConfig, variation: str, classes: list[str] | None = None):
    """One ImageNet-9 test variation, ``<root>/<variation>/val``, with the evaluation transform."""
    from timematters.data.imagenet9 import ImageEvalTransform, ImageFolderDataset

    transform = ImageEvalTransform(data.crop_size, data.eval_short_side, data.mean, data.std)
    return ImageFolderDataset(Path(data.root) / variation / "val", transform, classes)


def _imagenet9_dataset(data: DataConfig, train: bool) -> Dataset:
    """The training folder, or the ``test_variation`` folder for the val / test splits."""
    from timematters.data.imagenet9 import (
        ImageFolderDataset,
        ImageTrainTransform,
        check_same_classes,
    )

    in9 = data.imagenet9
    if not train:
        return build_variation_dataset(data, in9.test_variation)
    transform = ImageTrainTransform(
        crop_size=data.crop_size,
        min_scale=in9.min_crop_scale,
        hflip=data.hflip,
        randaugment_ops=data.randaugment_ops,
        randaugment_magnitude=data.randaugment_magnitude,
        randaugment_backend=data.randaugment_backend,
        randaugment_magnitude_std=data.randaugment_magnitude_std,
        mean=data.mean,
        std=data.std,
        random_erase=data.random_erase,
    )
    training = Path(data.root) / in9.train_dir
    if not training.is_dir():  # the challenge's download holds test variations only
        raise FileNotFoundError(
            f"no training images at {training} (data.imagenet9.train_dir={in9.train_dir}): put "
            "ImageNet-9's training folders there, or name their folder with "
            "data.imagenet9.train_dir"
        )
    # Every test variation there must share its classes, found now rather than after training.
    variations = [Path(data.root) / v / "val" for v in (in9.test_variation, *in9.variations)]
    check_same_classes(training, [folder for folder in variations if folder.is_dir()])
    return ImageFolderDataset(training, transform)


def _video_list_file(data: DataConfig, split: str) -> str:
    if split == "train":
        key, path, clips, name = "data.annotations", data.annotations, "training", "training"
    else:
        key, path = "data.val_annotations", data.val_annotations
        clips, name = f"evaluation ({split} split)", "evaluation"
    if not path:
        raise ValueError(
            f"the videolist dataset needs {key} (a list file) for its {clips} clips: set {key}=LIST"
        )
    return _existing_path(key, path, "folder or file", f"the {name} list ({_LIST_FORMAT})")
