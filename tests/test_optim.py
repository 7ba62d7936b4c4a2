"""The optimizer's parameter groups: the released two, and layer-wise lr decay (optim.layer_decay)."""

import pytest
import torch
from test_train import assert_resumes_exactly, tiny_config

from timematters.backbones import create_backbone
from timematters.config import ConfigError, OptimConfig, load_config, validate
from timematters.engine.optim import build_optimizer, parameter_groups, set_lr
from timematters.engine.runs import resume_mismatches
from timematters.engine.train import train
from timematters.losses import TimeModel, objective_for_model

TINY = {"embed_dim": 24, "depth": 3, "num_heads": 2}


def _scales(groups: list[dict], model: torch.nn.Module) -> dict[str, float]:
    name = {param: key for key, param in model.named_parameters()}
    return {name[p]: group["lr_scale"] for group in groups for p in group["params"]}


def test_without_layer_decay_the_groups_are_the_released_two():
    model = create_backbone("timesformer_tiny_patch8_64", num_classes=5, **TINY)
    groups = parameter_groups(model, 0.05)
    assert [group["weight_decay"] for group in groups] == [0.05, 0.0]
    assert all("lr_scale" not in group for group in groups)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(
        p.ndim < 2 for p in groups[1]["params"]
    )
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _undecayed(groups: list[dict], model: torch.nn.Module) -> set[str]:
    name = {param: key for key, param in model.named_parameters()}
    return {name[p] for group in groups if group["weight_decay"] == 0 for p in group["params"]}


def test_deit_spares_the_embeddings_as_timm_does_and_the_video_models_name_theirs():
    """optim.decay_embeddings=false (the ImageNet-9 presets): timm's groups for its own
    no_weight_decay() list are the reference; the default decays them, as released."""
    timm = pytest.importorskip("timm")
    from timm.optim import param_groups_weight_decay

    ours = create_backbone("deit_tiny_patch16_224", num_classes=5)
    theirs = timm.create_model("deit_tiny_patch16_224", num_classes=5)
    reference = param_groups_weight_decay(
        theirs, 0.05, no_weight_decay_list=theirs.no_weight_decay()
    )
    spared = _undecayed(parameter_groups(ours, 0.05, decay_embeddings=False), ours)
    assert spared == _undecayed(reference, theirs) >= {"cls_token", "pos_embed"}
    assert {"cls_token", "pos_embed"}.isdisjoint(_undecayed(parameter_groups(ours, 0.05), ours))
    video = create_backbone("timesformer_tiny_patch8_64", num_classes=5, **TINY)
    spared = _undecayed(parameter_groups(video, 0.05, decay_embeddings=False), video)
    assert {"cls_token", "pos_embed", "time_embed"} <= spared
    assert load_config("imagenet9/time").optim.decay_embeddings is False


def test_layer_decay_equals_timms_on_the_image_vit():
    # Our image ViT has timm's parameter names: timm's own layer-decay groups are the reference,
    # but for the final norm, which timm decays with the last block and MAE / VideoMAE's recipe
    # (ours) leaves at the full lr with the head.
    timm = pytest.importorskip("timm")
    from timm.optim import param_groups_layer_decay

    ours = create_backbone("vit_tiny_patch16_64", num_classes=5)
    theirs = timm.create_model(
        "vit_tiny_patch16_224", num_classes=5, img_size=64, embed_dim=96, depth=4, num_heads=3
    )
    assert set(dict(ours.named_parameters())) == set(dict(theirs.named_parameters()))
    reference = _scales(param_groups_layer_decay(theirs, 0.05, layer_decay=0.75), theirs)
    scales = _scales(parameter_groups(ours, 0.05, layer_decay=0.75), ours)
    assert reference.pop("norm.weight") == reference.pop("norm.bias") == 0.75
    assert scales.pop("norm.weight") == scales.pop("norm.bias") == 1.0
    assert scales == pytest.approx(reference, rel=1e-6)
    assert scales["cls_token"] == pytest.approx(0.75**5) and scales["head.weight"] == 1.0
    assert scales["blocks.0.attn.qkv.weight"] == pytest.approx(0.75**4)


@pytest.mark.parametrize(
    "name", ["timesformer_tiny_patch8_64", "motionformer_tiny_patch8_64", "xvit_tiny_patch8_64"]
)
def test_layer_decay_scales_each_block_and_keeps_the_time_heads_at_the_full_lr(name):
    backbone = create_backbone(name, num_classes=5, num_frames=4, **TINY)
    model = TimeModel(backbone, objective_for_model(backbone))
    scales = _scales(parameter_groups(model, 0.05, layer_decay=0.5), model)
    assert scales["backbone.patch_embed.proj.weight"] == 0.5**4
    assert scales["backbone.pos_embed"] == 0.5**4
    for i in range(3):
        assert {s for k, s in scales.items() if k.startswith(f"backbone.blocks.{i}.")} == {
            0.5 ** (3 - i)
        }
    # After the last block: the final norm, the classifier (X-ViT's temporal consensus too).
    head = f"backbone.{backbone.classifier_name}.weight"
    assert scales[head] == scales["backbone.norm.weight"] == 1.0
    heads = {k: s for k, s in scales.items() if k.startswith("objective.")}
    assert heads and set(heads.values()) == {1.0}
    assert len(scales) == len(list(model.parameters()))


def test_set_lr_applies_each_groups_scale():
    model = create_backbone("timesformer_tiny_patch8_64", num_classes=5, **TINY)
    optimizer = build_optimizer(model, OptimConfig(layer_decay=0.5))
    set_lr(optimizer, 1e-3)
    lrs = sorted({group["lr"] for group in optimizer.param_groups})
    assert lrs == pytest.approx([1e-3 * 0.5**k for k in (4, 3, 2, 1, 0)])


def test_a_hugging_face_model_decays_over_its_encoder_layers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from timematters.backbones.adapters import load_foreign_model

    config = transformers.VideoMAEConfig(
        image_size=32,
        num_frames=4,
        patch_size=16,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    transformers.VideoMAEForVideoClassification(config).save_pretrained(tmp_path / "videomae")
    model = load_foreign_model(f"hf:{tmp_path / 'videomae'}")
    scales = {
        k.removeprefix("model."): s
        for k, s in _scales(parameter_groups(model, 0.05, layer_decay=0.5), model).items()
    }
    assert scales["videomae.embeddings.patch_embeddings.projection.weight"] == 0.5**3
    assert scales["videomae.encoder.layer.0.attention.attention.query.weight"] == 0.5**2
    assert scales["videomae.encoder.layer.1.output.dense.weight"] == 0.5
    assert scales["classifier.weight"] == 1.0


def test_a_model_without_known_blocks_is_refused_with_the_key():
    from timematters.backbones.adapters.module import as_video_backbone

    model = as_video_backbone(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3)), source="x"
    )
    with pytest.raises(ConfigError, match=r"optim.layer_decay=0.75 .* set optim.layer_decay=1"):
        parameter_groups(model, 0.05, layer_decay=0.75)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_layer_decay_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=r"optim.layer_decay must be in \(0, 1\]"):
        validate(load_config("synthetic/time", [f"optim.layer_decay={value}"]))


def test_a_checkpoint_saved_before_a_key_existed_resumes_with_its_default(tmp_path):
    cfg = tiny_config(tmp_path)
    from timematters.config import config_to_dict

    saved = config_to_dict(cfg)
    del saved["optim"]["layer_decay"]  # as a timematters without the key wrote it
    assert resume_mismatches(saved, cfg) == []
    changed = tiny_config(tmp_path, "optim.layer_decay=0.75")
    assert resume_mismatches(saved, changed) == ["optim.layer_decay: 1.0 when saved, 0.75 now"]


def test_training_with_layer_decay_resumes_exactly_and_says_so(tmp_path, capsys):
    full, _ = assert_resumes_exactly(tmp_path, "optim.layer_decay=0.75", "train.save_every_steps=3")
    plain = {}
    train(tiny_config(tmp_path / "plain"), step_callback=lambda s, r: plain.update({s: r}))
    # The log's lr is the schedule's, not the most decayed group's.
    assert [full[s]["lr"] for s in full] == pytest.approx([plain[s]["lr"] for s in full], rel=1e-9)
    assert "optim.layer_decay=0.75: lr x 0.422 for the embeddings" in capsys.readouterr().out
