"""A user's mistake gets one line naming it and the fix, with exit status 2, never a traceback;
bad data is counted and reported, never scored silently; damaged files are named as such."""

import json
import math

import numpy as np
import pytest
import torch
from test_train import TINY, tiny_config
from torch.utils.data import DataLoader, Dataset
from videos import numbered_frames, write_video

from timematters.cli import main
from timematters.data import build as data_build
from timematters.data.collate import BadVideo, TooManyBadVideos, collate_videos
from timematters.engine import model as engine_model
from timematters.engine import train as engine_train
from timematters.engine.checkpoint import load_checkpoint, save_checkpoint
from timematters.engine.evaluate import evaluate
from timematters.engine.model import evaluate_checkpoint
from timematters.engine.train import NonFiniteLossError, train


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_clear_line(err: str, *words: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("timematters: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.batch_size=0", ["train.batch_size", "at least 1"]),
        ("train.batch_size=-4", ["train.batch_size"]),
        ("train.accumulation=0", ["train.accumulation"]),
        ("train.log_every=0", ["train.log_every"]),
        ("model.num_frames=0", ["model.num_frames"]),
        ("train.device=gpu", ["train.device='gpu'", "cpu"]),
        ("train.out=", ["train.out", "empty"]),
        ("model.kwargs={depht: 2}", ["depht", "valid:", "depth"]),
        ("model.kwargs={depth:2}", ["depth:2", "space after ':'"]),
        ("model.name=resnet", ["model.name='resnet'", "timesformer_tiny_patch8_64"]),
        ("train.accumulation=3", ["divisible"]),
        (
            "data.synthetic.num_train=2",
            ["smaller than one global batch", "train.batch_size=2 or lower"],
        ),
        ("eval.freeze_frame=4", ["eval.freeze_frame=4", "4-frame", "-4 to 3"]),
        ("loss.debias.weight=-1", ["loss.debias.weight", "at least 0", "-1"]),
        ("optim.weight_decay=-0.1", ["optim.weight_decay", "at least 0"]),
        ("optim.lr=0", ["optim.lr must be positive"]),
        ("optim.betas=[0.9, 1.0]", ["optim.betas", "[0, 1)"]),
        ("loss.ce.smoothing=1.5", ["loss.ce.smoothing", "[0, 1)", "1.5"]),
        ("data.std=[0.5, 0, 0.5]", ["data.std must be positive"]),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, override, words):
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={tmp_path}", override)
    assert code == 2
    _one_clear_line(err, *words)


def test_a_perturbation_typo_is_refused_before_training_starts(tmp_path, capsys):
    run = tmp_path / "run"
    bad = "eval.perturbations=[shuffle, revers]"
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={run}", bad)
    assert code == 2
    _one_clear_line(err, "eval.perturbations", "revers", "reverse")
    assert not run.exists()  # not at the first evaluation, an epoch of training later


def test_broken_config_files_exit_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "syntax.yaml").write_text("model:\n  name: [unclosed\n")
    (tmp_path / "latin1.yaml").write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    for name, words in (("syntax.yaml", ["not valid YAML", "line"]), ("latin1.yaml", ["UTF-8"])):
        code, err = _cli(capsys, "train", str(tmp_path / name))
        assert code == 2
        _one_clear_line(err, name, *words)
    code, err = _cli(capsys, "train", "synthetic/time", "model.kwargs={a: [1,}")
    assert code == 2
    _one_clear_line(err, "not a YAML value")


def test_diagnose_names_must_match_the_models(tmp_path, capsys):
    models = ["--model", "a.pth", "--model", "b.pth"]
    argv = ["diagnose", "--config", "synthetic/time", *models, "--out", str(tmp_path)]
    code, err = _cli(capsys, *argv, "--name", "x")
    assert code == 2
    _one_clear_line(err, "2 models but 1 names (x)", "--name once per --model")
    code, err = _cli(capsys, *argv, "--name", "x", "--name", "x")
    assert code == 2
    _one_clear_line(err, "must differ", "x is given to several models")


def test_demo_seeds_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--seeds", "0"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_a_demo_perturbation_typo_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "demo"
    code, err = _cli(capsys, "demo", "--quick", "--perturb", "shuffle,bogus", "--out", str(out))
    assert code == 2
    _one_clear_line(err, "--perturb: unknown bogus", "reverse")
    assert not out.exists()


def test_the_image_demo_refuses_the_video_demos_options(tmp_path, capsys):
    out = tmp_path / "demo"
    code, err = _cli(capsys, "demo", "--image", "--epochs", "3", "--out", str(out))
    assert code == 2
    _one_clear_line(err, "--epochs", "--image takes --quick, --seeds")
    assert not out.exists()  # refused, not silently run with the image demo's own budget


def test_predict_overrides_without_a_config_are_refused(tmp_path, capsys):
    code, err = _cli(capsys, "predict", "clip.mp4", "--model", "m:f", "-o", "model.num_frames=16")
    assert code == 2  # they were silently ignored
    _one_clear_line(err, "-o model.num_frames=16", "--config")


def test_resume_does_not_swallow_the_override_after_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={out}", "train.epochs=1")
    assert code == 0
    # "--resume train.epochs=1" was once read as a checkpoint path called "train.epochs=1".
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, f"train.out={out}", "--resume", "train.epochs=1"
    )
    assert code == 0, err
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, f"train.out={tmp_path / 'none'}", "--resume"
    )
    assert code == 2
    _one_clear_line(err, "no checkpoint at", "without --resume")


@pytest.mark.parametrize(
    "content, words",
    [(b"", ["empty (0 bytes)"]), (b"hello, I am text\n", ["not a torch file"])],
    ids=["zero bytes", "text"],
)
def test_damaged_weights_and_checkpoints_are_named(tmp_path, capsys, content, words):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    base = ["train", "synthetic/time", *TINY, f"train.out={tmp_path / 'run'}", "train.epochs=1"]
    code, err = _cli(capsys, *base, "--init-from", str(bad))
    assert code == 2
    _one_clear_line(err, "weights.pth", *words)
    code, err = _cli(capsys, "eval", "synthetic/time", *TINY, "--checkpoint", str(bad))
    assert code == 2
    _one_clear_line(err, "weights.pth", *words)


def test_nan_pretrained_weights_are_refused(tmp_path):
    cfg = tiny_config(tmp_path / "a", "train.epochs=1")
    train(cfg)
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pth")
    state["model"] = {k: torch.full_like(v, math.nan) for k, v in state["model"].items()}
    torch.save(state["model"], tmp_path / "nan.pth")
    with pytest.raises(ValueError, match="NaN or infinite"):
        train(tiny_config(tmp_path / "b", "train.epochs=1"), init_from=tmp_path / "nan.pth")


def test_nan_gradients_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch):
    # A finite loss whose gradients are NaN (a broken custom op, say): the old guard looked at the
    # loss only and applied them, leaving NaN in every weight.
    real = engine_train.build_model

    def poisoned(cfg, num_classes, **options):
        model = real(cfg, num_classes, **options)
        model.head.weight.register_hook(lambda grad: torch.full_like(grad, math.nan))
        return model

    monkeypatch.setattr(engine_train, "build_model", poisoned)
    seen = []
    result = train(
        tiny_config(tmp_path / "run", "train.max_nonfinite_steps=100"),
        step_callback=lambda step, record: seen.append(record),
    )
    assert "8 of 8 had a non-finite loss or gradient" in result["summary"]
    assert [r["nonfinite_steps"] for r in seen] == list(range(1, 9))
    assert all(math.isnan(r["grad_norm"]) for r in seen)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")  # never applied
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["grad_norm"] is None  # strict JSON: no bare NaN
    with pytest.raises(NonFiniteLossError, match="loss or gradient"):
        train(tiny_config(tmp_path / "limited", "train.max_nonfinite_steps=2"))


class _WithBad(Dataset):
    """A dataset whose items at ``bad`` are undecodable videos."""

    def __init__(self, dataset, bad):
        self.dataset, self.bad = dataset, set(bad)
        self.classes = dataset.classes
        self.subsets = getattr(dataset, "subsets", {})

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if index in self.bad:
            label = int(self.dataset.labels[index])
            return BadVideo(f"clip{index}.mp4", "cannot read: test", index, label)
        return self.dataset[index]


def _bad_training_clips(monkeypatch, train_bad=(), test_bad=()):
    real = data_build.build_dataset

    def build(cfg, split, **options):
        dataset = real(cfg, split, **options)
        return _WithBad(dataset, train_bad if split == "train" else test_bad)

    monkeypatch.setattr(engine_train, "build_dataset", build)
    monkeypatch.setattr(engine_model, "build_dataset", build)


def test_one_bad_video_under_the_limit_does_not_stop_the_run(tmp_path, monkeypatch):
    # 1 of 193 is 0.52%, under the 1% limit: judged on the first batch it was 1 of 4 (25%).
    _bad_training_clips(monkeypatch, train_bad=[0])
    cfg = tiny_config(tmp_path / "run", "data.synthetic.num_train=193", "train.epochs=1")
    result = train(cfg)
    assert result["steps"] == 48
    lines = (tmp_path / "run" / "bad_videos.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["clip0.mp4"]  # once, not per epoch


def test_too_many_bad_videos_stop_the_run(tmp_path, monkeypatch):
    _bad_training_clips(monkeypatch, train_bad=[0, 1, 2])
    with pytest.raises(
        TooManyBadVideos, match=r"2 of 16 videos \(12.50%\) .*above the limit of 10"
    ):
        train(tiny_config(tmp_path / "run", "data.max_bad_fraction=0.1"))


def test_bad_test_videos_are_counted_reported_and_limited(tmp_path, monkeypatch, capsys):
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    _bad_training_clips(monkeypatch, test_bad=[1, 5])
    # Batches of one clip: a batch of only bad videos once crashed with KeyError: 'video'.
    cfg = tiny_config(tmp_path / "run", "eval.batch_size=1", "data.max_bad_fraction=0.5")
    result = evaluate_checkpoint(cfg, checkpoint)
    assert len(result.labels) == 6 and [v.index for v in result.bad] == [1, 5]
    assert result.metrics()["all"]["num_clips"] == 6 and result.metrics()["all"]["num_bad"] == 2
    code = main(
        [
            "eval",
            "synthetic/time",
            *TINY,
            "eval.batch_size=1",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert code == 1  # 2 of 8 is above the default 1% limit
    err = capsys.readouterr().err
    _one_clear_line(err, "2 of 8 videos", "data.max_bad_fraction")
    assert len((tmp_path / "ev" / "bad_videos.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["all"]["num_bad"] == 2


def test_a_checkpoint_on_other_classes_is_refused(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    state = load_checkpoint(checkpoint)
    for name, classes, words in (
        ("reordered", state["classes"][::-1], ["another order", "class 0"]),
        (
            "renamed",
            ["waving", *state["classes"][1:]],
            ["other classes", "not in the dataset: waving"],
        ),
    ):
        save_checkpoint({**state, "classes": classes}, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=words[0]):
            evaluate_checkpoint(tiny_config(tmp_path / "run"), tmp_path / f"{name}.pth")
        code, err = _cli(
            capsys, "eval", "synthetic/time", *TINY, "--checkpoint", str(tmp_path / f"{name}.pth")
        )
        assert code == 2
        _one_clear_line(err, *words, "data.class_list")


def test_a_checkpoint_on_other_clips_is_refused_with_the_override(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pth")
    for override, words in (
        ("data.crop_size=48", ["32x32", "48x48", "data.crop_size=32"]),
        ("model.num_frames=8", ["4-frame", "8-frame", "model.num_frames=4"]),
    ):
        code, err = _cli(capsys, "eval", "synthetic/time", *TINY, override, "--model", checkpoint)
        assert code == 2
        _one_clear_line(err, checkpoint, *words)


def test_eval_without_out_keeps_the_runs_own_eval(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    own = (tmp_path / "run" / "eval.json").read_text()
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    assert main(["eval", "synthetic/time", *TINY, "--checkpoint", str(checkpoint)]) == 0
    assert (tmp_path / "run" / "eval.json").read_text() == own
    assert (tmp_path / "run" / "checkpoints" / "last_eval" / "eval.json").is_file()
    assert "last_eval" in capsys.readouterr().out


def test_evaluate_skips_batches_of_only_bad_videos():
    class Clips(Dataset):
        classes = ["a", "b"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i in (0, 1):
                return BadVideo(f"{i}.mp4", "cannot read", i, 0)
            return {"video": torch.zeros(3, 2, 8, 8), "label": i % 2}

    class Model(torch.nn.Module):
        def forward(self, video):
            return torch.zeros(video.shape[0], 2)

    loader = DataLoader(Clips(), batch_size=2, collate_fn=collate_videos)
    result = evaluate(Model(), loader, classes=Clips.classes)
    assert len(result.labels) == 2 and len(result.bad) == 2
    all_bad = DataLoader(Clips(), batch_size=2, collate_fn=collate_videos, sampler=[0, 1])
    empty = evaluate(Model(), all_bad, classes=Clips.classes)
    assert len(empty.labels) == 0 and empty.metrics()["all"]["num_bad"] == 2
    assert np.isnan(empty.metrics()["all"]["top1"])


@pytest.fixture
def list_videos(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        write_video(tmp_path / name, numbered_frames(10))
    return tmp_path


def _list_args(tmp, train_list="train.txt"):
    return [
        "videolist/time",
        "data.crop_size=32",
        "data.train_short_side=[36, 40]",
        "data.eval_short_side=32",
        "model.num_frames=4",
        "data.num_workers=0",
        f"data.annotations={tmp / train_list}",
        f"data.val_annotations={tmp / 'val.txt'}",
    ]


def test_video_list_typos_duplicates_conflicts_and_a_bom(list_videos, capsys):
    tmp = list_videos
    (tmp / "val.txt").write_text("d.mp4 jumping\n")
    # A typo'd label is a class of its own: data check names it.
    (tmp / "train.txt").write_text("a.mp4 jumping\nb.mp4 jumping\nc.mp4 jumpng\nb.mp4 jumping\n")
    assert main(["data", "check", *_list_args(tmp)]) == 1
    out = capsys.readouterr().out
    assert "'jumpng' looks like 'jumping'" in out and "listed twice" in out and "b.mp4" in out
    # The same video with two labels is refused, naming both lines.
    (tmp / "conflict.txt").write_text("a.mp4 jumping\nb.mp4 jumping\na.mp4 running\n")
    assert main(["data", "check", *_list_args(tmp, "conflict.txt")]) == 1
    out = capsys.readouterr().out
    assert "conflict.txt:3: a.mp4 is labelled 'running' here and 'jumping' on line 1" in out
    # A spreadsheet's CSV with a byte-order mark is read.
    (tmp / "bom.csv").write_bytes("path,label\na.mp4,jumping\nb.mp4,running\n".encode("utf-8-sig"))
    from timematters.data.videolist import read_video_list

    assert read_video_list(tmp / "bom.csv") == [("a.mp4", "jumping"), ("b.mp4", "running")]


def test_data_check_on_an_imagenet9_tree(tmp_path, capsys):
    from test_imagenet9 import CLASSES, _write

    for split, variation in (("train", "original"), ("val", "original")):
        for label, name in enumerate(CLASSES):
            _write(tmp_path / variation / split / name / f"{label}.png", 0)
    (tmp_path / "original" / "val" / CLASSES[0] / "broken.jpg").write_bytes(b"nope")
    code = main(
        [
            "data",
            "check",
            "imagenet9/baseline",
            f"data.root={tmp_path}",
            "data.crop_size=16",
            "data.eval_short_side=16",
            "data.num_workers=0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "1 image undecodable" in out and "broken.jpg" in out


@pytest.mark.parametrize(
    "sizes, words",
    [
        (["data.eval_short_side=28"], ["data.crop_size=32", "data.eval_short_side=28", "=32"]),
        (["data.train_short_side=[28, 40]"], ["data.train_short_side=[28, 40]", "=[37, 46]"]),
    ],
)
def test_a_crop_larger_than_the_resized_frames_names_the_key_to_set(
    list_videos, tmp_path, capsys, sizes, words
):
    tmp = list_videos
    (tmp / "train.txt").write_text("a.mp4 jumping\nb.mp4 running\nc.mp4 jumping\nd.mp4 running\n")
    (tmp / "val.txt").write_text("d.mp4 jumping\n")
    run = tmp_path / "runs" / "mine" / "run"
    code, err = _cli(capsys, "train", *_list_args(tmp), *sizes, f"train.out={run}")
    assert code == 2
    _one_clear_line(err, *words)
    assert not (tmp_path / "runs").exists()  # nor the folders made for it


def test_a_model_with_other_outputs_than_the_data_has_classes_is_refused(tmp_path, monkeypatch):
    # A user's module does not say how many classes it has: the first batch's logits do.
    (tmp_path / "five_out.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(\n"
        "        torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, 5)\n"
        "    )\n"
    )
    monkeypatch.chdir(tmp_path)
    model = engine_model.load_model("five_out:build")
    clips = [(torch.zeros(3, 4, 32, 32), 0) for _ in range(2)]  # any clip length: it pools
    with pytest.raises(
        ValueError, match="five_out:build gives 5 outputs but the data has 10 classes"
    ):
        evaluate(model, DataLoader(clips, batch_size=2), classes=[str(k) for k in range(10)])


def test_one_folder_holds_one_commands_output(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, "train.epochs=1"))
    checkpoint = str(run / "checkpoints" / "last.pth")
    own_eval = (run / "eval.json").read_text()
    # eval into the run's folder would have replaced the run's own final evaluation.
    code, err = _cli(
        capsys, "eval", "synthetic/time", *TINY, "--checkpoint", checkpoint, "--out", str(run)
    )
    assert code == 2
    _one_clear_line(err, "already holds a run", "choose another --out")
    assert (run / "eval.json").read_text() == own_eval
    code, err = _cli(capsys, "eval", "synthetic/time", *TINY, "--checkpoint", str(run))
    assert code == 2
    _one_clear_line(err, "a run folder's checkpoint is", "last.pth")
    torch.save(load_checkpoint(checkpoint)["model"], tmp_path / "state_dict.pth")
    code, err = _cli(
        capsys, "eval", "synthetic/time", *TINY, "--checkpoint", str(tmp_path / "state_dict.pth")
    )
    assert code == 2
    _one_clear_line(
        err, "not a timematters checkpoint", "torchvision:NAME:FILE", "model.pretrained"
    )
    # A report replaces an earlier report whole: no GradCAM of the earlier clips is left.
    report = tmp_path / "report"
    diagnose = ["diagnose", "--config", "synthetic/time", *TINY, "--checkpoint", checkpoint]
    for index in ("0", "1"):
        argv = [*diagnose, "--no-probe", "--gradcam-index", index, "--out", str(report)]
        assert main(argv) == 0
    assert sorted(p.name for p in report.glob("gradcam_*.png")) == ["gradcam_1.png"]
    code, err = _cli(capsys, *diagnose, "--no-probe", "--gradcam-index", "99", "--out", str(report))
    assert code == 2  # no map at all, without a word
    _one_clear_line(err, "--gradcam-index 99", "0 to 7")
    with pytest.raises(SystemExit) as exit_:  # a ZeroDivisionError in the probe
        main([*diagnose, "--probe-clips", "0"])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    # A run is not started in a report's folder, nor in a file.
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={report}")
    assert code == 2
    _one_clear_line(err, "already holds a diagnose report", "diagnose.json", "--overwrite")
    (tmp_path / "notes.txt").write_text("mine")
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, f"train.out={tmp_path / 'notes.txt'}"
    )
    assert code == 2
    _one_clear_line(err, "notes.txt is a file: give a folder")


def test_a_run_without_a_checkpoint_is_not_offered_a_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("a run that failed before its first checkpoint\n")
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={run}")
    assert code == 2
    _one_clear_line(err, "already holds a run", "--overwrite")
    assert "--resume" not in err


def test_predict_with_a_users_module_takes_the_configs_clips(tmp_path, monkeypatch, capsys):
    (tmp_path / "pooling.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(\n"
        "        torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3)\n"
        "    )\n"
    )
    write_video(tmp_path / "clip.mp4", numbered_frames(12))
    (tmp_path / "names.txt").write_text("a\nb\n")
    monkeypatch.chdir(tmp_path)
    predict = ["predict", "clip.mp4", "--model", "pooling:build"]
    # Its frame size is not its own: it crashed with "output (H: 0, W: 0)".
    code, err = _cli(capsys, *predict)
    assert code == 2
    _one_clear_line(err, "pooling:build takes clips of any size", "-o data.crop_size=S")
    sizes = ["--config", "videolist/time", "-o", "model.num_frames=4", "-o", "data.crop_size=32"]
    assert main([*predict, *sizes, "-o", "data.eval_short_side=32"]) == 0
    assert "original:" in capsys.readouterr().out
    code, err = _cli(
        capsys, *predict, *sizes, "-o", "data.eval_short_side=32", "--classes", "names.txt"
    )
    assert code == 2  # an IndexError with too few names; too many were used silently
    _one_clear_line(err, "2 class names for a model of 3 outputs")
    if not torch.cuda.is_available():
        code, err = _cli(capsys, *predict, "--device", "cuda")
        assert code == 2
        _one_clear_line(err, "--device cuda but CUDA is not available")


CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of "
    "which 1.2 GiB is free. Including non-PyTorch memory, this process has 77.9 GiB in use."
)


def test_running_out_of_device_memory_names_the_settings_that_need_less(
    tmp_path, capsys, monkeypatch
):
    from timematters.losses.objective import TimeModel

    def out_of_memory(self, batch, generator=None):
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(TimeModel, "forward", out_of_memory)
    out = tmp_path / "run"
    assert main(["train", "synthetic/time", *TINY, f"train.out={out}"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [
        "timematters: error: out of device memory in training step 1 (CUDA out of memory. Tried "
        "to allocate 2.00 GiB): 4 clips per pass on this device (twice that through the backbone "
        "with the debias loss); set train.accumulation=2 (the same train.batch_size in passes of "
        "half the clips), or model.grad_checkpointing=true (activations recomputed block by "
        "block), or a smaller data.crop_size or model.num_frames"
    ]


def test_evaluation_out_of_memory_names_eval_batch_size():
    from timematters.engine.distributed import OutOfDeviceMemory

    class Greedy(torch.nn.Module):
        def forward(self, video):
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    clips = [(torch.zeros(3, 4, 8, 8), 0)] * 6
    with pytest.raises(OutOfDeviceMemory, match=r"in evaluation \(6 clips a batch\)"):
        evaluate(Greedy(), DataLoader(clips, batch_size=6))
    with pytest.raises(OutOfDeviceMemory, match=r"set eval.batch_size=3 "):
        evaluate(Greedy(), DataLoader(clips, batch_size=6))


def test_diagnose_out_of_memory_names_what_to_leave_out(tmp_path, monkeypatch):
    from timematters.diagnostics import report
    from timematters.engine.distributed import OutOfDeviceMemory

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    clips = [(torch.zeros(3, 4, 8, 8), i % 2) for i in range(4)]

    class Pool(torch.nn.Module):
        def forward(self, video):
            return video.mean(dim=(2, 3, 4))[:, :2]

    monkeypatch.setattr(report, "_probe_section", out_of_memory)
    with pytest.raises(OutOfDeviceMemory, match=r"in the order probe .* \(--no-probe; "):
        report.diagnose({"pool": Pool()}, DataLoader(clips, batch_size=4), tmp_path / "a")
    monkeypatch.setattr(report, "_gradcam", out_of_memory)
    with pytest.raises(OutOfDeviceMemory, match=r"in GradCAM .*--gradcam-clips 0"):
        report.diagnose(
            {"pool": Pool()}, DataLoader(clips, batch_size=4), tmp_path / "b", probe_clips=None
        )


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    state = torch.load(tmp_path / "run/checkpoints/last.pth", weights_only=False)
    del state["model"]["cls_token"]
    state["model"]["pos_embed"] = state["model"]["pos_embed"][:, :5]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    capsys.readouterr()
    assert main(["export", str(broken), "--out", str(tmp_path / "out")]) == 2
    _one_clear_line(
        capsys.readouterr().err,
        f"{broken} does not fit timesformer_tiny_patch8_64: 1 key missing (cls_token); 1 key of "
        "another shape (pos_embed [1, 5, 24], the model's [1, 17, 24])",
    )
