"""`timematters flow`: the flow labels a config makes, drawn; they are the labels training gets."""

import json

import numpy as np
import pytest
from videos import moving_square_frames, write_video

from timematters.cli import main
from timematters.config import load_config
from timematters.data import build_dataset
from timematters.data.samplers import SeededSamples

SMALL = ["data.synthetic.num_train=6", "data.synthetic.num_test=4", "data.num_workers=0"]


def _shares(labels) -> list[float]:
    return (np.bincount(np.asarray(labels).ravel(), minlength=9) / labels.numel()).tolist()


def test_the_pictures_show_the_labels_training_gets(tmp_path, capsys):
    out = tmp_path / "flow"
    assert (
        main(["flow", "synthetic/time", *SMALL, "--index", "1", "--index", "4", "--out", str(out)])
        == 0
    )
    result = json.loads((out / "flow_labels.json").read_text())
    assert [clip["picture"] for clip in result["clips"]] == ["flow_0.png", "flow_1.png"]
    assert all((out / f"flow_{k}.png").stat().st_size > 5000 for k in range(2))
    assert result["settings"]["patch_size"] == 16 and result["settings"]["threshold"] == "relative"
    # The training loader's own labels for these clips (OpenCV, on the augmented crop, the first
    # epoch's draw): the same class shares.
    cfg = load_config("synthetic/time", SMALL)
    train_set = SeededSamples(build_dataset(cfg, "train", flow_labels=True, patch_size=16), 0)
    for clip, index in zip(result["clips"], (1, 4), strict=True):
        assert clip["share"] == pytest.approx(_shares(train_set[index]["flow_labels"]))
    printed = capsys.readouterr().out
    assert "synthetic-train-00001" in printed and "all 2 clips: still" in printed


def test_a_video_file_moving_right_is_labelled_right(tmp_path, capsys):
    # A textured square moving 2 px right per frame (4 between the sampled frames): its patches fall in classes 1 and 8, the two
    # 45° bins either side of the +x axis; the background is still under an absolute threshold.
    video = write_video(tmp_path / "right.mp4", moving_square_frames(16, 64, 64, step=(2, 0)))
    out = tmp_path / "flow"
    argv = ["flow", "synthetic/time", "model.num_frames=8", "data.crop_size=64"]
    argv += ["data.eval_short_side=64", "flow.threshold=absolute", "--video", str(video)]
    assert main([*argv, "--out", str(out)]) == 0
    share = json.loads((out / "flow_labels.json").read_text())["clips"][0]["share"]
    moving = np.array(share[1:])
    assert share[0] > 0.5 and moving[[0, 7]].sum() > 0.9 * moving.sum() > 0
    assert str(video) in capsys.readouterr().out


def test_an_undecodable_video_is_skipped_said_and_fails_the_command(tmp_path, capsys):
    good = write_video(tmp_path / "good.mp4", moving_square_frames(8, 64, 64))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "flow"
    code = main(
        ["flow", "synthetic/time", "--video", str(bad), "--video", str(good), "--out", str(out)]
    )
    assert code == 1
    result = json.loads((out / "flow_labels.json").read_text())
    assert [clip["clip"] for clip in result["clips"]] == [str(good)]
    assert result["skipped"][0]["clip"] == str(bad)
    assert f"skipped {bad}" in capsys.readouterr().out
    # --clips N draws N videos that decode: the bad one leaves its place to the next.
    argv = ["flow", "synthetic/time", "--video", str(bad), "--video", str(good), "--clips", "1"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 1
    drawn = json.loads((tmp_path / "one" / "flow_labels.json").read_text())["clips"]
    assert [clip["clip"] for clip in drawn] == [str(good)]
    # A folder of videos: the first --clips of them, and said so.
    (tmp_path / "more.mp4").write_bytes(good.read_bytes())
    bad.unlink()
    argv = ["flow", "synthetic/time", "--video", str(tmp_path), "--clips", "1"]
    assert main([*argv, "--out", str(tmp_path / "folder")]) == 0
    assert "drawing the first 1 of 2 videos" in capsys.readouterr().out
    # Shorter than the clip, as training refuses it; none left to draw: exit 1 (the data's).
    short = write_video(tmp_path / "short.mp4", moving_square_frames(2, 64, 64))
    argv = ["flow", "synthetic/time", "--video", str(short), "--out", str(tmp_path / "short")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"skipped {short}: too short: 2 frames, at least 8 needed" in captured.out
    assert "no clip to label: none of 1 video could be used" in captured.err


def test_its_folder_holds_its_own_pictures_only(tmp_path, capsys):
    out = tmp_path / "flow"
    assert main(["flow", "synthetic/time", *SMALL, "--clips", "3", "--out", str(out)]) == 0
    assert main(["flow", "synthetic/time", *SMALL, "--clips", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["flow_0.png", "flow_labels.json"]  # replaced
    (tmp_path / "report" / "diagnose.json").parent.mkdir()
    (tmp_path / "report" / "diagnose.json").write_text("{}")
    capsys.readouterr()
    assert main(["flow", "synthetic/time", *SMALL, "--out", str(tmp_path / "report")]) == 2
    assert "already holds a diagnose report" in capsys.readouterr().err
    assert main(["flow", "synthetic/time", *SMALL, "--index", "6", "--out", str(out)]) == 2
    assert "--index 6: the train split has clips 0 to 5" in capsys.readouterr().err
    assert (out / "flow_0.png").is_file()  # a refused command removes nothing
    assert main(["flow", "synthetic/time", "--video", "clip.mp4", "--index", "1"]) == 2
    assert "with --video every video is drawn" in capsys.readouterr().err


def test_the_torch_backend_is_drawn_and_said_against_opencv(tmp_path, capsys):
    out = tmp_path / "flow"
    argv = ["flow", "synthetic/time", *SMALL, "flow.backend=torch", "--clips", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "flow_labels.json").read_text())
    assert result["settings"]["backend"] == "torch" and result["settings"]["device"] == "cpu"
    # The batched torch Farnebäck against OpenCV's on the same crops (its parity tests ask 99.5%).
    assert all(clip["agreement_with_opencv"] >= 0.99 for clip in result["clips"])
    assert "OpenCV's class for" in capsys.readouterr().out


def test_a_tubelet_model_is_shown_the_labels_between_its_tubelets(tmp_path):
    out = tmp_path / "flow"
    model = ["model.name=motionformer_tiny_patch8_64", "model.kwargs={tubelet_size: 2}"]
    assert main(["flow", "synthetic/time", *SMALL, *model, "--clips", "1", "--out", str(out)]) == 0
    result = json.loads((out / "flow_labels.json").read_text())
    assert result["settings"]["frame_step"] == 2 and result["settings"]["patch_size"] == 8
    cfg = load_config("synthetic/time", [*SMALL, *model])
    train_set = SeededSamples(
        build_dataset(cfg, "train", flow_labels=True, patch_size=8, frame_step=2), 0
    )
    labels = train_set[0]["flow_labels"]
    assert labels.shape == (3, 64)  # 8 frames, 4 token frames, 3 pairs of them; 8 x 8 patches
    assert result["clips"][0]["share"] == pytest.approx(_shares(labels))


def test_a_model_without_flow_labels_is_named_with_the_reason(tmp_path, capsys):
    # A 3-D CNN: before, "need at least one array to stack", of labels never made.
    args = ["flow", "synthetic/time", "model.name=torchvision:r3d_18", "--clips", "1"]
    assert main([*args, "--out", str(tmp_path / "flow")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "timematters: error: torchvision:r3d_18 has no flow labels: a 3-D network's tokens each "
        "span several frames"
    )
    assert not (tmp_path / "flow").exists()
