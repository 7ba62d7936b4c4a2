"""Config: presets parse, overrides apply, bad keys and values name the valid ones."""

from pathlib import Path

import pytest
import torch

import timematters
from timematters.backbones import create_backbone
from timematters.backbones.adapters import is_foreign_spec
from timematters.cli import main
from timematters.config import (
    Config,
    ConfigError,
    backbone_kwargs,
    find_config,
    list_presets,
    load_config,
    validate,
)

PRESETS = list_presets()
# What a preset leaves to the user's command line (see each preset's first line).
PLACEHOLDERS = {
    "ssv2": ["data.root=/data/ssv2/videos", "data.annotations=/data/ssv2/labels"],
    "hf": ["data.root=/data/ssv2/videos", "data.annotations=/data/ssv2/labels"],
    "imagenet9": ["data.root=/data/bg_challenge"],
    "kinetics": ["data.root=/data/k400/videos", "data.annotations=/data/k400/annotations"],
    "diving48": ["data.root=/data/diving48/rgb", "data.annotations=/data/diving48/annotations"],
    "jester": ["data.root=/data/jester/frames", "data.annotations=/data/jester/annotations"],
}


def test_there_are_presets_for_every_table():
    for backbone in ("timesformer", "motionformer", "xvit"):
        assert f"ssv2/{backbone}_baseline" in PRESETS and f"ssv2/{backbone}_time" in PRESETS
    assert len([p for p in PRESETS if p.startswith("ssv2/ablation/")]) == 8
    assert {"synthetic/baseline", "synthetic/time", "videolist/time"} <= set(PRESETS)
    assert {f"imagenet9/{v}" for v in ("baseline", "order", "debias", "time")} <= set(PRESETS)
    for variant in ("baseline", "order", "debias", "time"):  # DeiT's smoothing, on both losses
        loss = load_config(f"imagenet9/{variant}").loss
        assert loss.ce.smoothing == loss.order.smoothing == 0.1
    kinetics = load_config("kinetics/timesformer_time", PLACEHOLDERS["kinetics"]).data
    assert (kinetics.sampling, kinetics.dense_stride, kinetics.hflip) == ("dense", 36, True)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_builds_its_backbone_and_opens_with_its_command(name):
    cfg = load_config(name, PLACEHOLDERS.get(name.split("/")[0], []))
    validate(cfg)
    first = find_config(name).read_text().splitlines()[0]
    assert first.startswith(f"# timematters train {name}.yaml"), first
    if is_foreign_spec(cfg.model.name):  # a hub model: its weights cannot be fetched here
        losses = (cfg.loss.order, cfg.loss.debias, cfg.loss.flow)
        assert cfg.model.name.startswith("hf:") and all(loss.weight == 1 for loss in losses)
        return
    with torch.device("meta"):
        model = create_backbone(cfg.model.name, **backbone_kwargs(cfg, num_classes=174))
    assert model.num_frames == cfg.model.num_frames
    assert model.grid[0] * model.patch_size == cfg.data.crop_size
    if name.startswith("ssv2/ablation/"):  # the file name lists the losses that are on
        on = set(Path(name).name.split("_")) - {"none"}
        for loss in ("order", "debias", "flow"):
            assert (getattr(cfg.loss, loss).weight != 0) == (loss in on), loss


def test_a_config_is_a_path_first_then_a_preset(tmp_path, monkeypatch):
    assert find_config("synthetic/time") == find_config("synthetic/time.yaml")
    assert find_config("synthetic/time").is_relative_to(Path(timematters.__file__).parent)
    local = tmp_path / "synthetic" / "time.yaml"
    local.parent.mkdir()
    local.write_text("train: {epochs: 1}\n")
    monkeypatch.chdir(tmp_path)
    assert find_config("synthetic/time.yaml") == Path("synthetic/time.yaml")
    assert load_config("synthetic/time.yaml").train.epochs == 1
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        find_config("synthetic/nope")


def test_overrides_and_defaults():
    cfg = load_config(
        None, ["loss.flow.weight=0", "data.subset=temporal", "optim.milestones=[5, 8]"]
    )
    assert cfg.loss.flow.weight == 0.0 and cfg.data.subset == "temporal"
    assert cfg.optim.milestones == (5, 8)
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4  # YAML 1.1 reads this as a string
    # Defaults are the released recipe.
    default = Config()
    assert (
        default.optim.lr == 1e-4 and default.optim.amsgrad and default.optim.milestones == (20, 30)
    )
    assert default.loss.ce.smoothing == 0.2 and default.loss.debias.shuffle == "per_batch"
    assert default.flow.threshold == "relative" and default.flow.farneback.winsize == 15


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.flw.weight=1", "unknown key 'loss.flw'; valid keys here: ce, order, debias, flow"),
        ("data.subset=foo", "data.subset='foo' is not one of: all, temporal, static"),
        ("train.epochs=1.5", "train.epochs expects an integer"),
        ("optim.lr=fast", "optim.lr expects a number"),
        ("train.out", "not of the form key=value"),
    ],
)
def test_bad_keys_and_values_name_the_valid_ones(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_bad_yaml_key_names_the_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  nmae: x\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: unknown key 'model.nmae'; valid keys here: name"
    ):
        load_config(path)
    assert main(["train", str(path)]) == 2
    assert "unknown key 'model.nmae'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_every_step_schedule_preset_lowers_its_lr_within_its_epochs():
    # The hf presets ran 10 epochs with the default milestones (20, 30): a constant lr.
    from timematters.engine.train import _unreached_milestones

    for name in PRESETS:
        assert not _unreached_milestones(load_config(name)), name
