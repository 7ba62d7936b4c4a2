"""Optical-flow labels for the flow loss (paper Eq. 9-10)."""

from timematters.flow.farneback import (
    batch_flow_labels,
    configure_opencv_threads,
    farneback_torch,
)
from timematters.flow.labels import (
    FarnebackParams,
    clip_flow_labels,
    clip_to_grey,
    farneback_opencv,
    flow_to_direction_labels,
)

__all__ = [
    "FarnebackParams",
    "batch_flow_labels",
    "clip_flow_labels",
    "clip_to_grey",
    "configure_opencv_threads",
    "farneback_opencv",
    "farneback_torch",
    "flow_to_direction_labels",
]
