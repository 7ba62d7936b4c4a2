"""`timematters demo` end to end at toy size: the table, the report, the plots, the diagnostics."""

import json

import pytest

from timematters import demo
from timematters.cli import main


@pytest.fixture
def toy_demo(monkeypatch):
    real = demo.demo_config

    def toy(*args, **kwargs):
        cfg = real(*args, **kwargs)
        cfg.data.crop_size = 32
        cfg.data.synthetic.num_train, cfg.data.synthetic.num_test = 16, 10
        cfg.model.name = "timesformer_tiny_patch8_64"
        cfg.model.num_frames = 4
        cfg.model.kwargs = {**cfg.model.kwargs, "embed_dim": 24, "depth": 2, "num_heads": 2}
        cfg.train.batch_size = 8
        cfg.train.progress = False
        return cfg

    monkeypatch.setattr(demo, "demo_config", toy)


def test_demo_writes_the_table_report_plots_and_diagnostics(tmp_path, toy_demo, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "| +TIME |" in printed
    assert "temporal shuffled" in printed and "static gap" in printed
    for name in ("report.md", "metrics.json", "training_curves.png", "shuffle_accuracy.png"):
        assert (tmp_path / name).is_file(), name
    for name in ("report.md", "diagnose.json", "confidence_gap.png", "order_probe.png"):
        assert (tmp_path / "diagnose" / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["mean"]) == {"baseline", "+TIME"}
    assert set(metrics["mean"]["baseline"]) == {"all", "temporal", "static"}
    report = (tmp_path / "report.md").read_text()
    assert "| baseline |" in report and "diagnose/report.md" in report


def test_demo_appendix_d_trains_its_three_variants(tmp_path, toy_demo):
    assert main(["demo", "--quick", "--appendix-d", "--out", str(tmp_path), "--epochs", "1"]) == 0
    rows = json.loads((tmp_path / "metrics.json").read_text())["mean"]
    assert list(rows) == ["baseline", "re-added", "re-added+order"]
    probe = json.loads((tmp_path / "diagnose" / "diagnose.json").read_text())["order_probe"]
    assert set(probe["accuracy"]) == set(rows)


def test_ablation_trains_the_eight_loss_combinations_of_table_3(tmp_path, toy_demo):
    assert main(["demo", "--quick", "--ablation", "--out", str(tmp_path), "--epochs", "1"]) == 0
    rows = json.loads((tmp_path / "metrics.json").read_text())["mean"]
    assert list(rows) == [v.name for v in demo.ABLATION]
    assert len(rows) == 8 and list(rows)[0] == "baseline" and list(rows)[-1] == "+TIME"
    for variant in demo.ABLATION:
        order, debias, flow = variant.losses
        name = variant.name
        run = tmp_path / "seed0" / name.replace("+", "plus_")
        (record, *_) = [
            json.loads(line)
            for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"train"' in line
        ]
        terms = {key.removesuffix("_loss") for key in record if key.endswith("_loss")}
        expected = {"ce"} | {
            n
            for n, on in zip(("order", "debias", "flow"), (order, debias, flow), strict=True)
            if on
        }
        assert terms == expected, name


def test_a_stopped_demo_continues_with_resume_to_the_same_numbers(
    tmp_path, toy_demo, monkeypatch, capsys
):
    """SIGTERM in the +TIME run after its first epoch: the demo stops naming demo --resume,
    which continues it (the finished baseline read back, +TIME from its checkpoint) to the
    numbers of a demo never stopped."""
    import signal

    from timematters.engine import train as training

    argv = ["demo", "--quick", "--epochs", "2"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["mean"]

    real = training._stop_if_asked

    def sigterm_in_time_run(run):
        if "plus_TIME" in str(run.run_dir) and run.progress.epoch == 1:
            run.stop.requested = signal.SIGTERM
        real(run)

    monkeypatch.setattr(training, "_stop_if_asked", sigterm_in_time_run)
    stopped = tmp_path / "stopped"
    capsys.readouterr()
    assert main([*argv, "--out", str(stopped)]) == 128 + signal.SIGTERM
    assert "the same demo command with --resume continues" in capsys.readouterr().err
    monkeypatch.setattr(training, "_stop_if_asked", real)
    assert main([*argv, "--out", str(stopped)]) == 2  # a demo is there: refused, not replaced
    assert "continue a stopped one with --resume" in capsys.readouterr().err
    assert main([*argv, "--out", str(stopped), "--resume"]) == 0
    resumed = json.loads((stopped / "metrics.json").read_text())["mean"]
    assert resumed == whole
