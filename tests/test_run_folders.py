"""A run folder under real jobs: a live run's folder is locked against a second command, ``--resume
auto`` replaces only a partial run, a kill between the two epoch checkpoints leaves them
consistent, unwritable folders and undecodable test videos stop a run early and stay stopped,
and a shuffle test's draws do not depend on how the clips were split across processes."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from test_errors import _bad_training_clips, _one_clear_line
from test_train import TINY, _Killed, tiny_config

import timematters.engine.checkpoint as engine_checkpoint
from timematters.backbones import create_backbone
from timematters.cli import main
from timematters.config import EvalConfig
from timematters.data.collate import TooManyBadVideos
from timematters.engine import runs
from timematters.engine.checkpoint import load_checkpoint
from timematters.engine.evaluate import evaluate
from timematters.engine.runs import hold_run_folder
from timematters.engine.train import train


def _cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_folder_a_run_is_training_in_refuses_a_second_command(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("the live run's\n")
    (out / "train.log").write_text("the live run's\n")
    with hold_run_folder(out):  # as a run still going holds it (another job, say)
        assert "pid " in (out / runs.LOCK_FILE).read_text()
        for extra in (["--resume", "auto"], ["--overwrite"], []):
            code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={out}", *extra)
            assert code == 2
            _one_clear_line(err, f"{out} is in use by a run still going (pid ", "wait for it")
        assert (out / "config.yaml").read_text() == "the live run's\n"  # nothing touched
        assert (out / "train.log").read_text() == "the live run's\n"
    assert not (out / runs.LOCK_FILE).exists()  # released with the run
    assert main(["train", "synthetic/time", *TINY, "train.epochs=1", f"train.out={out}",
                 "--resume", "auto"]) == 0  # fmt: skip


def test_resume_auto_replaces_a_partial_run_but_never_another_commands_output(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "seed0" / "baseline" / "checkpoints").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "report.md").write_text("a demo's report\n")
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, f"train.out={out}", "--resume", "auto"
    )
    assert code == 2
    _one_clear_line(err, f"{out} already holds a demo (metrics.json, report.md, seed0)")
    assert (out / "report.md").is_file() and (out / "seed0" / "baseline").is_dir()


def test_a_kill_between_the_best_and_last_checkpoints_leaves_them_consistent(tmp_path, monkeypatch):
    out = tmp_path / "run"
    # A checkpoint every step: the kill comes after the epoch's last step was saved.
    cfg = tiny_config(
        out, "train.epochs=3", "train.eval_every_epochs=1", "train.save_every_steps=1"
    )
    copy = engine_checkpoint.shutil.copyfile

    def killed_copy(*args, **kwargs):  # the first epoch's evaluation is the best so far
        raise _Killed

    monkeypatch.setattr(engine_checkpoint.shutil, "copyfile", killed_copy)
    with pytest.raises(_Killed):
        train(cfg)
    monkeypatch.setattr(engine_checkpoint.shutil, "copyfile", copy)
    train(cfg, resume=out / "checkpoints" / "last.pth")
    last = load_checkpoint(out / "checkpoints" / "last.pth")
    best = load_checkpoint(out / "checkpoints" / "best.pth")
    assert best["epoch"] == last["best_epoch"] and best["best_top1"] == last["best_top1"]
    assert (
        f"[train] resumed {out / 'checkpoints' / 'last.pth'}: step 4, epoch 0"
        in (out / "train.log").read_text()
    )


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # As root every folder is writable, so the permission is what os.access answers.
    monkeypatch.setattr(runs.os, "access", lambda path, mode: False)
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, f"train.out={tmp_path / 'ro' / 'run'}"
    )
    assert code == 2
    _one_clear_line(err, f"{tmp_path / 'ro' / 'run'}: cannot write there (in {tmp_path})")
    assert not (tmp_path / "ro").exists()


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    def full_disk(state, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2101888")

    monkeypatch.setattr("timematters.engine.checkpoint.torch.save", full_disk)
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={tmp_path / 'run'}")
    assert code == 1
    # The first checkpoint: there is nothing to resume yet.
    _one_clear_line(err, "cannot write ", "last.pth ([enforce fail at", "then start the run again")


def test_undecodable_test_videos_stop_a_run_at_its_first_evaluation_and_on_resume(
    tmp_path, monkeypatch
):
    _bad_training_clips(monkeypatch, test_bad=[1, 5])  # 2 of 8, above 1%
    out = tmp_path / "run"
    cfg = tiny_config(out, "train.epochs=3", "train.eval_every_epochs=1")
    with pytest.raises(TooManyBadVideos, match=r"2 of 8 videos .*/eval_bad_videos.jsonl"):
        train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in records if r["kind"] == "eval") == 1  # not after all epochs
    # A run its final evaluation stopped stays stopped when resumed ("nothing left to do").
    cfg = tiny_config(tmp_path / "once", "train.epochs=1")
    with pytest.raises(TooManyBadVideos):
        train(cfg)
    with pytest.raises(TooManyBadVideos, match="2 of 8 videos"):
        train(cfg, resume=tmp_path / "once" / "checkpoints" / "last.pth")


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, count, indices=None):
        torch.manual_seed(1)
        self.videos = torch.randn(count, 3, 4, 16, 16)
        self.indices = list(range(count)) if indices is None else indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        return {"video": self.videos[index], "label": index % 3, "index": index}


def test_a_clips_shuffle_is_the_same_however_the_clips_are_split(tmp_path):
    # Two processes see every other clip; each clip must get the frame order it gets in one.
    torch.manual_seed(0)
    kwargs = dict(num_frames=4, img_size=16, embed_dim=16, depth=1, num_heads=2)
    model = create_backbone("timesformer_tiny_patch8_64", num_classes=3, **kwargs).eval()
    model.time_embed.data.normal_(0, 1)  # it reads the order: a shuffle changes its outputs
    settings = EvalConfig(bootstrap_samples=20)

    def run(indices, batch_size):
        data = _Indexed(10, indices)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
        return evaluate(model, loader, classes=["a", "b", "c"], settings=settings)

    whole = run(None, 4)
    shards = [run(list(range(rank, 10, 2)), 3) for rank in (0, 1)]
    for shard in shards:
        rows = shard.indices
        torch.testing.assert_close(shard.perturbed["shuffle"], whole.perturbed["shuffle"][rows])
    assert not torch.allclose(
        torch.as_tensor(whole.perturbed["shuffle"]), torch.as_tensor(whole.probs)
    )
    # Clips in another order (two processes' shards gathered) are scored in dataset order.
    reordered = run([1, 3, 5, 7, 9, 0, 2, 4, 6, 8], 5)
    assert list(reordered.indices) == list(range(10))
    assert reordered.metrics() == whole.metrics()


def test_bad_videos_are_listed_in_the_folder_as_they_are_found(tmp_path, monkeypatch):
    _bad_training_clips(monkeypatch, train_bad=range(12))  # 12 of 16: some in the first steps
    out = tmp_path / "run"

    def kill_at_2(step, record):
        if step == 2:
            raise _Killed

    with pytest.raises(_Killed):
        train(tiny_config(out, "data.max_bad_fraction=0.9"), step_callback=kill_at_2)
    lines = (out / "bad_videos.jsonl").read_text().splitlines()
    assert lines and {json.loads(line)["path"] for line in lines} <= {
        f"clip{i}.mp4" for i in range(12)
    }


def test_resume_messages_name_the_command_that_works(tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text("a run killed before its first checkpoint\n")
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={partial}", "--resume")
    assert code == 2
    _one_clear_line(err, "the run there left none: start it afresh with --resume auto")
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, f"train.out={partial}", f"--resume={partial}"
    )
    assert code == 2
    _one_clear_line(err, f"{partial} is a folder, not a checkpoint file")


def test_a_resume_on_another_number_of_processes_names_the_torchrun_command():
    from timematters.config import Config
    from timematters.config import config_to_dict as to_dict
    from timematters.engine.runs import ResumeMismatch, RunShape, check_resume

    cfg = Config()
    state = {"config": to_dict(cfg), "run_shape": {"train_clips": 16, "world_size": 2}}
    with pytest.raises(
        ResumeMismatch, match=r"world_size: 2 when saved, 1 now.*--nproc_per_node=2"
    ):
        check_resume(state, cfg, RunShape(train_clips=16, world_size=1), "last.pth")


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_locks(file, operation):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(runs.fcntl, "flock", no_locks)
    with hold_run_folder(tmp_path / "run"):
        assert "cannot be locked (Function not implemented)" in caplog.text


def test_a_classifier_of_other_size_than_the_data_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, "model.num_classes=4", f"train.out={out}"
    )
    assert code == 2
    _one_clear_line(
        err, "model.num_classes=4 but the data has 10 classes: set model.num_classes=10"
    )
    assert not out.exists()  # nothing left to refuse the corrected command


def test_init_from_a_model_spec_names_model_name(tmp_path, capsys):
    spec = "torchvision:r3d_18:weights.pth"
    code, err = _cli(
        capsys,
        "train",
        "synthetic/time",
        *TINY,
        f"train.out={tmp_path / 'run'}",
        "--init-from",
        spec,
    )
    assert code == 2
    _one_clear_line(
        err, f"--init-from {spec}: give a checkpoint or weights file", f"model.name={spec}"
    )


def test_an_output_below_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file\n")
    out = tmp_path / "notes.txt" / "run"
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={out}")
    assert code == 2
    _one_clear_line(err, f"{tmp_path / 'notes.txt'} is a file: give a folder")


def test_a_stop_is_in_the_log_too(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out)

    def stop_at_2(step, record):
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(runs.Interrupted):
        train(cfg, step_callback=stop_at_2)
    assert "timematters: stopped by SIGINT after step 2;" in (out / "train.log").read_text()


def test_an_evaluation_that_fails_leaves_the_earlier_one_in_place(tmp_path, capsys):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    data = [a for a in TINY if a.startswith(("data.", "model."))]
    assert main(["eval", "synthetic/time", *data, "--checkpoint", str(checkpoint)]) == 0
    done = checkpoint.with_name("last_eval") / "eval.json"
    before = done.read_text()
    # It fails after the folder was claimed (a frame past the clips): the old result stays.
    code = main(
        ["eval", "synthetic/time", *data, "eval.freeze_frame=20", "--perturb", "freeze",
         "--checkpoint", str(checkpoint)]
    )  # fmt: skip
    assert code == 2 and done.read_text() == before


def test_a_batch_that_the_processes_cannot_share_names_the_sizes_that_fit(tmp_path, capsys):
    code, err = _cli(
        capsys, "train", "synthetic/time", *TINY, "train.batch_size=5", "train.accumulation=2",
        f"train.out={tmp_path / 'run'}",
    )  # fmt: skip
    assert code == 2
    _one_clear_line(err, "train.batch_size=5", "set train.batch_size=4 or 6")


def test_a_resume_on_the_same_clips_labelled_otherwise_is_refused(tmp_path, capsys):
    from videos import numbered_frames, write_video

    for i in range(4):
        write_video(tmp_path / f"{i}.mp4", numbered_frames(8, 16, 16))
    (tmp_path / "a.txt").write_text("0.mp4 jump\n1.mp4 sit\n2.mp4 jump\n3.mp4 sit\n")
    (tmp_path / "b.txt").write_text("0.mp4 sit\n1.mp4 jump\n2.mp4 sit\n3.mp4 jump\n")
    run = [
        "videolist/time",
        "data.crop_size=32",
        "data.train_short_side=[32,40]",
        "data.eval_short_side=32",
        "model.num_frames=4",
        "data.num_workers=0",
        "train.batch_size=2",
        "train.epochs=1",
        "train.progress=false",
        f"data.val_annotations={tmp_path / 'a.txt'}",
        f"train.out={tmp_path / 'run'}",
    ]
    assert main(["train", *run, f"data.annotations={tmp_path / 'a.txt'}"]) == 0
    capsys.readouterr()
    code, err = _cli(capsys, "train", *run, f"data.annotations={tmp_path / 'b.txt'}", "--resume")
    assert code == 2 and "train_labels: the training clips are labelled otherwise" in err
    # The same list at another path (data paths may change) resumes.
    (tmp_path / "moved.txt").write_text((tmp_path / "a.txt").read_text())
    assert main(["train", *run, f"data.annotations={tmp_path / 'moved.txt'}", "--resume"]) == 0


def test_a_run_inside_another_runs_folder_is_refused(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    inside = tmp_path / "run" / "checkpoints" / "other"
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={inside}")
    assert code == 2
    _one_clear_line(err, f"train.out={inside} is inside the run folder {tmp_path / 'run'}")
    assert not inside.exists()


def test_a_full_disk_stops_a_run_in_one_line_and_a_cut_log_is_whole_or_untouched(
    tmp_path, capsys, monkeypatch
):
    import errno

    from timematters.engine import metrics
    from timematters.files import write_text_atomic

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The log's first append meets a full disk: exit 1 (stopped by the machine), the file named.
    monkeypatch.setattr(metrics.json, "dumps", no_space)
    out = tmp_path / "run"
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, f"train.out={out}")
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("timematters:")] == [
        f"timematters: error: cannot write {out / 'metrics.jsonl'}: No space left on device; free "
        "space (or raise the limit) and run the command again (a run: with --resume, from its "
        "last checkpoint)"
    ]
    monkeypatch.undo()
    # A rewrite that fails half-way leaves the earlier text, and no temporary file.
    log = tmp_path / "metrics.jsonl"
    log.write_text("one\ntwo\n")
    monkeypatch.setattr("os.replace", no_space)
    with pytest.raises(OSError):
        write_text_atomic(log, "one\n")
    assert log.read_text() == "one\ntwo\n" and not list(tmp_path.glob(".metrics.jsonl.*"))


def test_a_full_disk_under_tensorboard_names_its_folder_without_a_thread_traceback(
    tmp_path, capsys, monkeypatch
):
    import errno

    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # TensorBoard writes its events in a thread of its own, which meets the full disk.
    monkeypatch.setattr(record_writer.RecordWriter, "write", no_space)
    out = tmp_path / "run"
    args = [*TINY, "train.tensorboard=true", f"train.out={out}"]
    code, err = _cli(capsys, "train", "synthetic/time", *args)
    assert code == 1
    assert "Traceback" not in err and "Exception in thread" not in err
    assert [line for line in err.splitlines() if line.startswith("timematters:")] == [
        f"timematters: error: cannot write {out / 'tensorboard'}: No space left on device; free "
        "space (or raise the limit) and run the command again (a run: with --resume, from its "
        "last checkpoint)"
    ]


def test_a_first_last_checkpoint_that_cannot_be_written_names_best_to_resume_from(
    tmp_path, capsys, monkeypatch
):
    import errno

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The first epoch's end: best.pth is written, then copying it to last.pth meets a full disk.
    monkeypatch.setattr(engine_checkpoint.shutil, "copy2", no_space)
    out, every = tmp_path / "run", "train.eval_every_epochs=1"
    code, err = _cli(capsys, "train", "synthetic/time", *TINY, every, f"train.out={out}")
    assert code == 1
    best = out / "checkpoints" / "best.pth"
    # Before: "the previous one is intact", where there was none.
    assert "there is no earlier one" in err and "resume from best.pth, which holds this step" in err
    assert f"--resume {best}" in err and not (out / "checkpoints" / "last.pth").exists()
    monkeypatch.undo()
    assert (
        main(["train", "synthetic/time", *TINY, every, f"train.out={out}", "--resume", str(best)])
        == 0
    )
    full = tmp_path / "full"
    assert main(["train", "synthetic/time", *TINY, every, f"train.out={full}"]) == 0
    assert json.loads((out / "eval.json").read_text()) == json.loads(
        (full / "eval.json").read_text()
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked workers need fork")
def test_a_killed_runs_forked_workers_do_not_keep_its_folder_locked(tmp_path):
    """A run killed with -9 leaves its DataLoader workers alive a moment; the folder's lock must
    go with the run, so that a requeued --resume auto is not refused."""
    script = textwrap.dedent(
        f"""
        import os, time
        from timematters.engine.runs import hold_run_folder
        with hold_run_folder({str(tmp_path / "run")!r}):
            if os.fork() == 0:  # a worker, still busy when the run dies
                for fd in (1, 2):  # (not holding the test's pipe open)
                    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
                time.sleep(20)
                os._exit(0)
            print("locked", flush=True)
            os._exit(0)  # the run killed: no cleanup
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.stdout.strip() == "locked", proc.stderr
    with hold_run_folder(tmp_path / "run"):  # the worker lives on, the lock does not
        pass


@pytest.mark.skipif(runs.fcntl is None, reason="file locks need fcntl")
def test_a_lock_won_on_a_removed_lock_file_is_not_taken_for_the_folders(tmp_path, monkeypatch):
    """B opens the lock file while A holds it; A ends (removing it) and C locks a new one; B's
    lock on the removed file must not count: B is refused as C holds the folder."""
    out = tmp_path / "run"
    out.mkdir()
    path = out / runs.LOCK_FILE
    path.write_text("pid A\n")
    real_lock, held = runs._lock, []

    def a_ends_and_c_begins(file, folder):
        if not held:  # once, between B's open and B's lock
            path.unlink()
            c = path.open("a+")
            c.write("pid C\n")
            c.flush()
            runs.fcntl.flock(c, runs.fcntl.LOCK_EX | runs.fcntl.LOCK_NB)
            held.append(c)
        return real_lock(file, folder)

    monkeypatch.setattr(runs, "_lock", a_ends_and_c_begins)
    refused = pytest.raises(runs.RunFolderInUse, match=r"in use by a run still going \(pid C\)")
    with refused, runs.hold_run_folder(out):
        pass
    held[0].close()


def test_a_moved_copied_or_damaged_run_names_the_command_that_continues_it(tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    train(tiny_config(run, "train.epochs=1"))
    # Copied: its config.yaml still names the original folder, which --resume would continue.
    shutil.copytree(run, tmp_path / "copy")
    code, err = _cli(capsys, "train", str(tmp_path / "copy" / "config.yaml"), "--resume")
    assert code == 2
    _one_clear_line(err, f"continues the run in train.out={run}, another run's folder", "add "
                    f"train.out={tmp_path / 'copy'} to continue that one")  # fmt: skip
    # Moved: the folder it names is gone.
    (tmp_path / "copy").rename(tmp_path / "moved")
    shutil.rmtree(run)
    code, err = _cli(capsys, "train", str(tmp_path / "moved" / "config.yaml"), "--resume")
    assert code == 2 and f"train.out={run}, which is gone" in err
    moved = tmp_path / "moved"
    # Damaged last.pth beside a best.pth: the message names it.
    (moved / "checkpoints" / "best.pth").write_bytes(
        (moved / "checkpoints" / "last.pth").read_bytes()
    )
    last = moved / "checkpoints" / "last.pth"
    last.write_bytes(last.read_bytes()[:5000])
    args = ["train", str(moved / "config.yaml"), f"train.out={moved}"]
    code, err = _cli(capsys, *args, "--resume")
    assert code == 2
    _one_clear_line(err, f"cannot read {last}", f"--resume {moved / 'checkpoints' / 'best.pth'}")
    # A finished run whose eval.json is gone: the command that evaluates it again.
    last.write_bytes((moved / "checkpoints" / "best.pth").read_bytes())
    (moved / "eval.json").unlink()
    code, err = _cli(capsys, *args, "--resume")
    assert code == 2
    _one_clear_line(err, "is finished but its eval.json cannot be read", "`timematters eval ")


def test_overwrite_refuses_a_run_whose_checkpoints_folder_holds_an_export(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "synthetic/time", *TINY, "train.epochs=1", f"train.out={out}"]) == 0
    export = out / "checkpoints" / "last_export"  # `timematters export`'s default folder
    assert main(["export", str(out / "checkpoints" / "last.pth")]) == 0
    assert (export / "export.json").is_file()
    capsys.readouterr()
    argv = ["train", "synthetic/time", *TINY, "train.epochs=1", f"train.out={out}", "--overwrite"]
    code, err = _cli(capsys, *argv)
    assert code == 2
    _one_clear_line(err, f"{out} holds the export {export} of the run", "move it out")
    assert (export / "export.json").is_file() and (out / "checkpoints" / "last.pth").is_file()
    export.rename(tmp_path / "kept_export")
    assert main(argv) == 0
