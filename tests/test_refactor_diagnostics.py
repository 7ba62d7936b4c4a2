"""Helpers shared by ``diagnose`` and ``predict`` after the s25 refactor: class names, pictures
of normalised clips, GradCAM's stated limits, and where ``BackgroundsResult`` lives."""

import numpy as np
import torch
from einops import rearrange
from torch import nn

from timematters.backbones.adapters.module import ModuleAdapter
from timematters.diagnostics.gradcam import gradcam_unsupported
from timematters.diagnostics.plots import denormalise
from timematters.engine.model import class_names_of


def test_class_names_fall_back_to_indices():
    named = nn.Linear(1, 2)
    named.class_names = ["a", "b"]
    assert class_names_of(named) == ["a", "b"]
    assert class_names_of(named, num_classes=5) == ["a", "b"]  # its own names win
    counted = nn.Linear(1, 3)
    counted.num_classes = 3
    assert class_names_of(counted) == ["0", "1", "2"]
    assert class_names_of(counted, num_classes=2) == ["0", "1"]
    assert class_names_of(nn.Linear(1, 1)) == []


def test_denormalise_matches_the_pictures_drawn_before():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    clips = torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    m, s = torch.tensor(mean).view(3, 1, 1, 1), torch.tensor(std).view(3, 1, 1, 1)
    batch = rearrange((clips * s + m).clamp(0, 1), "n c t h w -> n t h w c").numpy()
    one = (clips[0] * s + m).clamp(0, 1).permute(1, 2, 3, 0).numpy()
    assert np.array_equal(denormalise(clips.numpy(), mean, std), batch)
    assert np.array_equal(denormalise(clips[0].numpy(), mean, std), one)


def test_gradcam_unsupported_reads_the_stated_reason():
    assert gradcam_unsupported(nn.Linear(1, 1)) == ""
    adapter = ModuleAdapter(nn.Flatten(), source="s", num_frames=0)
    assert "gives logits only" in gradcam_unsupported(adapter)


def test_backgrounds_result_lives_next_to_its_table():
    from timematters.engine import backgrounds, model

    assert model.BackgroundsResult is backgrounds.BackgroundsResult
    result = backgrounds.BackgroundsResult({"original": 90.0})
    assert result.metrics() == {"original": 90.0}
    assert "| Original ↑ | 90.0 |" in result.table("ours")
