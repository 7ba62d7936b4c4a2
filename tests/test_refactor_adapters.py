"""The logits-only adapters (a user's module, an HF classifier of another architecture) share one
base: tokens [B, 1, 1, K], sizes that match them, and what reports say about them unchanged."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from timematters.backbones.adapters.base import LogitsOnlyAdapter
from timematters.backbones.adapters.hf import HFClassifier
from timematters.backbones.adapters.module import ModuleAdapter
from timematters.backbones.protocol import CAPABILITIES
from timematters.engine.model import describe_model

K = 5


class _Pooling(nn.Module):
    num_classes = K

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, K)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc(video.mean(dim=(2, 3, 4)))


class _FakeHFClassifier(nn.Module):
    """What HFClassifier reads of a transformers model: its config and ``.logits``."""

    def __init__(self, num_frames: int = 4):
        super().__init__()
        self.config = SimpleNamespace(
            model_type="fancy", num_labels=K, image_size=32, num_frames=num_frames, id2label={}
        )
        self.fc = nn.Linear(3, K)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:  # [B, T, C, H, W]
        return SimpleNamespace(logits=self.fc(pixel_values.mean(dim=(1, 3, 4))))


def _adapters() -> list[LogitsOnlyAdapter]:
    hf = HFClassifier(_FakeHFClassifier(), mean=(0.5,) * 3, std=(0.5,) * 3, source="hf:fake")
    return [ModuleAdapter(_Pooling(), source="mine:pooling", num_frames=0), hf]


@pytest.mark.parametrize("adapter", _adapters(), ids=["module", "hf"])
def test_logits_only_tokens_match_their_sizes(adapter):
    video = torch.randn(2, 3, 4, 24, 24)  # any frame size
    tokens = adapter.forward_features(video)
    assert tokens.patches.shape == (2, 1, 1, K)
    assert (adapter.grid, adapter.embed_dim, adapter.token_frames) == ((1, 1), K, 1)
    assert tokens.patches.shape[2:] == (adapter.grid[0] * adapter.grid[1], adapter.embed_dim)
    assert torch.equal(adapter(video), tokens.cls)
    # The same reason for every token-based capability, in the order reports have always shown.
    assert list(adapter.unsupported) == ["order_probe", "gradcam", "flow", "order"]
    assert set(adapter.unsupported) == set(CAPABILITIES)
    assert len(set(adapter.unsupported.values())) == 1
    with pytest.raises(NotImplementedError):
        adapter.forward_features(video, return_blocks=True)


def test_reported_frame_size_is_unchanged():
    module, hf = _adapters()
    assert describe_model(module)["frame_size"] == 0  # "any", as before
    assert describe_model(hf)["frame_size"] == 32  # the config's image size
    assert describe_model(module)["num_frames"] == 0


def test_declared_clip_length_is_still_checked():
    hf = _adapters()[1]
    with pytest.raises(ValueError, match="takes 4-frame clips, got 3"):
        hf(torch.randn(1, 3, 3, 32, 32))


def test_module_without_declared_classes_has_width_zero():
    plain = ModuleAdapter(nn.Sequential(nn.Flatten(), nn.LazyLinear(K)), source="s", num_frames=0)
    assert (plain.embed_dim, plain.num_classes, plain.grid) == (0, 0, (1, 1))


@pytest.mark.parametrize("name", ["r3d_18", "mvit_v2_s"])
def test_torchvision_limits_are_named_capabilities(name):
    pytest.importorskip("torchvision")
    from timematters.backbones.adapters.torchvision import load_torchvision_model

    model = load_torchvision_model(name, num_classes=K)
    assert set(model.unsupported) <= set(CAPABILITIES)
