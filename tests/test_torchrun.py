"""Two processes under torchrun on the CPU (gloo), as several GPUs would run: what only rank 0
does (checkpoints, logs, a stop signal's checkpoint) reaches every rank, and an evaluation
between steps scores the model the checkpoint holds."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from test_train import TINY, TORCHRUN, needs_torchrun

from timematters.engine.checkpoint import load_checkpoint

pytestmark = needs_torchrun
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 16 steps an epoch on two processes, one log line each: time to act while it trains.
LONGER = [*TINY, "data.synthetic.num_train=64", "train.epochs=3"]


def _train_command(out: Path, *extra: str) -> list[str]:
    cli = ["-m", "timematters.cli", "train", "synthetic/time", *LONGER, f"train.out={out}"]
    return [TORCHRUN, "--standalone", "--nproc_per_node=2", *cli, *extra]


def _train_steps(run: Path) -> list[int]:
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [record["step"] for record in map(json.loads, lines) if record.get("kind") != "eval"]


def _start_and_wait(command: list[str], run: Path, *, steps: int) -> subprocess.Popen:
    """Start ``command`` as a job of its own (a process group, as a scheduler's job step) and
    return once it has logged ``steps`` steps."""
    process = subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    while process.poll() is None and len(_train_steps(run)) < steps:
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1][-3000:]
    return process


def test_sigterm_to_the_whole_job_stops_both_ranks_after_the_step_with_a_checkpoint(tmp_path):
    # scancel signals every process of the job, and torchrun forwards it to its workers again:
    # the repeat is the same request, not "stop at once" (which lost the step's checkpoint).
    run = tmp_path / "run"
    process = _start_and_wait(_train_command(run), run, steps=5)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    stopped = _train_steps(run)[-1]
    assert f"timematters: stopped by SIGTERM after step {stopped}" in stderr, stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pth")["step"] == stopped
    assert "Connection" not in stderr and "[rank" not in stderr


def test_a_checkpoint_rank_0_cannot_write_is_one_line_said_once(tmp_path):
    run = tmp_path / "run"
    process = _start_and_wait(_train_command(run), run, steps=2)
    (run / "checkpoints" / "last.pth").mkdir(parents=True)  # the epoch's checkpoint cannot go
    _, stderr = process.communicate(timeout=120)
    said = [line for line in stderr.splitlines() if line.startswith("timematters: error:")]
    assert len(said) == 1 and "cannot write" in said[0] and "last.pth" in said[0], stderr[-3000:]
    assert "[rank1]" not in stderr and "Connection" not in stderr  # rank 1 leaves with it


def test_an_evaluation_between_steps_scores_batchnorm_with_the_checkpoints_statistics(tmp_path):
    # DDP hands rank 0's buffers to the others at each training forward: each rank's last batch
    # leaves its own running statistics, and rank 1's share of the test clips was scored with
    # those, by a model no checkpoint holds.
    (tmp_path / "bnnet.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(num_classes):
                return nn.Sequential(
                    nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                    nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, num_classes),
                )
            """
        )
    )
    (tmp_path / "scores.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys
            import numpy as np
            sys.path.insert(0, os.getcwd())
            from timematters.config import load_config
            from timematters.engine.model import evaluate_checkpoint
            from timematters.engine.train import train

            overrides = {[*TINY, "model.name=bnnet:build", "model.kwargs={}", "train.out=run"]!r}
            cfg = load_config("synthetic/baseline", overrides)
            if sys.argv[1:] == ["eval"]:  # one process, from the checkpoint
                probs = evaluate_checkpoint(cfg, "run/checkpoints/last.pth").probs
                np.save("eval_probs.npy", probs)
            else:
                result = train(cfg)
                if os.environ["RANK"] == "0":
                    np.save("train_probs.npy", result["result"].probs)
            """
        )
    )
    launch = [TORCHRUN, "--standalone", "--nproc_per_node=2", "scores.py"]
    for command in (launch, [sys.executable, "scores.py", "eval"]):
        done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    trained, evaluated = (np.load(tmp_path / f"{name}_probs.npy") for name in ("train", "eval"))
    np.testing.assert_allclose(trained, evaluated, rtol=0, atol=1e-6)
