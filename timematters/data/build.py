"""From the experiment config to a dataset: transforms, sampling, decoder and flow labels."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from timematters.config import Config, DataConfig
from timematters.data.kinetics import KineticsDataset
from timematters.data.ssv2 import SSv2Dataset
from timematters.data.transforms import EvalTransform, TrainTransform
from timematters.data.videolist import (
    VideoListDataset,
    read_class_list,
    read_video_list,
    resolve_labels,
)
from timematters.flow import clip_flow_labels
from timematters.flow.labels import farneback_params

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def build_transform(data: DataConfig, train: bool) -> Callable:
    if train:
        return TrainTransform(
            crop_size=data.crop_size,
            short_side=data.train_short_side,
            randaugment_ops=data.randaugment_ops,
            randaugment_magnitude=data.randaugment_magnitude,
            hflip=data.hflip,
            mean=data.mean,
            std=data.std,
        )
    return EvalTransform(
        crop_size=data.crop_size,
        short_side=data.eval_short_side,
        num_crops=data.test_spatial_crops,
        mean=data.mean,
        std=data.std,
    )


def build_flow_labeller(cfg: Config, patch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """clip [C, T, H, W] -> flow labels [T-1, S], with the config's Farnebäck and threshold.

    A ``functools.partial`` of a module function, so spawned DataLoader workers can pickle it.
    """
    if cfg.data.crop_size % patch_size:
        raise ValueError(f"data.crop_size {cfg.data.crop_size} is not a multiple of {patch_size}")
    flow = cfg.flow
    params = farneback_params(flow)
    return functools.partial(
        clip_flow_labels,
        patch_size=patch_size,
        params=params,
        threshold=flow.threshold,
        relative_fraction=flow.relative_fraction,
        absolute_tau=flow.absolute_tau,
        mean=cfg.data.mean,
        std=cfg.data.std,
    )


def build_dataset(cfg: Config, split: str, flow_labels: bool, patch_size: int) -> Dataset:
    """The dataset of ``split`` (train / val / test) described by ``cfg.data``.

    ``flow_labels``: the flow loss is on. Labels are then made in the DataLoader workers when
    ``flow.backend`` is opencv (for the torch backend the trainer computes them on the device).
    """
    data = cfg.data
    if data.dataset == "synthetic":
        from timematters.data.synthetic import build_synthetic_dataset

        return build_synthetic_dataset(cfg, split, flow_labels, patch_size)
    if data.dataset == "imagenet9":
        from timematters.data.imagenet9 import build_imagenet9_dataset

        return build_imagenet9_dataset(cfg, split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    train = split == "train"
    if flow_labels and not train:
        raise ValueError("flow labels are made for the training split only")
    if data.dataset == "ssv2" and data.hflip:
        log.warning("data.hflip is on for SSv2, whose left/right class pairs flipping confuses")
    if data.subset != "all" and data.dataset != "ssv2":
        raise ValueError(f"data.subset={data.subset!r} applies to ssv2 only")
    if data.dataset in ("ssv2", "kinetics") and not (data.root and data.annotations):
        raise ValueError(f"the {data.dataset} dataset needs data.root and data.annotations")
    options = dict(
        transform=build_transform(data, train),
        train=train,
        num_frames=cfg.model.num_frames,
        sampling=data.sampling,
        dense_stride=data.dense_stride,
        temporal_views=data.test_temporal_views,
        decoder=data.decoder,
        flow_labels=(
            build_flow_labeller(cfg, patch_size)
            if flow_labels and cfg.flow.backend == "opencv"
            else None
        ),
    )
    if data.dataset == "ssv2":
        return SSv2Dataset(data.root, data.annotations, split, subset=data.subset, **options)
    if data.dataset == "kinetics":
        return KineticsDataset(data.root, data.annotations, split, **options)
    if data.dataset == "videolist":
        return VideoListDataset(
            _video_list_file(data, split),
            root=data.root,
            classes=_video_list_classes(data),
            **options,
        )
    raise ValueError(f"unknown dataset {data.dataset!r}")


def _video_list_file(data: DataConfig, split: str) -> str:
    path = data.annotations if split == "train" else data.val_annotations
    if not path:
        key = "data.annotations" if split == "train" else "data.val_annotations"
        raise ValueError(f"the videolist dataset needs {key} (a list file) for the {split} split")
    return path


def _video_list_classes(data: DataConfig) -> list[str] | None:
    """The class list file's names, else the training list's classes (None: from the list read)."""
    if data.class_list:
        return read_class_list(data.class_list)
    if not data.annotations:
        return None
    labels = [label for _, label in read_video_list(data.annotations)]
    return resolve_labels(labels, None)[1]
