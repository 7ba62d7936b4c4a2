"""`timematters table`: evaluations already made, read back and set side by side."""

import json

import pytest

from timematters.cli import main
from timematters.diagnostics.tables import collect_rows, results_table


def _metrics(top1: float, shuffled: float, subsets=("all", "temporal", "static"), reverse=None):
    row = {"top1": top1, "shuffled_top1": shuffled, "gap": top1 - shuffled, "num_clips": 10}
    row["top1_ci"], row["gap_ci"] = [top1 - 2, top1 + 2], [top1 - shuffled - 1, top1 - shuffled + 1]
    if reverse is not None:
        row |= {"reversed_top1": reverse, "reversed_gap": top1 - reverse}
    return {subset: dict(row) for subset in subsets}


def _write(path, data, name="eval.json"):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(data))
    return path


def test_runs_and_checkpoint_evaluations_are_rows_named_by_where_they_are(tmp_path, capsys):
    base = _write(tmp_path / "runs/ssv2/baseline", _metrics(60.0, 45.0))
    time = _write(tmp_path / "runs/ssv2/time", _metrics(62.5, 30.0))
    best = _write(tmp_path / "runs/ssv2/time/checkpoints/best_eval", _metrics(63.0, 29.0))
    assert main(["table", str(base), str(time), str(best), "--out", str(tmp_path / "t.md")]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("| model | all original ↑ | all shuffled ↓ | all gap ↑ | temporal")
    assert lines[2] == "| baseline | 60.0 | 45.0 | 15.0 | 60.0 | 45.0 | 15.0 | 60.0 | 45.0 | 15.0 |"
    assert lines[3].startswith("| time | 62.5 | 30.0 | 32.5 |")
    assert lines[4].startswith("| time (best) | 63.0 | 29.0 | 34.0 |")
    written = (tmp_path / "t.md").read_text()
    assert written == "<!-- written by timematters table -->\n" + "\n".join(lines[:5]) + "\n"
    assert main(["table", str(base), "--out", str(tmp_path / "t.md")]) == 0  # its own: replaced
    assert "± 2.0" in results_table([base], intervals=True)


def test_only_what_every_row_has_is_set_side_by_side(tmp_path):
    # A run on SSv2's Temporal subset has no Static row; one tested under reverse has more columns.
    full = _write(tmp_path / "full", _metrics(60.0, 45.0, reverse=20.0))
    temporal = _write(tmp_path / "temporal", _metrics(70.0, 30.0, subsets=("all", "temporal")))
    table = results_table([full, temporal])
    assert "static" not in table and "reversed" not in table
    assert table.splitlines()[3] == "| temporal | 70.0 | 30.0 | 40.0 | 70.0 | 30.0 | 40.0 |"
    both = results_table([full, full], names=["a", "b"])
    assert "**shuffle**" in both and "**reverse**" in both  # one table per perturbation


def test_a_diagnose_report_gives_a_row_per_model(tmp_path):
    report = {"shuffle_test": {"baseline": _metrics(50.0, 49.0), "+TIME": _metrics(55.0, 30.0)}}
    folder = _write(tmp_path / "diagnose", report, name="diagnose.json")
    assert list(collect_rows([folder])) == ["baseline", "+TIME"]
    run = _write(tmp_path / "run", _metrics(52.0, 40.0))
    assert list(collect_rows([folder, run])) == ["diagnose: baseline", "diagnose: +TIME", "run"]


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda p: p / "missing", "missing: no such file or folder"),
        (lambda p: _write(p / "empty", {}, name="notes.json"), "holds no evaluation (eval.json)"),
        (
            lambda p: _write(p / "in9", {"original": 80.0, "bg_gap": 12.0}),
            "holds no shuffle-test results (an ImageNet-9 run's",
        ),
        (lambda p: _write(p / "run", "| ... |", name="eval.md") / "eval.md", "not an eval.json"),
        (lambda p: _write(p / "cut", {}), "cut/eval.json holds no results"),
        (
            lambda p: _write(p / "d", {"shuffle_test": {}}, name="diagnose.json"),
            "d/diagnose.json holds no results",
        ),
    ],
)
def test_what_holds_no_evaluation_is_named(tmp_path, capsys, setup, words):
    assert main(["table", str(setup(tmp_path))]) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith("timematters: error:") and words in said and "\n" not in said


def test_names_must_match_the_rows(tmp_path, capsys):
    run = _write(tmp_path / "run", _metrics(1.0, 1.0))
    (run / "eval.md").write_text("| ... |\n")
    assert main(["table", str(run), "--name", "a", "--name", "b"]) == 2
    assert "1 rows (run) but 2 names" in capsys.readouterr().err


def test_rows_need_names_of_their_own_and_a_perturbation_in_common(tmp_path, capsys):
    # A name given twice kept one of the two rows, silently.
    runs = [str(_write(tmp_path / n, _metrics(50.0, 40.0))) for n in ("base", "time")]
    assert main(["table", *runs, "--name", "TIME", "--name", "TIME"]) == 2
    assert "--name 'TIME' is given twice" in capsys.readouterr().err
    # Shuffle alone beside reverse alone: an empty table, exit 0, before.
    reverse_only = _metrics(50.0, 40.0, reverse=30.0)
    for row in reverse_only.values():
        del row["shuffled_top1"], row["gap"], row["gap_ci"]
    other = _write(tmp_path / "reverse", reverse_only)
    assert main(["table", runs[0], str(other)]) == 2
    assert "share no perturbation (shuffle, reverse, ...)" in capsys.readouterr().err


def test_imagenet9_runs_make_table_4(tmp_path, capsys):
    # One-frame clips: their shuffle table says nothing; the runs' Table 4 is what compares them.
    accuracy = {"original": 80.0, "mixed_same": 90.0, "mixed_rand": 70.0, "bg_gap": 20.0}
    runs = []
    for name, shift in (("baseline", 0.0), ("time", 5.0)):
        run = _write(tmp_path / "in9" / name, _metrics(50.0, 50.0))
        values = {k: v + (shift if k != "bg_gap" else -shift) for k, v in accuracy.items()}
        (run / "backgrounds.json").write_text(json.dumps(values))
        runs.append(str(run))
    assert main(["table", *runs, "--name", "DeiT-Ti", "--name", "+TIME"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Dataset | DeiT-Ti | +TIME |"
    assert "| Original ↑ | 80.0 | 85.0 (+5.0) |" in lines
    assert "| BG-Gap ↓ | 20.0 | 15.0 (-5.0) |" in lines
