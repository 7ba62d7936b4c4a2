"""Runs that are killed, stopped and resumed compute exactly what an uninterrupted run computes;
run folders hold one run; a resume refuses a changed run."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import TINY, tiny_config

from timematters.config import ConfigError
from timematters.engine.checkpoint import load_checkpoint
from timematters.engine.runs import ResumeMismatch, RunFolderInUse, StopSignals
from timematters.engine.train import train

# Drop path on (the presets' default), a checkpoint at every step, an evaluation every epoch.
RECIPE = [
    "model.drop_path_rate=0.1",
    "data.synthetic.num_train=32",
    "data.synthetic.num_test=24",
    "train.epochs=3",
    "train.save_every_steps=1",
    "train.eval_every_epochs=1",
]


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without the timing, which differs between runs."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "clips_per_s"} for line in lines]


class _Killed(Exception):
    pass


def test_resume_mid_epoch_with_drop_path_is_exact(tmp_path):
    full = train(tiny_config(tmp_path / "full", *RECIPE))

    def kill_at_11(step, record):
        if step == 11:
            raise _Killed  # step 11 is logged, its checkpoint not written: mid-epoch 2

    with pytest.raises(_Killed):
        train(tiny_config(tmp_path / "killed", *RECIPE), step_callback=kill_at_11)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pth")["step"] == 10
    resumed = train(
        tiny_config(tmp_path / "killed", *RECIPE),
        resume=tmp_path / "killed" / "checkpoints" / "last.pth",
    )
    assert resumed["steps"] == full["steps"] == 24
    assert _records(tmp_path / "killed") == _records(tmp_path / "full")  # every step once, equal
    assert resumed["metrics"] == full["metrics"]


def test_tensorboard_shows_every_step_once_after_a_resume(tmp_path):
    """What the killed run gave TensorBoard after its checkpoint is hidden (its purge step), as
    metrics.jsonl cuts it: the curves are the uninterrupted run's, not a zigzag."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    recipe = [*RECIPE, "train.epochs=2", "train.save_every_steps=4", "train.tensorboard=true"]
    train(tiny_config(tmp_path / "full", *recipe))

    def kill_at_11(step, record):
        if step == 11:
            raise _Killed  # steps 9-11 given to TensorBoard after the checkpoint at step 8

    with pytest.raises(_Killed):
        train(tiny_config(tmp_path / "killed", *recipe), step_callback=kill_at_11)
    last = tmp_path / "killed" / "checkpoints" / "last.pth"
    train(tiny_config(tmp_path / "killed", *recipe), resume=last)

    def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
        events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        tags = [tag for tag in events.Tags()["scalars"] if not tag.endswith("clips_per_s")]
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}

    full, resumed = curves(tmp_path / "full"), curves(tmp_path / "killed")
    assert resumed.keys() == full.keys() and "train/loss" in full and "eval/all/top1" in full
    for tag in full:
        assert [step for step, _ in resumed[tag]] == [step for step, _ in full[tag]], tag
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in full[tag]]), tag


def _command(out: Path, *extra: str) -> list[str]:
    overrides = [*TINY, *RECIPE, f"train.out={out}", *extra]
    return [sys.executable, "-m", "timematters.cli", "train", "synthetic/time", *overrides]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, workers):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = [f"data.num_workers={workers}", "train.epochs=6"]
    subprocess.run(_command(tmp_path / "full", *extra), env=env, check=True, capture_output=True)

    run = tmp_path / "killed"
    rng = random.Random(workers)
    kills, attempts = 0, 0
    while True:
        resume = ["--resume"] if (run / "checkpoints" / "last.pth").is_file() else []
        process = subprocess.Popen(
            _command(run, *extra) + resume,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        attempts += 1
        if kills < 6:
            # Once it trains (a new line in the log), kill it at a random moment: during a step,
            # a checkpoint write (one per step) or an end-of-epoch evaluation.
            start = _lines(run / "metrics.jsonl")
            while process.poll() is None and _lines(run / "metrics.jsonl") <= start:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            if process.poll() is None:
                process.kill()
                kills += 1
        _, stderr = process.communicate(timeout=300)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
        assert attempts < 30
    assert kills >= 5
    assert not list((run / "checkpoints").glob(".*.tmp"))  # orphaned writes were cleaned up
    assert _records(run) == _records(tmp_path / "full")
    ours = json.loads((run / "eval.json").read_text())
    assert ours == json.loads((tmp_path / "full" / "eval.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True])
def test_sigterm_stops_with_a_checkpoint_that_resumes_exactly(tmp_path, group):
    """To the process, or (``group``) to every process of the job with loader workers, as Slurm's
    scancel and Ctrl-C signal: the workers leave the signal to the main process (one killed by it
    crashed the run before its checkpoint)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_command(tmp_path / "full"), env=env, check=True, capture_output=True)
    run = tmp_path / "stopped"
    workers = ["data.num_workers=2"] if group else []
    process = subprocess.Popen(
        _command(run, "train.save_every_steps=0", *workers),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
    )
    while process.poll() is None and _lines(run / "metrics.jsonl") < 5:
        time.sleep(0.01)
    if group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "SIGTERM received" in stdout
    assert "timematters: stopped by SIGTERM after step" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr and "error" not in stderr  # asked for: no error
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert 0 < state["step"] < 24 and state["final_eval_lines"] is None
    done = subprocess.run(
        _command(run, "train.save_every_steps=0") + ["--resume"], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert _records(run) == _records(tmp_path / "full")


@pytest.mark.slow
def test_a_second_signal_stops_at_once(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        _command(run, "train.epochs=50"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    while process.poll() is None and _lines(run / "metrics.jsonl") < 3:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode in (-signal.SIGINT, 128 + signal.SIGINT)


def test_a_folder_holding_a_run_is_refused_unless_overwritten(tmp_path):
    cfg = tiny_config(tmp_path / "run", "train.epochs=1")
    train(cfg)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(RunFolderInUse, match="already holds a run.*--resume.*--overwrite"):
        train(cfg)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # nothing touched
    (tmp_path / "run" / "notes.txt").write_text("mine")
    # An overwrite that is refused before it begins (a batch larger than the data) keeps the
    # run it would have replaced, file for file.
    files = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*")
             if p.is_file() and p.name != ".lock"}  # fmt: skip
    with pytest.raises(ValueError, match="batch"):
        train(
            tiny_config(tmp_path / "run", "train.epochs=1", "train.batch_size=64"), overwrite=True
        )
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*")
             if p.is_file() and p.name != ".lock"}  # fmt: skip
    assert after == files
    train(cfg, overwrite=True)
    assert len(_records(tmp_path / "run")) == len(before.splitlines())  # replaced, not appended
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only the run's files go
    assert not (tmp_path / "run" / ".replaced").exists()


@pytest.mark.parametrize(
    "change, key",
    [
        ("train.batch_size=8", "train.batch_size"),
        ("train.epochs=3", "train.epochs"),
        ("data.synthetic.num_train=24", "data.synthetic.num_train"),
        ("optim.lr=0.01", "optim.lr"),
    ],
)
def test_resume_refuses_a_changed_run_before_touching_it(tmp_path, change, key):
    run = tmp_path / "run"
    train(tiny_config(run, "train.epochs=2", "train.max_steps=3"))
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(ResumeMismatch, match=key) as error:
        train(
            tiny_config(run, "train.epochs=2", change),
            resume=run / "checkpoints" / "last.pth",
        )
    assert "--init-from" in str(error.value)
    assert (run / "config.yaml").read_text() == config_before


def test_resume_may_change_where_to_stop_and_how_much_to_log(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, "train.epochs=2", "train.max_steps=3"))
    result = train(
        tiny_config(run, "train.epochs=2", "data.num_workers=1", "train.progress=true"),
        resume=run / "checkpoints" / "last.pth",
    )
    assert result["steps"] == 8
    assert [r["step"] for r in _records(run) if r["kind"] == "train"] == list(range(1, 9))


def test_a_max_steps_stop_then_resume_keeps_the_best_checkpoint_of_the_run_never_stopped(tmp_path):
    recipe = [*RECIPE[:3], "train.epochs=2", "train.eval_every_epochs=1"]
    train(tiny_config(tmp_path / "full", *recipe))
    stopped = tmp_path / "stopped"
    train(tiny_config(stopped, *recipe, "train.max_steps=5"))  # mid-epoch 1, then its evaluation
    # That evaluation is no epoch's end: before, it became best.pth, which the resume kept.
    assert not (stopped / "checkpoints" / "best.pth").exists()
    train(tiny_config(stopped, *recipe), resume=stopped / "checkpoints" / "last.pth")
    assert _records(stopped) == _records(tmp_path / "full")
    best, expected = (
        load_checkpoint(r / "checkpoints" / "best.pth") for r in (stopped, tmp_path / "full")
    )
    assert best["step"] == expected["step"]
    for key, value in expected["model"].items():
        assert torch.equal(best["model"][key], value), key


def test_resume_of_a_finished_run_does_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    first = train(tiny_config(run, "train.epochs=1"))
    before = (run / "metrics.jsonl").read_text()
    again = train(tiny_config(run, "train.epochs=1"), resume=run / "checkpoints" / "last.pth")
    assert again["metrics"] == first["metrics"] and again["steps"] == first["steps"]
    assert (run / "metrics.jsonl").read_text() == before
    assert "nothing left to do" in capsys.readouterr().out


def test_a_resume_continues_in_the_checkpoints_own_folder(tmp_path):
    # Resumed elsewhere, the run's history (metrics, best.pth) stayed behind; a finished run
    # resumed elsewhere failed looking for an eval.json that was never written there.
    run = tmp_path / "run"
    train(tiny_config(run, "train.epochs=1"))
    with pytest.raises(ConfigError, match=r"continues the run in .*run, but train.out=.*other"):
        train(
            tiny_config(tmp_path / "other", "train.epochs=1"),
            resume=run / "checkpoints" / "last.pth",
        )
    assert not (tmp_path / "other").exists()


def test_a_loose_checkpoint_continues_in_a_folder_of_its_own(tmp_path):
    import shutil

    train(tiny_config(tmp_path / "a", "train.max_steps=4"))  # 2 epochs of 4 steps, stopped at 4
    loose = tmp_path / "loose.pth"
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.pth", loose)
    other = tmp_path / "b"
    train(tiny_config(other, "train.epochs=1", "train.seed=1"))
    before = {p.name: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    # Into another run's folder: refused, the run there untouched (its log, best.pth, config).
    with pytest.raises(RunFolderInUse, match=r"already holds a run .*folder of its own: resume"):
        train(tiny_config(other), resume=loose)
    assert {p.name: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    # Into a new folder: it goes on there.
    result = train(tiny_config(tmp_path / "new"), resume=loose)
    assert result["steps"] == 8


def test_under_torchrun_a_repeat_of_the_signal_is_the_same_request(monkeypatch, capsys):
    # torchrun forwards to its workers the signal the scheduler sent them already.
    raised = []
    monkeypatch.setattr(signal, "raise_signal", raised.append)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    stop = StopSignals()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    stop._handle(signal.SIGTERM, None)
    stop._handle(signal.SIGTERM, None)
    assert stop.requested == signal.SIGTERM and raised == []
    stop._first_at -= StopSignals.REPEAT_S  # later, it is someone asking again: at once
    stop._handle(signal.SIGTERM, None)
    assert raised == [signal.SIGTERM]
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # one process: a second signal is at once
    alone = StopSignals()
    alone._handle(signal.SIGINT, None)
    alone._handle(signal.SIGINT, None)
    assert raised == [signal.SIGTERM, signal.SIGINT]


def test_a_resume_from_an_earlier_checkpoint_then_a_kill_still_resumes_exactly(tmp_path):
    # --resume best.pth takes the run back to it and cuts the log to match; the newer last.pth
    # left in place was what the next --resume took, past the end of the cut log (steps lost).
    extra = ["train.epochs=4"]  # 4 steps an epoch, a checkpoint at each epoch's end
    train(tiny_config(tmp_path / "full", *extra))
    run, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"

    def kill_after(last_step: int):
        def kill(step, record):
            if step >= last_step:
                raise _Killed

        return kill

    with pytest.raises(_Killed):
        train(tiny_config(run, *extra), step_callback=kill_after(6))
    shutil.copy(checkpoints / "last.pth", checkpoints / "earlier.pth")  # step 4
    with pytest.raises(_Killed):  # on to step 14: last.pth holds step 12
        train(
            tiny_config(run, *extra), resume=checkpoints / "last.pth", step_callback=kill_after(14)
        )
    with pytest.raises(_Killed):  # back to step 4, killed before the step-8 checkpoint
        train(
            tiny_config(run, *extra),
            resume=checkpoints / "earlier.pth",
            step_callback=kill_after(6),
        )
    assert load_checkpoint(checkpoints / "last.pth")["step"] == 4
    train(tiny_config(run, *extra), resume=checkpoints / "last.pth")
    assert _records(run) == _records(tmp_path / "full")


def test_a_resume_that_changes_the_decoder_says_the_numbers_move_a_little(tmp_path):
    from timematters.engine.runs import resume_notes

    saved = {"data": {"decoder": "video"}, "train": {"compile": False}}
    cfg = tiny_config(tmp_path, "data.decoder=frames")
    (note,) = resume_notes(saved, cfg)
    assert note.startswith("data.decoder was 'video', now 'frames': JPEG frames")
    assert "close to, not exactly as, one never stopped" in note
    assert resume_notes({"data": {"decoder": "frames"}}, cfg) == []
