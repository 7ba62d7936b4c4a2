"""Config: presets parse, overrides apply, bad keys and values name the valid ones."""

from pathlib import Path

import pytest

from timematters.cli import main
from timematters.config import Config, ConfigError, load_config

PRESETS = sorted(Path(__file__).parents[1].joinpath("configs").rglob("*.yaml"))


def test_there_are_presets_for_every_table():
    names = {
        p.relative_to(p.parents[1]).as_posix() if p.parent.name == "ablation" else p.name
        for p in PRESETS
    }
    for backbone in ("timesformer", "motionformer", "xvit"):
        assert f"{backbone}_baseline.yaml" in names and f"{backbone}_time.yaml" in names
    assert len([p for p in PRESETS if p.parent.name == "ablation"]) == 8


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_every_preset_parses_and_opens_with_its_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# timematters ") and path.name in first


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
    assert default.flow.threshold == "relative" and default.flow.winsize == 15


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
