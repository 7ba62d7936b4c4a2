"""Optical-flow labels for the flow loss (paper Eq. 9-10)."""

from timematters.config import FarnebackParams
from timematters.flow.farneback import configure_opencv_threads, consecutive_flows, farneback_torch
from timematters.flow.labeller import FlowLabeller, batch_flow_labels, clip_flow_labels
from timematters.flow.labels import (
    clip_to_grey,
    farneback_opencv,
    flow_to_direction_labels,
    video_to_grey,
)

__all__ = [
    "FarnebackParams",
    "FlowLabeller",
    "batch_flow_labels",
    "clip_flow_labels",
    "clip_to_grey",
    "configure_opencv_threads",
    "consecutive_flows",
    "farneback_opencv",
    "farneback_torch",
    "flow_to_direction_labels",
    "video_to_grey",
]
