"""Config values that used to pass and fail later (a NaN model, a traceback mid-training, a folder
named "~") are refused when the config is read or validated, in one line naming the key, the value
and the fix. No training: configs only, and the command line where a run folder could be made."""

import pytest
import torch

from timematters.cli import main
from timematters.config import ConfigError, expand_home_in_spec, load_config, validate


def _refused(*overrides: str) -> str:
    """The message of the ConfigError that loading or validating synthetic/time raises."""
    with pytest.raises(ConfigError) as error:
        validate(load_config("synthetic/time", list(overrides)))
    return str(error.value)


def _one_clear_line(capsys, *words: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("timematters: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- a key given twice in a YAML mapping --------------------------------------------------------


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text(
        "loss:\n  flow: {weight: 0}\ntrain:\n  epochs: 1\nloss:\n  order: {weight: 0}\n"
    )
    with pytest.raises(
        ConfigError, match=r"twice.yaml: .*key 'loss' is given twice \(lines 1 and 5\)"
    ):
        load_config(path)
    assert main(["train", str(path), f"train.out={tmp_path / 'run'}"]) == 2
    _one_clear_line(capsys, "twice.yaml", "'loss'", "lines 1 and 5", "merge them")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"'depth' is given twice \(line 1, columns 2 and 12\)"):
        load_config(None, ["model.kwargs={depth: 1, depth: 2}"])


def test_a_merge_key_may_still_be_overridden(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "loss:\n  flow: &base {weight: 0.5, smoothing: 0.1}\n  order:\n    <<: *base\n    weight: 2\n"
    )
    order = load_config(path).loss.order
    assert (order.weight, order.smoothing) == (2.0, 0.1)


# -- every float finite --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=.inf", "optim.lr must be a finite number, got inf"),
        ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
        ("data.std=[.inf, 0.5, 0.5]", "data.std must hold finite numbers, got [inf, 0.5, 0.5]"),
        ("data.mean=[.nan, 0, 0]", "data.mean must hold finite numbers, got [nan, 0.0, 0.0]"),
        ("data.mixup=.nan", "data.mixup must be a finite number"),
        ("optim.clip_grad=.nan", "optim.clip_grad must be a finite number"),
        ("optim.weight_decay=.nan", "optim.weight_decay must be a finite number"),
        ("flow.farneback.poly_sigma=.inf", "flow.farneback.poly_sigma must be a finite number"),
        ("model.drop_path_rate=.nan", "model.drop_path_rate must be a finite number"),
    ],
)
def test_a_value_that_is_not_finite_is_refused(override, message):
    assert message in _refused(override)


# -- the lr schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.gamma=-1"], "optim.gamma must be in (0, 1]"),
        (["optim.gamma=0"], "optim.gamma must be in (0, 1]"),
        (["optim.gamma=10"], "got 10.0"),  # 0.1 meant: the lr would grow tenfold
        (["optim.milestones=[30, 20]"], "in increasing order (e.g. [20, 30]), got [30, 20]"),
        (["optim.milestones=[-1, 5]"], "optim.milestones must be epochs of 1 or more"),
        (["optim.milestones=[5, 5]"], "got [5, 5]"),
        (["optim.min_lr=0.01"], "optim.min_lr=0.01 is above optim.lr=0.0005"),
    ],
)
def test_a_schedule_that_would_raise_the_lr_is_refused(overrides, message):
    assert message in _refused(*overrides)


def test_schedules_that_fall_or_stay_are_accepted():
    validate(load_config("synthetic/time", ["optim.schedule=step", "optim.gamma=1"]))
    validate(load_config("synthetic/time", ["optim.milestones=[]", "optim.min_lr=0.0005"]))
    # min_lr is the cosine's floor: a step schedule ignores it.
    validate(load_config("synthetic/time", ["optim.schedule=step", "optim.min_lr=1"]))


# -- flow labels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("flow.farneback.winsize=1", "flow.farneback.winsize must be at least 2, got 1"),
        ("flow.farneback.iterations=0", "flow.farneback.iterations must be at least 1, got 0"),
        ("flow.farneback.poly_n=0", "flow.farneback.poly_n must be at least 1, got 0"),
        ("flow.farneback.levels=-1", "flow.farneback.levels must be at least 0, got -1"),
        ("flow.farneback.pyr_scale=1", "flow.farneback.pyr_scale must be in (0, 1)"),
        ("flow.farneback.pyr_scale=0", "flow.farneback.pyr_scale must be in (0, 1)"),
        ("flow.farneback.poly_sigma=-1", "flow.farneback.poly_sigma must be at least 0"),
        ("flow.relative_fraction=1.5", "flow.relative_fraction must be in [0, 1], got 1.5"),
        ("flow.absolute_tau=-1", "flow.absolute_tau must be at least 0, got -1.0"),
    ],
)
def test_farneback_parameters_out_of_range_are_refused(override, message):
    assert message in _refused(override)


def test_farneback_edge_values_both_backends_take_are_accepted():
    # levels 0: the frames alone; poly_n 7: OpenCV's other suggestion; poly_sigma 0: n * 0.3.
    for override in ("levels=0", "poly_n=7", "poly_sigma=0", "winsize=2"):
        validate(load_config("synthetic/time", [f"flow.farneback.{override}"]))


# -- counts, rates and strides ------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.synthetic.num_test=0", "data.synthetic.num_test must be at least 1, got 0"),
        ("data.synthetic.num_train=0", "data.synthetic.num_train must be at least 1, got 0"),
        ("data.randaugment_ops=-1", "data.randaugment_ops must be at least 0, got -1"),
        ("eval.bootstrap_samples=-1", "eval.bootstrap_samples must be at least 0, got -1"),
        ("data.dense_stride=0", "data.dense_stride must be at least 1, got 0"),
        ("model.drop_path_rate=1", "model.drop_path_rate must be in [0, 1)"),
        ("model.drop_path_rate=-0.1", "model.drop_path_rate must be in [0, 1)"),
        ("data.synthetic.spurious_rate=2", "data.synthetic.spurious_rate must be in [0, 1]"),
        ("data.synthetic.object_contrast=-1", "data.synthetic.object_contrast must be in [0, 1]"),
        ("data.imagenet9.min_crop_scale=0", "data.imagenet9.min_crop_scale must be in (0, 1]"),
        ("data.imagenet9.min_crop_scale=1.5", "data.imagenet9.min_crop_scale must be in (0, 1]"),
    ],
)
def test_values_out_of_range_are_refused(override, message):
    assert message in _refused(override)


def test_a_bad_stride_is_refused_before_the_run_folder_is_made(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "synthetic/time", "data.dense_stride=0", f"train.out={out}"]) == 2
    _one_clear_line(capsys, "data.dense_stride must be at least 1, got 0")
    assert not out.exists()


# -- model.kwargs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ("{num_heads: 0}", "model.kwargs.num_heads must be positive, got 0"),
        ("{patch_size: 0}", "model.kwargs.patch_size must be positive, got 0"),
        ("{mlp_ratio: -1}", "model.kwargs.mlp_ratio must be positive, got -1"),
        ("{depth: 0}", "model.kwargs.depth must be positive, got 0"),
        ("{drop_path_rate: 1.5}", "model.kwargs.drop_path_rate must be in [0, 1), got 1.5"),
        ("{num_heads: 5}", "with model.kwargs={'num_heads': 5}: dim 96 is not divisible"),
    ],
)
def test_backbone_arguments_that_cannot_build_a_model_are_named(kwargs, message):
    assert message in _refused(f"model.kwargs={kwargs}")


# -- devices and compilation --------------------------------------------------------------------


def test_a_device_is_checked_against_what_this_machine_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    assert "train.device='cuda:7' but this machine has 1 CUDA device: use cuda:0" in _refused(
        "train.device=cuda:7"
    )
    assert "train.device='mps' but mps is not available; use cpu or auto" in _refused(
        "train.device=mps"
    )
    assert "timematters cannot run on meta; use auto, cpu" in _refused("train.device=meta")
    assert "'gpu' is not a device; use auto, cpu, cuda, cuda:N, mps or xpu" in _refused(
        "train.device=gpu"
    )
    validate(load_config("synthetic/time", ["train.device=cpu"]))


def test_a_compile_backend_is_checked_when_compiling():
    message = _refused("train.compile=true", "train.compile_backend=nope")
    assert "train.compile_backend='nope' is not a torch.compile backend" in message
    assert "inductor" in message and "aot_eager" in message
    validate(load_config("synthetic/time", ["train.compile=true", "train.compile_backend=eager"]))
    validate(load_config("synthetic/time", ["train.compile_backend=nope"]))  # not compiling


# -- paths --------------------------------------------------------------------------------------


def test_a_home_folder_in_a_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "home.yaml"
    path.write_text("train:\n  out: ~/runs/x\ndata:\n  root: ~/videos\n")
    cfg = load_config(path, ["model.pretrained=~/weights.pth"])
    assert cfg.train.out == str(tmp_path / "runs/x")
    assert cfg.data.root == str(tmp_path / "videos")
    assert cfg.model.pretrained == str(tmp_path / "weights.pth")


def test_a_home_folder_in_a_model_spec_is_expanded(tmp_path, monkeypatch):
    # The shell leaves `~` alone inside model.name=hf:~/dir or after --model hf:.
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_home_in_spec("hf:~/exported") == f"hf:{tmp_path}/exported"
    assert (
        expand_home_in_spec("torchvision:r3d_18:~/w.pth") == f"torchvision:r3d_18:{tmp_path}/w.pth"
    )
    assert expand_home_in_spec("~/runs/a/last.pth") == f"{tmp_path}/runs/a/last.pth"
    for untouched in ("hf:MCG-NJU/videomae-base", "torchvision:r3d_18", "my_models:make"):
        assert expand_home_in_spec(untouched) == untouched
    cfg = load_config("synthetic/time", ["model.name=hf:~/exported"])
    assert cfg.model.name == f"hf:{tmp_path}/exported"


def test_a_checkpoint_under_home_loads_by_its_tilde_path(tmp_path, monkeypatch):
    from timematters.engine.model import load_model

    small = ["data.synthetic.num_train=8", "data.synthetic.num_test=8", "train.progress=false"]
    args = ["train", "synthetic/time", f"train.out={tmp_path}/run", "train.max_steps=1", *small]
    assert main(args) == 0
    monkeypatch.setenv("HOME", str(tmp_path))
    model = load_model("~/run/checkpoints/last.pth", load_config("synthetic/time"))
    assert model.num_frames == 8


def test_a_missing_subsets_file_is_named_with_its_key(tmp_path):
    message = _refused(f"data.subsets={tmp_path / 'nope.yaml'}")
    assert f"data.subsets={tmp_path / 'nope.yaml'}: no such file" in message


# -- what an override's YAML makes of a value -----------------------------------------------------


def test_a_value_yaml_reads_as_a_mapping_gets_the_fix(capsys):
    with pytest.raises(ConfigError, match=r"model.name=hf: ends in ':'.*or quote the value"):
        load_config(None, ["model.name=hf:"])
    with pytest.raises(ConfigError, match=r"space after ':'.*\(model.name=hf:x\)"):
        load_config(None, ["model.name=hf: x"])
    assert main(["train", "synthetic/time", "model.name=hf:"]) == 2
    _one_clear_line(capsys, "model.name=hf:", "model.name=hf:FOLDER_OR_NAME")


def test_null_is_named_where_it_is_allowed_and_where_not():
    with pytest.raises(ConfigError, match=r"expects a number, got 'none'; null \(written null"):
        load_config(None, ["model.drop_path_rate=none"])
    assert load_config(None, ["model.drop_path_rate=null"]).model.drop_path_rate is None
    with pytest.raises(ConfigError, match=r"optim.lr cannot be null"):
        load_config(None, ["optim.lr=null"])


# -- model.kwargs: merged key by key, of the backbone's kinds --------------------------------------


def test_a_kwargs_override_adds_to_the_presets_kwargs():
    # It replaced them: Appendix D's preset lost readd_time_embed and trained the baseline.
    cfg = load_config("synthetic/readd_time_embed", ["model.kwargs.depth=2"])
    assert cfg.model.kwargs == {"readd_time_embed": True, "depth": 2}
    cfg = load_config("synthetic/time", ["model.kwargs.depth=2", "model.kwargs.embed_dim=48"])
    assert cfg.model.kwargs == {"depth": 2, "embed_dim": 48}
    # A whole mapping replaces them: a preset switched to a foreign model clears its kwargs.
    assert load_config("synthetic/readd_time_embed", ["model.kwargs={}"]).model.kwargs == {}


@pytest.mark.parametrize(
    "override, words",
    [
        # 'fasle' is a string, which the backbone took as true: the feature turned on.
        (
            "model.kwargs.readd_time_embed=fasle",
            "readd_time_embed expects true or false, got 'fasle'",
        ),
        ("model.kwargs.mlp_ratio=.inf", "mlp_ratio must be a finite number, got inf"),
        ("model.kwargs.embed_dim=~", "embed_dim expects a number, got None"),
    ],
)
def test_backbone_kwargs_of_the_wrong_kind_are_refused(override, words):
    assert words in _refused(override)


@pytest.mark.parametrize("override, read", [("train.epochs=010", "8"), ("optim.lr=1:30", "90")])
def test_numbers_yaml_reads_otherwise_than_they_show_are_refused(override, read):
    # YAML 1.1: a leading 0 is octal, colons base 60; both trained silently on the other value.
    assert f"reads {override.split('=')[1]} as {read}" in _refused(override)
    assert load_config("synthetic/time", ["train.epochs=10", "optim.lr=0.001"]).train.epochs == 10


@pytest.mark.parametrize(
    "flag", [["--window", "inf"], ["--window", "nan"], ["--window", "1", "--fps", "nan"]]
)
def test_predict_window_and_fps_that_are_not_finite_are_refused(tmp_path, capsys, flag):
    (tmp_path / "clip.mp4").write_bytes(b"")
    assert main(["predict", str(tmp_path / "clip.mp4"), "--model", "x.pth", *flag]) == 2
    _one_clear_line(capsys, flag[-2])


def test_a_one_frame_model_on_the_synthetic_benchmark_is_refused_by_its_key():
    # It stopped in the data generator: "num_frames must be at least 2, got 1", no key, no fix.
    assert "model.num_frames=1 cannot show one" in _refused("model.num_frames=1")
