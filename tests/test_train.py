"""The training loop end to end on the built-in synthetic benchmark: tiny, CPU, seconds."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from timematters.config import load_config
from timematters.engine.checkpoint import load_checkpoint, save_checkpoint
from timematters.engine.model import evaluate_checkpoint
from timematters.engine.train import train

TINY = [
    "data.dataset=synthetic",
    "data.crop_size=32",
    "data.num_workers=0",
    "data.synthetic.num_train=16",
    "data.synthetic.num_test=8",
    "model.name=timesformer_tiny_patch8_64",
    "model.num_frames=4",
    "model.drop_path_rate=0.0",
    "model.kwargs={embed_dim: 24, depth: 2, num_heads: 2}",
    "train.batch_size=4",
    "train.epochs=2",
    "train.device=cpu",
    "train.precision=fp32",
    "train.log_every=1",
    "train.progress=false",
    "train.tensorboard=false",
    "eval.batch_size=8",
    "optim.lr=0.001",
]
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
needs_torchrun = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not found")


def tiny_config(out: Path, *extra: str):
    return load_config(None, [*TINY, f"train.out={out}", *extra])


class _Killed(Exception):
    pass


def assert_resumes_exactly(
    tmp_path: Path, *extra: str, kill_at: int = 5
) -> tuple[dict[int, dict], dict[int, dict]]:
    """Train ``tiny_config(*extra)`` whole, and again killed after step ``kill_at`` and resumed
    from its last checkpoint: the resumed steps log the whole run's losses and lr. Returns the
    whole and the resumed run's records by step."""
    full = {}
    train(tiny_config(tmp_path / "full", *extra), step_callback=lambda s, r: full.update({s: r}))

    def kill(step, record):
        if step >= kill_at:  # (the first step after it that logs: a step may pass without)
            raise _Killed

    with pytest.raises(_Killed):
        train(tiny_config(tmp_path / "killed", *extra), step_callback=kill)
    resumed = {}
    train(
        tiny_config(tmp_path / "killed", *extra),
        resume=tmp_path / "killed" / "checkpoints" / "last.pth",
        step_callback=lambda s, r: resumed.update({s: r}),
    )
    first = min(resumed)  # the step after the last checkpoint before the kill
    assert first <= kill_at and sorted(resumed) == [step for step in sorted(full) if step >= first]
    for step, record in resumed.items():
        assert record["loss"] == pytest.approx(full[step]["loss"], abs=1e-6), step
        assert record["lr"] == full[step]["lr"], step
    return full, resumed


def test_train_runs_end_to_end_and_writes_the_run_folder(tmp_path):
    result = train(tiny_config(tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "eval.md", "checkpoints/last.pth"):
        assert (run / name).is_file(), name
    metrics = result["metrics"]
    assert set(metrics) == {"all", "temporal", "static"}
    assert metrics["all"]["num_clips"] == 8
    records = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any('"flow_loss"' in r and '"debias_loss"' in r and '"order_loss"' in r for r in records)
    assert any('"kind": "eval"' in r for r in records)
    # The checkpoint evaluates to the same numbers through `eval`'s path.
    again = evaluate_checkpoint(tiny_config(run), run / "checkpoints" / "last.pth")
    np.testing.assert_allclose(again.probs, result["result"].probs, atol=1e-6)
    assert again.metrics() == metrics


def test_a_flip_rate_undefined_for_a_subset_is_logged_as_null(tmp_path):
    # The static classes have no time-reversed partner: their flip rate and its interval are NaN,
    # which strict JSON cannot hold, so the log writes null (it used to stop the run at its first
    # evaluation).
    train(tiny_config(tmp_path / "run", "eval.perturbations=[shuffle, reverse]"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert final["static/flip_rate"] is None and final["static/flip_rate_ci"] == [None, None]
    assert 0 <= final["temporal/flip_rate"] <= 1


def test_killed_run_resumes_with_the_same_loss_sequence(tmp_path):
    # 16 clips / batch 4 = 4 steps per epoch; checkpoints every 3 steps and at each epoch end: a
    # kill after step 7 resumes from step 6's checkpoint, mid-epoch 2.
    extra = ["train.save_every_steps=3", "loss.debias.shuffle=per_sample"]
    _, resumed = assert_resumes_exactly(tmp_path, *extra, kill_at=7)
    assert sorted(resumed) == [7, 8]


def test_checkpoint_round_trip_and_pickle_refused(tmp_path):
    state = {"model": {"w": torch.randn(3, 2)}, "epoch": 3, "config": {"a": [1, 2]}}
    save_checkpoint(state, tmp_path / "ck.pth")
    back = load_checkpoint(tmp_path / "ck.pth")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["epoch"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"model": {}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


def test_nonfinite_loss_is_skipped_counted_and_stops_the_run(tmp_path):
    cfg = tiny_config(tmp_path / "nan", "train.max_nonfinite_steps=2", "optim.lr=1e30")
    from timematters.engine.train import NonFiniteLossError

    seen = []
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=2"):
        train(cfg, step_callback=lambda s, r: seen.append(r["nonfinite_steps"]))
    assert seen and seen[-1] >= 1


@needs_torchrun
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    # The released lr: Adam's per-element normalisation would magnify float reduction-order noise
    # in near-zero gradients at a much larger one.
    common = [*TINY, "train.epochs=1", "eval.batch_size=4", "optim.lr=1e-4"]
    config = tmp_path / "tiny.yaml"
    config.write_text("{}\n")

    def run(nproc: int, out: Path) -> dict:
        cmd = [
            TORCHRUN,
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "timematters.cli",
            "train",
            str(config),
            *common,
            f"train.out={out}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("run folder:") == 1  # rank 0 prints the closing screen
        return load_checkpoint(out / "checkpoints" / "last.pth")

    one = run(1, tmp_path / "one")
    two = run(2, tmp_path / "two")
    assert one["step"] == two["step"] == 4
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, atol=1e-5, rtol=0, msg=key)
    for key, value in one["objective"].items():
        torch.testing.assert_close(two["objective"][key], value, atol=1e-5, rtol=0, msg=key)


def _list_with_bad_videos(folder: Path, *, good: int, bad: int) -> tuple[list[str], list[str]]:
    """A video list of ``good`` decodable and then ``bad`` undecodable videos, two classes, for
    training and evaluation: (the file names, the overrides that train on it)."""
    from videos import numbered_frames, write_video

    names = [f"good{i}.mp4" for i in range(good)] + [f"bad{i}.mp4" for i in range(bad)]
    for name in names[:good]:
        write_video(folder / name, numbered_frames(10))
    for name in names[good:]:
        (folder / name).write_bytes(b"this is not a video")
    (folder / "train.txt").write_text("".join(f"{n} {i % 2}\n" for i, n in enumerate(names)))
    overrides = [
        "data.dataset=videolist",
        f"data.annotations={folder / 'train.txt'}",
        f"data.val_annotations={folder / 'train.txt'}",
        "data.train_short_side=[36, 40]",
        "data.eval_short_side=32",
        "data.test_spatial_crops=1",
        "data.max_bad_fraction=0.5",
        "loss.flow.weight=0",
    ]
    return names, overrides


@needs_torchrun
def test_two_processes_count_every_bad_video(tmp_path):
    # Each rank sees its own share of the data: the log and the limit must see both shares.
    names, data = _list_with_bad_videos(tmp_path, good=13, bad=3)
    cmd = [
        TORCHRUN,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "timematters.cli",
        "train",
        "videolist/time",
        *TINY,
        *data,
        "train.epochs=2",
        "model.num_frames=4",
        f"train.out={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "run" / "bad_videos.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["path"].rsplit("/", 1)[1] for line in lines) == names[13:]
    evaluated = json.loads((tmp_path / "run" / "eval.json").read_text())["all"]
    assert (evaluated["num_clips"], evaluated["num_bad"]) == (13, 3)
    # The test split (the same list here) names its own undecodable videos, and the summary says so.
    lines = (tmp_path / "run" / "eval_bad_videos.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["path"].rsplit("/", 1)[1] for line in lines) == names[13:]
    assert "eval_bad_videos.jsonl" in proc.stdout + proc.stderr
    # The same command again: the folder holds a finished run. Rank 0 refuses it, and rank 1
    # leaves with it (it used to die in the barrier with a transport error), one line said once.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode != 0
    said = [line for line in again.stderr.splitlines() if "timematters: error:" in line]
    assert len(said) == 1 and "already holds a run" in said[0], again.stderr[-3000:]
    assert "Connection closed" not in again.stderr


def test_init_from_says_in_the_log_what_the_load_changed(tmp_path):
    train(tiny_config(tmp_path / "a", "train.epochs=1"))
    checkpoint = tmp_path / "a" / "checkpoints" / "last.pth"
    # 8 frames from a 4-frame run: the time embedding is resized, the order head is new.
    train(tiny_config(tmp_path / "b", "train.epochs=1", "model.num_frames=8"), init_from=checkpoint)
    log = (tmp_path / "b" / "train.log").read_text()
    assert f"[train] {checkpoint}: time_embed resized from [1, 4, 24] to [1, 8, 24]" in log
    assert "TIME heads not in the checkpoint or of another size, initialised: order" in log


def test_each_micro_batch_of_an_accumulated_step_draws_its_own_shuffle(tmp_path, monkeypatch):
    """With train.accumulation, the micro-batches of a step continue one (seed, step) stream
    of frame orders: each draws its own, and the run still resumes exactly."""
    import timematters.losses.debias as debias

    drawn = []

    def recording(video, mode, generator):
        shuffled, perms = shuffle_frames(video, mode, generator)
        drawn.append(perms.clone())
        return shuffled, perms

    shuffle_frames = debias.shuffle_frames
    monkeypatch.setattr(debias, "shuffle_frames", recording)
    train(tiny_config(tmp_path / "run", "train.accumulation=2", "train.epochs=1"))
    assert len(drawn) == 8  # 16 clips in batches of 4: 4 steps of 2 micro-batches
    # (Each is one of 4! orders: two may meet by chance, not all four pairs.)
    pairs = zip(drawn[0::2], drawn[1::2], strict=True)
    assert sum(torch.equal(first, second) for first, second in pairs) < 2
    monkeypatch.undo()
    assert_resumes_exactly(tmp_path / "resume", "train.accumulation=2", "train.save_every_steps=3")


def test_a_batch_of_bad_videos_only_is_a_step_without_an_update(tmp_path):
    """An epoch keeps its steps when a batch holds only undecodable videos (it used to end the
    training after its first epoch, exit 0), and a run killed after one resumes exactly."""
    _, data = _list_with_bad_videos(tmp_path, good=7, bad=1)
    extra = [*data, "train.batch_size=1", "train.epochs=2", "train.save_every_steps=3"]
    full, _ = assert_resumes_exactly(tmp_path, *extra, kill_at=11)
    assert load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pth")["step"] == 16
    assert len(full) == 14  # 2 epochs of 8 batches, one of each all bad: no update, no record


def test_a_step_schedule_whose_milestones_the_run_never_reaches_is_noted(tmp_path, capsys):
    # A preset's milestones (20, 30) in a run shortened to 2 epochs: the lr would never fall.
    step = ["optim.schedule=step", "optim.milestones=[1, 5, 7]", "optim.warmup_epochs=0"]
    train(tiny_config(tmp_path / "run", "train.max_steps=1", *step))
    out = capsys.readouterr().out
    assert "note: optim.milestones 5, 7 are not before train.epochs=2" in out
    train(tiny_config(tmp_path / "cosine", "train.max_steps=1", "optim.schedule=cosine"))
    assert "optim.milestones" not in capsys.readouterr().out


def test_per_sample_shuffles_differ_between_ranks_and_per_batch_ones_do_not(tmp_path):
    from timematters.engine.train import shuffle_stream

    def orders(shuffle: str, rank: int) -> torch.Tensor:
        cfg = tiny_config(tmp_path, f"loss.debias.shuffle={shuffle}")
        return torch.randperm(1000, generator=shuffle_stream(cfg, step=7, rank=rank))

    # per_batch: every rank shuffles as one process would the whole batch (as released);
    # per_sample: each rank's clips get orders of their own, rank 0 the single process's.
    assert torch.equal(orders("per_batch", 0), orders("per_batch", 1))
    assert not torch.equal(orders("per_sample", 0), orders("per_sample", 1))
    assert torch.equal(orders("per_sample", 0), orders("per_batch", 0))


def test_each_rank_and_each_seed_draw_their_own_dropout_masks_on_the_cpu_too():
    from timematters.engine.train import step_seed

    def masks(seed: int = 0, rank: int = 0, step: int = 3) -> torch.Tensor:
        torch.manual_seed(step_seed(seed, rank=rank, step=step))
        return torch.rand(1000)

    # torch's CPU generator keeps a seed's low 32 bits, which were the step's alone before: every
    # rank, and every train.seed, dropped the same paths at a step.
    assert not torch.equal(masks(rank=0), masks(rank=1)) and not torch.equal(
        masks(rank=1), masks(rank=2)
    )
    assert not torch.equal(masks(seed=0), masks(seed=1)) and not torch.equal(
        masks(seed=1), masks(seed=2)
    )
    lows = {
        step_seed(s, rank=r, step=t) % 2**32
        for s in range(5)
        for r in range(8)
        for t in range(5000)
    }
    assert len(lows) == 5 * 8 * 5000  # no two (seed, rank, step) of a study share their masks
    assert step_seed(0, rank=0, step=3) == 3  # seed 0 in one process draws as it always did
