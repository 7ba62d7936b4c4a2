"""Image ViT / DeiT: timm parity (weights and logits), the one-frame token contract, resizing."""

import pytest
import torch

from timematters.backbones import create_backbone
from timematters.backbones.pretrained import load_pretrained

timm = pytest.importorskip("timm")

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


def _timm_vit(name: str = "vit_tiny_patch16_224", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    # Random, not initial, values everywhere (timm starts biases and the CLS token at ~0).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_a_timm_vit_file_and_matches_its_logits_and_tokens(tmp_path, suffix):
    reference = _timm_vit(num_classes=5, **TINY)
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)

    model = create_backbone("vit_tiny_patch16_64", num_classes=5, drop_path_rate=0.0, **TINY).eval()
    report = load_pretrained(model, path)
    assert report.source == "timm_vit" and report.new == [] and report.resized == {}

    images = _images(32)
    with torch.no_grad():
        expected_tokens = reference.forward_features(images)  # [B, 1 + S, D] after the final norm
        expected = reference(images)
        tokens = model.forward_features(images[:, :, None])
        logits = model(images[:, :, None])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens.cls, expected_tokens[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens.patches[:, 0], expected_tokens[:, 1:], atol=1e-5, rtol=1e-5)


def test_deit_tiny_matches_timm_at_full_size():
    reference = _timm_vit("deit_tiny_patch16_224", num_classes=9)
    model = create_backbone("deit_tiny_patch16_224", num_classes=9).eval()
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (192, 12, 3)
    model.load_state_dict(reference.state_dict())  # strict: the key names are timm's
    images = _images(224, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), atol=1e-4, rtol=1e-4)


def test_a_vit_whose_position_embedding_skips_the_class_token_matches_timm(tmp_path):
    """timm's no_embed_class (DeiT-III's layout): the class token takes no position; it was
    refused as a non-square grid of 15 patches."""
    reference = _timm_vit(num_classes=5, no_embed_class=True, **TINY)
    assert reference.pos_embed.shape[1] == 16
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    model = create_backbone("vit_tiny_patch16_64", num_classes=5, drop_path_rate=0.0, **TINY).eval()
    report = load_pretrained(model, tmp_path / "vit.pth")
    assert report.resized == {} and any("class token's position is zero" in n for n in report.notes)
    images = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images[:, :, None]), reference(images), atol=1e-5, rtol=1e-5
        )


def test_pos_embed_is_resized_to_another_image_size(tmp_path):
    reference = _timm_vit(num_classes=5, **TINY)
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    model = create_backbone("vit_tiny_patch16_64", num_classes=5, **{**TINY, "img_size": 48})
    report = load_pretrained(model, tmp_path / "vit.pth")
    assert report.resized == {"pos_embed": ((1, 17, 48), (1, 37, 48))}


def test_an_image_is_a_one_frame_video():
    model = create_backbone("vit_tiny_patch16_64", num_classes=5, **TINY).eval()
    images = _images(32)
    with torch.no_grad():
        tokens = model.forward_features(images[:, :, None], return_blocks=True)
        plain = model.forward_features(images)
    assert model.num_frames == 1
    assert tokens.patches.shape == (2, 1, 16, 48) and tokens.cls.shape == (2, 48)
    assert [b.shape for b in tokens.blocks] == [(2, 1, 16, 48)] * 2
    torch.testing.assert_close(plain.patches, tokens.patches)
    with pytest.raises(ValueError, match="one frame"):
        model.forward_features(torch.zeros(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="num_frames=1"):
        create_backbone("vit_tiny_patch16_64", num_frames=8)
