"""Training foreign models: layer-wise lr decay in the order their forward pass runs, tubelets and
patches the flow loss cannot label, exports whose model card runs, and variants refused in one
line. Tiny random models built from their configs, no downloads."""

import json

import numpy as np
import pytest
import torch
from test_adapters import DATA, IMG, TINY, K, T, _save_hf
from test_export import _trained

import timematters
from timematters.backbones.adapters import load_foreign_model
from timematters.cli import main
from timematters.config import LossConfig, load_config
from timematters.data.sampling import EvalClip
from timematters.data.transforms import EvalTransform
from timematters.engine.model import model_flow_grid
from timematters.engine.optim import layer_scales
from timematters.losses import objective_for_model

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def _batch(model: torch.nn.Module) -> dict:
    torch.manual_seed(0)
    return {
        "video": torch.randn(2, 3, model.num_frames, IMG, IMG).clamp(-1, 1),
        "label": torch.tensor([0, 1]),
    }


# -- optim.layer_decay -----------------------------------------------------------------------


def _in_first_use_order(model: torch.nn.Module, video: torch.Tensor) -> list[str]:
    """The model's parameter names in the order its forward pass first uses their modules."""
    names = {param: name for name, param in model.named_parameters()}
    order: list[str] = []

    def note(module, _args):
        order.extend(names[p] for p in module.parameters(recurse=False) if names[p] not in order)

    hooks = [module.register_forward_pre_hook(note) for module in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(video)
    finally:
        for hook in hooks:
            hook.remove()
    return order


@pytest.mark.parametrize("kind", ["timesformer", "videomae", "vivit", "vjepa2", "videoprism"])
def test_layer_decay_scales_grow_along_the_forward_pass(tmp_path, kind):
    model = load_foreign_model(f"hf:{_save_hf(tmp_path, kind)}")
    scales = layer_scales(model, 0.5)
    by_name = {name: scales[param] for name, param in model.named_parameters()}
    order = _in_first_use_order(model, torch.zeros(1, 3, T, IMG, IMG))
    in_order = [by_name[name] for name in order]
    assert in_order == sorted(in_order), list(zip(order, in_order, strict=True))
    assert in_order[0] == 0.5**3 and in_order[-1] == 1.0  # embeddings; classifier
    if kind == "videoprism":  # registered before its layers, run after the spatial one
        vision = "model.vision_model"
        temporal = by_name[f"{vision}.temporal_layers.0.layernorm_before.weight"]
        assert by_name[f"{vision}.spatial_layers.0.layernorm_before.weight"] == 0.5**2
        assert by_name[f"{vision}.layernorm1.weight"] == temporal == 0.5
        assert by_name[f"{vision}.temporal_embeddings.position_embeddings"] == 0.5
        assert by_name[f"{vision}.layernorm2.weight"] == 1.0  # the final norm: full lr
        assert by_name[f"{vision}.spatial_embeddings.position_embeddings"] == 0.5**3


def test_swin3d_patch_merging_trains_with_the_stage_it_feeds():
    from timematters.backbones.adapters.torchvision import load_torchvision_model

    model = load_torchvision_model("swin3d_t", num_classes=K, num_frames=4, img_size=64)
    scales = layer_scales(model, 0.5)
    by_name = {name: scales[param] for name, param in model.named_parameters()}
    order = _in_first_use_order(model, torch.zeros(1, 3, 4, 64, 64))
    in_order = [by_name[name] for name in order]
    assert in_order == sorted(in_order)
    # Four stages (features.0, 2, 4, 6), a patch merging before each but the first.
    for merging, stage, power in (("1", "2", 3), ("3", "4", 2), ("5", "6", 1)):
        assert by_name[f"model.features.{merging}.reduction.weight"] == 0.5**power
        assert by_name[f"model.features.{stage}.0.norm1.weight"] == 0.5**power
    assert by_name["model.patch_embed.proj.weight"] == 0.5**5
    assert by_name["model.norm.weight"] == by_name["model.head.weight"] == 1.0


# -- tubelets and patches the flow loss cannot label --------------------------------------------


def _videomae(tmp_path, tubelet: int):
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(
        image_size=IMG, patch_size=16, num_frames=T, tubelet_size=tubelet, num_labels=K, **TINY
    )
    folder = tmp_path / f"videomae_t{tubelet}"
    transformers.VideoMAEForVideoClassification(config).save_pretrained(folder)
    return folder


def test_a_tubelet_that_leaves_frames_out_refuses_the_flow_loss_only(tmp_path, capsys):
    # 3-frame tubelets over 8 frames: token frames from frames 0-2 and 3-5, frames 6-7 left out.
    # Flow labels between frames 0 and 3 would be right but between frames 0 and 8 // 2 = 4 were
    # made; the flow loss is refused. The order of the two token frames is still theirs to learn.
    folder = _videomae(tmp_path, tubelet=3)
    model = load_foreign_model(f"hf:{folder}")
    assert (model.token_frames, model.tubelet) == (2, 3)
    cfg = load_config("synthetic/time", [*DATA, f"model.name=hf:{folder}"])
    assert model_flow_grid(cfg) == (16, 3)  # the real tubelet, not 8 // 2
    with pytest.raises(ValueError, match=r"the flow loss cannot train .* 3-frame tubelets"):
        objective_for_model(model)
    objective = objective_for_model(model, LossConfig(flow={"weight": 0}))
    out = objective(model, _batch(model))
    assert set(out.terms) == {"ce_loss", "order_loss", "debias_loss"}
    out.total.backward()

    run = tmp_path / "run"
    argv = ["train", "synthetic/time", *DATA, f"model.name=hf:{folder}", f"train.out={run}"]
    assert main(argv) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "tubelets" in line]
    assert "loss.flow.weight=0" in error  # the reason and the fix, on one line


def test_vivit_with_rectangular_patches_trains_without_the_flow_loss(tmp_path):
    torch.manual_seed(0)
    config = transformers.VivitConfig(
        image_size=IMG, num_frames=T, tubelet_size=[2, 16, 8], num_labels=K, **TINY
    )
    folder = tmp_path / "vivit"
    transformers.VivitForVideoClassification(config).save_pretrained(folder)
    model = load_foreign_model(f"hf:{folder}")
    assert model.grid == (IMG // 16, IMG // 8)
    tokens = model.forward_features(_batch(model)["video"], return_blocks=True)
    assert tokens.patches.shape == (2, T // 2, (IMG // 16) * (IMG // 8), 32)
    assert tokens.blocks[0].shape == tokens.patches.shape
    with pytest.raises(ValueError, match=r"flow loss cannot train .* patches are 16x8 pixels"):
        objective_for_model(model)
    objective = objective_for_model(model, LossConfig(flow={"weight": 0}))
    out = objective(model, _batch(model))
    assert set(out.terms) == {"ce_loss", "order_loss", "debias_loss"}
    out.total.backward()


def test_a_space_only_timesformer_is_refused_in_one_line(tmp_path, capsys):
    # transformers' space_only TimeSformer classifies every frame alone: [B*T, K] logits.
    folder = _save_hf(tmp_path, "timesformer", attention_type="space_only")
    with pytest.raises(ValueError, match=r"attention_type='space_only' classifies each frame"):
        load_foreign_model(f"hf:{folder}")
    argv = ["eval", "synthetic/time", *DATA, "--model", f"hf:{folder}"]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "space_only" in line]
    assert "[B*T, K]" in error  # what and why, on one line


def test_a_foreign_model_built_for_another_clip_is_refused_before_its_run_folder(tmp_path, capsys):
    """Refused when the run is set up, so no folder is left to refuse the corrected command
    (it was refused at the first step, after config.yaml and train.log were written)."""
    folder = _save_hf(tmp_path, "videomae")
    out = tmp_path / "run"
    argv = ["train", "synthetic/time", *DATA, f"model.name=hf:{folder}", f"train.out={out}"]
    sizes = [f"data.crop_size={IMG}", "train.batch_size=4", "train.epochs=1"]
    assert main([*argv, *sizes, f"model.num_frames={2 * T}"]) == 2
    assert f"takes {T}-frame clips, got {2 * T}" in capsys.readouterr().err
    assert not out.exists()


# -- exports of models that take pixel_values_videos --------------------------------------------


@pytest.mark.parametrize(
    ("kind", "with_processor"),
    [("vjepa2", True), ("videoprism", True), ("videoprism", False), ("vivit", True)],
)
def test_the_export_card_scores_the_evaluated_clip(tmp_path, monkeypatch, kind, with_processor):
    # V-JEPA 2's processor sets its resize from the crop (64 · 256/224 = 73, not the run's 64)
    # whenever it is made; VideoPrism's classifier has a processor only under its video-text
    # type and keeps its pooling query's axis in its logits ([B, 1, K]). Without a processor the
    # card makes the clip by hand. ViViT's processor maps pixels to [-1, 1] before it normalises,
    # whatever its rescale factor (before: the exported one saw u - 1 for u in [0, 1]).
    from timematters.engine import export

    input_name = "pixel_values" if kind == "vivit" else "pixel_values_videos"

    if not with_processor:
        monkeypatch.setattr(export, "_video_processor", lambda *args: None)
    folder = _save_hf(tmp_path, kind)
    overrides = ["model.num_frames=8", "data.crop_size=64", "loss.flow.weight=0"]
    checkpoint = _trained(tmp_path, kind, f"model.name=hf:{folder}", "model.kwargs={}", *overrides)
    out = tmp_path / "exported"
    info = timematters.export(checkpoint, out)
    assert info["layout"] == f"{input_name} [B, T, C, H, W]"
    assert json.loads((out / "export.json").read_text())["input_name"] == input_name
    assert (out / "video_preprocessor_config.json").is_file() is with_processor
    card = (out / "README.md").read_text()
    assert f"{input_name} [B, T, C, H, W]" in card
    assert kind == "vivit" or "pixel_values [" not in card
    assert ("AutoVideoProcessor" in card) is with_processor

    video = np.random.default_rng(1).integers(0, 256, (13, 64, 80, 3), dtype=np.uint8)
    scope = {"video": torch.from_numpy(video).permute(0, 3, 1, 2)}
    monkeypatch.chdir(out)
    exec(card.split("```python\n", 1)[1].split("```", 1)[0], scope)
    taken = EvalClip().indices(13, 8)
    clip = EvalTransform(64, 64, num_crops=1)(video[taken])  # as the run's evaluation made it
    ours = timematters.load_model(checkpoint)
    with torch.no_grad():
        expected = ours(clip)
    assert scope["logits"].shape == expected.shape == (1, len(ours.class_names))
    torch.testing.assert_close(scope["logits"], expected, rtol=0, atol=1e-4)


def test_an_image_classifier_is_named_in_one_line(tmp_path):
    """transformers' own refusal lists every configuration class it has, on two lines."""
    import transformers

    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"is a vit model, which transformers has no video") as e:
        load_foreign_model(f"hf:{tmp_path / 'vit'}")
    assert "\n" not in str(e.value) and "model.name=deit_tiny_patch16_224" in str(e.value)
