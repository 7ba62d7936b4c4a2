"""Video data: decoding, frame sampling, clip transforms, datasets and bad-video accounting."""

from timematters.data.build import build_dataset, build_flow_labeller, build_transform
from timematters.data.collate import (
    BadVideo,
    BadVideoLog,
    TooManyBadVideos,
    batch_size,
    collate_videos,
)
from timematters.data.dataset import VideoDataset, VideoSample
from timematters.data.kinetics import KineticsDataset
from timematters.data.sampling import (
    sample_clip_indices,
    sample_dense_indices,
    sample_segment_indices,
)
from timematters.data.ssv2 import SSv2Dataset
from timematters.data.subsets import STATIC_CLASSES, TEMPORAL_CLASSES, match_subset
from timematters.data.transforms import EvalTransform, TrainTransform
from timematters.data.video import DecoderUnavailable, VideoDecodeError, open_video
from timematters.data.videolist import VideoListDataset

__all__ = [
    "STATIC_CLASSES",
    "TEMPORAL_CLASSES",
    "BadVideo",
    "BadVideoLog",
    "DecoderUnavailable",
    "EvalTransform",
    "KineticsDataset",
    "SSv2Dataset",
    "TooManyBadVideos",
    "TrainTransform",
    "VideoDataset",
    "VideoDecodeError",
    "VideoListDataset",
    "VideoSample",
    "batch_size",
    "build_dataset",
    "build_flow_labeller",
    "build_transform",
    "collate_videos",
    "match_subset",
    "open_video",
    "sample_clip_indices",
    "sample_dense_indices",
    "sample_segment_indices",
]
