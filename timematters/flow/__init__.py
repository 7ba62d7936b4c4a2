"""Optical-flow labels for the flow loss (paper Eq. 9-10)."""

from timematters.flow.labels import (
    FarnebackParams,
    clip_flow_labels,
    clip_to_grey,
    farneback_opencv,
    flow_to_direction_labels,
)

__all__ = [
    "FarnebackParams",
    "clip_flow_labels",
    "clip_to_grey",
    "farneback_opencv",
    "flow_to_direction_labels",
]
