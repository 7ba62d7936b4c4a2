"""Video data: decoding, frame sampling, clip transforms, datasets and bad-video accounting.

The names below load on first use (``timematters.data.build_dataset`` imports the dataset
modules, PyAV and torchvision's transforms only then).
"""

from importlib import import_module

_NAMES = {
    "build_dataset": "build",
    "build_flow_labeller": "build",
    "build_transform": "build",
    "BadVideo": "collate",
    "BadVideoLog": "collate",
    "TooManyBadVideos": "collate",
    "batch_size": "collate",
    "collate_videos": "collate",
    "VideoDataset": "dataset",
    "VideoSample": "dataset",
    "Diving48Dataset": "diving48",
    "HMDB51Dataset": "hmdb51",
    "TwentyBNDataset": "jester",
    "KineticsDataset": "kinetics",
    "sample_clip_indices": "sampling",
    "sample_dense_indices": "sampling",
    "sample_segment_indices": "sampling",
    "SSv2Dataset": "ssv2",
    "STATIC_CLASSES": "subsets",
    "TEMPORAL_CLASSES": "subsets",
    "match_subset": "subsets",
    "EvalTransform": "transforms",
    "TrainTransform": "transforms",
    "UCF101Dataset": "ucf101",
    "DecoderUnavailable": "video",
    "VideoDecodeError": "video",
    "open_video": "video",
    "VideoListDataset": "videolist",
}


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(f"timematters.data.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'timematters.data' has no attribute {name!r}")


__all__ = sorted(_NAMES)
