"""The TIME losses: each a module owning its head and returning named terms."""

from timematters.losses.ce import CrossEntropyLoss
from timematters.losses.debias import DebiasLoss
from timematters.losses.flow import FlowLoss
from timematters.losses.image import PatchDebiasLoss, SpatialOrderLoss, shuffle_patches
from timematters.losses.inputs import LossInputs
from timematters.losses.mixing import Mix, mix_clips, mixed_cross_entropy
from timematters.losses.objective import (
    Objective,
    ObjectiveOutput,
    TimeModel,
    build_objective,
    objective_for_model,
)
from timematters.losses.order import OrderLoss
from timematters.losses.shuffle import sample_frame_permutations, shuffle_frames

__all__ = [
    "CrossEntropyLoss",
    "DebiasLoss",
    "FlowLoss",
    "LossInputs",
    "Mix",
    "Objective",
    "ObjectiveOutput",
    "OrderLoss",
    "PatchDebiasLoss",
    "SpatialOrderLoss",
    "TimeModel",
    "build_objective",
    "mix_clips",
    "mixed_cross_entropy",
    "objective_for_model",
    "sample_frame_permutations",
    "shuffle_frames",
    "shuffle_patches",
]
