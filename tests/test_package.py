"""What someone who only ran `pip install` gets: presets, `predict`, run folders they can rely on,
trackers, `--version`, a complete wheel and sdist."""

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY, tiny_config
from videos import moving_square_frames, write_video

import timematters
from timematters.cli import main
from timematters.config import list_presets
from timematters.data.video import open_video
from timematters.diagnostics.predict import Prediction, predict, summarise
from timematters.engine.checkpoint import load_checkpoint
from timematters.engine.model import load_model
from timematters.engine.train import train

ROOT = Path(__file__).parents[1]


def test_configs_list_show_and_copy(tmp_path, capsys):
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == list_presets() and "synthetic/time" in listed and len(listed) == 28
    assert main(["configs", "show", "synthetic/time", "train.epochs=3"]) == 0
    shown = capsys.readouterr().out
    assert "epochs: 3" in shown and "relative_fraction: 0.01" in shown  # defaults filled in
    assert main(["configs", "copy", "ssv2/timesformer_time", str(tmp_path)]) == 0
    assert (tmp_path / "timesformer_time.yaml").read_text().startswith("# timematters train")
    assert main(["configs", "copy", "ssv2/timesformer_time", str(tmp_path)]) == 2  # no overwrite


def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"timematters {timematters.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "timematters", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"timematters {timematters.__version__}"


def test_output_piped_into_a_closed_pipe_stops_quietly():
    # `timematters configs list | head -1` once head has gone: every write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "timematters", "configs", "list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 141  # 128 + SIGPIPE, as a Unix tool killed by the signal


def test_progress_bars_update_rarely_in_a_log_file_and_often_in_a_terminal(tmp_path):
    from timematters.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    with open(tmp_path / "slurm.log", "w") as log, progress_bar(total=1, file=log) as bar:
        assert bar.mininterval == 30  # not tqdm's 0.1 s: megabytes of log over a long run
    with progress_bar(total=1, file=Terminal()) as bar:
        assert bar.mininterval == 0.1
    with open(tmp_path / "slurm.log", "w") as log:
        assert progress_bar(total=1, file=log, mininterval=5).mininterval == 5


def test_a_training_run_logged_to_a_file_redraws_its_bar_rarely(tmp_path, capsys):
    # Each step's loss in the bar forced a redraw: a demo's redirected log was 1.25 MB of bars.
    train(tiny_config(tmp_path / "run", "train.progress=true", "train.epochs=1"))
    redraws = capsys.readouterr().err.count("epoch 1/1")
    assert 1 <= redraws <= 3  # shown, closed; not once per step (4 steps)


def test_every_argument_has_help():
    from timematters.cli import _parser

    def walk(parser):
        for action in parser._actions:
            if action.dest in ("help", "version"):
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.help is None:
                yield f"{parser.prog}: {action.dest}"

    assert not list(walk(_parser()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    result = train(
        tiny_config(
            run,
            "data.crop_size=32",
            "train.epochs=3",
            "train.eval_every_epochs=1",
            "loss.flow.weight=0",
        )
    )
    return run, result


def test_best_pth_holds_the_best_evaluation(trained):
    run, result = trained
    evals = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    best = max(evals, key=lambda r: r["all/top1"])
    best_state = load_checkpoint(run / "checkpoints" / "best.pth")
    assert best_state["epoch"] == best["epoch"] and best_state["best_top1"] == best["all/top1"]
    assert load_checkpoint(run / "checkpoints" / "last.pth")["best_epoch"] == best["epoch"]
    assert "best.pth" in result["summary"] and "train.log" in result["summary"]
    assert (run / "train.log").read_text().count("run folder:") == 1


def test_resume_auto_starts_a_new_run_or_continues_a_killed_one(tmp_path, capsys):
    base = ["train", "synthetic/time", *TINY, "train.epochs=2", "train.save_every_steps=2"]
    empty = tmp_path / "empty"
    assert main([*base, f"train.out={empty}", "--resume", "auto"]) == 0
    assert "no checkpoint" in capsys.readouterr().out
    full = [json.loads(x) for x in (empty / "metrics.jsonl").read_text().splitlines()]

    class Killed(Exception):
        pass

    def kill_at_5(step, record):
        if step == 5:
            raise Killed

    from timematters.config import load_config

    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        train(
            load_config(
                "synthetic/time",
                [*TINY, "train.epochs=2", "train.save_every_steps=2", f"train.out={killed}"],
            ),
            step_callback=kill_at_5,
        )
    assert main([*base, f"train.out={killed}", "--resume", "auto"]) == 0
    again = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]

    def losses(records):
        return [(r["kind"], r["step"], r.get("loss"), r.get("all/top1")) for r in records]

    assert losses(again) == losses(full)
    # Only best.pth left (last.pth deleted): the run goes on from it, nothing thrown away.
    (killed / "checkpoints" / "last.pth").unlink()
    assert main([*base, f"train.out={killed}", "--resume", "auto"]) == 0
    assert "last.pth is missing: continuing from" in capsys.readouterr().out
    again = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert losses(again) == losses(full)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    frames = moving_square_frames(16, height=48, width=64)
    return {
        ".mp4": write_video(folder / "clip.mp4", frames),
        ".webm": write_video(folder / "clip.webm", frames),
    }


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_predict_prints_top5_for_a_video(trained, videos, capsys, tmp_path, suffix):
    run, _ = trained
    checkpoint = run / "checkpoints" / "last.pth"
    argv = ["predict", str(videos[suffix]), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--explain", str(tmp_path / "explain")]) == 0
    out = capsys.readouterr().out
    assert "original:" in out and "shuffle:" in out and "reverse:" in out
    assert out.splitlines()[1].count("(") == 5  # top-5 with probabilities
    assert (tmp_path / "explain" / "clip_gradcam.gif").is_file()
    assert (tmp_path / "explain" / "clip_gradcam.png").is_file()
    assert main([*argv, "--json", "--top-k", "3", "--perturb", "freeze,local"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["top"]) == 3 and set(record["perturbed"]) == {"freeze", "local"}
    assert sum(p for _, p in record["top"]) <= 1.0 + 1e-6


def test_predict_makes_the_views_the_run_was_evaluated_on(tmp_path, capsys):
    """Its frames (dense here), short side (larger than the crop), temporal views, spatial crops
    and their aggregation: predict's probabilities are the evaluation's on the same video, on
    the clip and reversed (it used one centre crop of the segment centres at the crop's size)."""
    from timematters.engine.model import evaluate_checkpoint

    for i in range(4):
        write_video(tmp_path / f"v{i}.mp4", moving_square_frames(20, 48, 64, step=(i % 2 + 1, 1)))
    (tmp_path / "train.txt").write_text("".join(f"v{i}.mp4 {i % 2}\n" for i in range(4)))
    (tmp_path / "val.txt").write_text("v3.mp4 1\n")
    data = [
        "data.dataset=videolist",
        f"data.annotations={tmp_path / 'train.txt'}",
        f"data.val_annotations={tmp_path / 'val.txt'}",
        "data.sampling=dense",
        "data.dense_stride=3",
        "data.train_short_side=[40, 44]",
        "data.eval_short_side=44",
        "data.test_spatial_crops=3",
        "data.test_temporal_views=2",
        "eval.aggregation=softmax",
        "eval.perturbations=[shuffle, reverse]",
        "loss.flow.weight=0",
        "train.epochs=1",
    ]
    cfg = tiny_config(tmp_path / "run", *data)
    train(cfg)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    evaluated = evaluate_checkpoint(cfg, checkpoint)
    predicted = predict(load_model(checkpoint), tmp_path / "v3.mp4", top_k=2)
    # Two dense windows, stride 3, from the first and the last start.
    assert predicted.frames == [0, 3, 6, 9, 10, 13, 16, 19] and predicted.views == 6
    probs = dict(predicted.top)
    expected = evaluated.probs[0]
    assert [probs[name] for name in evaluated.classes] == pytest.approx(expected, abs=1e-5)
    reversed_probs = dict(predicted.perturbed["reverse"])
    assert [reversed_probs[name] for name in evaluated.classes] == pytest.approx(
        evaluated.perturbed["reverse"][0], abs=1e-5
    )
    # Exported to a transformers folder, it makes the same clip (export.json says how).
    pytest.importorskip("transformers")
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "hf")]) == 0
    again = predict(load_model(f"hf:{tmp_path / 'hf'}"), tmp_path / "v3.mp4", top_k=2)
    assert again.frames == predicted.frames
    assert [dict(again.top)[name] for name in evaluated.classes] == pytest.approx(
        expected, abs=1e-5
    )


def test_predict_on_an_array_equals_predict_on_its_file(trained, videos):
    run, _ = trained
    model = load_model(run / "checkpoints" / "last.pth")
    reader = open_video(videos[".mp4"])
    array = reader.get_frames(np.arange(reader.num_frames))  # the whole decoded video
    from_file = predict(model, videos[".mp4"])
    from_array = predict(model, array)
    assert from_array.top == from_file.top and from_array.perturbed == from_file.perturbed
    assert from_array.frames == from_file.frames


def test_predict_takes_folders_and_lists(trained, videos, capsys, tmp_path):
    run, _ = trained
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos['.mp4']} 3\n{videos['.webm']}\n")
    checkpoint = str(run / "checkpoints" / "last.pth")
    assert main(["predict", str(listing), "--checkpoint", checkpoint, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["predict", str(videos[".mp4"].parent), "--checkpoint", checkpoint]) == 0
    out = capsys.readouterr().out
    assert out.count("original:") == 2 and "over 2 videos (no labels needed):" in out
    # A training list elsewhere, its paths relative to the data's root: as in training, the
    # config's data.root; without it they are read relative to the list's folder, and said so.
    elsewhere = tmp_path / "lists" / "val.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("clip.mp4 3\nclip.webm 1\n")
    root = f"data.root={videos['.mp4'].parent}"
    config = ["--config", str(run / "config.yaml"), "-o", root]
    assert main(["predict", str(elsewhere), "--checkpoint", checkpoint, *config, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["predict", str(elsewhere), "--checkpoint", checkpoint]) == 2
    err = capsys.readouterr().err
    assert "none of its 2 videos is there" in err and "relative to its folder" in err
    # One of them gone: the other is predicted, the missing one skipped and counted (exit 1).
    elsewhere.write_text("clip.mp4 3\ngone.mp4 1\n")
    assert main(["predict", str(elsewhere), "--checkpoint", checkpoint, *config]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("original:") == 1 and "gone.mp4" in captured.err


def test_a_summary_over_videos_counts_changed_classes_without_labels():
    def prediction(top: str, p: float, shuffled: str, after: float) -> Prediction:
        return Prediction("v.mp4", [(top, p)], {"shuffle": [(shuffled, 0.9)]}, {"shuffle": after})

    summary = summarise([prediction("a", 0.8, "b", 0.1), prediction("a", 0.6, "a", 0.5)])
    assert summary.splitlines() == [
        "over 2 videos (no labels needed):",
        "  shuffle:   top class changed for 1 (50%); its mean probability 0.70 -> 0.30",
    ]


def test_predict_skips_and_reports_videos_it_cannot_decode(trained, videos, capsys, tmp_path):
    run, _ = trained
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    checkpoint = str(run / "checkpoints" / "last.pth")
    argv = ["predict", str(videos[".mp4"]), str(broken), str(videos[".webm"]), "--json"]
    assert main([*argv, "--checkpoint", checkpoint]) == 1
    captured = capsys.readouterr()
    assert [r["source"] for r in json.loads(captured.out)] == [
        str(videos[".mp4"]),
        str(videos[".webm"]),
    ]
    assert "Traceback" not in captured.err
    assert f"skipped {broken}: cannot read" in captured.err
    assert "1 of 3 videos could not be decoded" in captured.err


def test_wandb_gets_the_same_records_as_metrics_jsonl(tmp_path, monkeypatch):
    logged = []

    class FakeRun:
        name, id = "run", "x"

        def log(self, record, step):
            logged.append((step, record))

        def finish(self):
            logged.append("finished")

    class FakeWandb:
        @staticmethod
        def init(**kwargs):
            assert kwargs["resume"] == "allow" and kwargs["project"] == "timematters"
            return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    result = train(tiny_config(tmp_path / "run", "train.epochs=1", "train.wandb=true"))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == "finished" and len(logged) == len(records) + 1
    assert logged[0][1]["train/loss"] == records[0]["loss"]
    assert "Weights & Biases" in result["summary"]


def test_tensorboard_is_stated_when_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    result = train(tiny_config(tmp_path / "run", "train.epochs=1", "train.tensorboard=true"))
    assert "TensorBoard" in result["summary"] and "pip install tensorboard" in result["summary"]


def _build(kind: str, out: Path) -> Path:
    """The package's wheel or sdist, built offline with setuptools' PEP 517 backend."""
    code = f"import sys; from setuptools import build_meta as b; print(b.build_{kind}(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_wheel_ships_every_preset_and_the_sdist_runs_the_tests(tmp_path):
    pytest.importorskip("setuptools")
    wheel = _build("wheel", tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    presets = {
        n.removeprefix("timematters/configs/").removesuffix(".yaml")
        for n in names
        if n.startswith("timematters/configs/")
    }
    assert presets == set(list_presets())
    assert any(n.endswith("LICENSE") for n in names)
    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    for needed in (
        "LICENSE",
        "README.md",
        "tests/videos.py",
        "tests/test_train.py",
        "timematters/configs/synthetic/time.yaml",
        "docs/REFERENCE.md",
    ):
        assert needed in members, needed


def test_light_imports():
    # `timematters --help` and the losses need neither OpenCV, PyAV, grad-cam nor matplotlib.
    code = (
        "import sys, timematters.cli, timematters.losses, timematters.engine.train; "
        "heavy = {'cv2', 'av', 'pytorch_grad_cam', 'matplotlib', 'transformers', 'scipy'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert torch  # the suite's own import
