"""What the library says to a user's mistakes and to models that cannot do everything: GradCAM a
model cannot give is skipped in predict with its reason, torchvision models state a clip they
take and take any length a convolution does, the layout advice fits the mistake, the objective
and evaluate name a batch or labels they cannot take in one line, a zero-shot model scores the
classes it is given, and predict's overrides are spelled -o. Tiny models and data made here; no
downloads."""

import json
import re
import textwrap

import numpy as np
import pytest
import torch
from videos import write_video

import timematters
from timematters.backbones.adapters import load_foreign_model
from timematters.backbones.protocol import check_clips
from timematters.cli import main
from timematters.config import LossConfig, find_config
from timematters.diagnostics.predict import explain_prediction
from timematters.losses import objective_for_model

T, IMG, K = 4, 32, 3

# A VideoBackbone whose per-block tokens are copies the logits do not depend on: no GradCAM.
OFF_GRAPH_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn
    from timematters.backbones.protocol import VideoTokens

    class OffGraph(nn.Module):
        classifier_name = "head"
        patch_size, embed_dim = 16, 8

        def __init__(self, num_classes=3, num_frames=4, img_size=32):
            super().__init__()
            self.num_frames, self.num_classes = num_frames, num_classes
            self.grid = (img_size // 16, img_size // 16)
            self.embed = nn.Conv3d(3, 8, (1, 16, 16), (1, 16, 16))
            self.head = nn.Linear(8, num_classes)

        @property
        def token_frames(self):
            return self.num_frames

        def forward_features(self, video, return_blocks=False):
            patches = self.embed(video).flatten(3).permute(0, 2, 3, 1)  # B T S D
            blocks = (patches.clone(), patches.clone()) if return_blocks else None
            return VideoTokens(cls=patches.mean(dim=(1, 2)), patches=patches, blocks=blocks)

        def forward_head(self, cls):
            return self.head(cls)

        def forward(self, video):
            return self.forward_head(self.forward_features(video).cls)

        def convert_state_dict(self, state_dict, source):
            return state_dict, set()

    def build(num_classes=3, num_frames=4, img_size=32):
        return OffGraph(num_classes, num_frames, img_size)
    """
)


def _frames(num_frames: int = 8) -> np.ndarray:
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, size=(num_frames, 48, 64, 3), dtype=np.uint8)


@pytest.fixture
def off_graph(tmp_path, monkeypatch) -> str:
    (tmp_path / "audit_off_graph.py").write_text(OFF_GRAPH_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "audit_off_graph:build"


# -- #8: predict --explain with a model that cannot give GradCAM ------------------------------


def test_explain_names_why_a_model_has_no_gradcam_and_predict_still_prints(
    tmp_path, capsys, off_graph
):
    import audit_off_graph

    with pytest.raises(NotImplementedError, match="no GradCAM for OffGraph: .*no gradient"):
        explain_prediction(audit_off_graph.build(), _frames(), tmp_path / "unused")
    video = write_video(tmp_path / "clip.mp4", _frames())
    argv = ["predict", str(video), "--model", off_graph, "--explain", str(tmp_path / "x")]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  original:") for line in printed)
    explained = [line for line in printed if line.startswith("  explain:")]
    assert len(explained) == 1
    assert explained[0].startswith(f"  explain: no GradCAM for {off_graph}: ")
    assert not (tmp_path / "x").exists()


# -- #9, #10: torchvision clip sizes ----------------------------------------------------------


def test_torchvision_models_without_a_config_state_a_clip_they_take():
    # load_model(spec) without a config builds it so (load_model also runs a probe, seconds).
    s3d = load_foreign_model("torchvision:s3d")
    # torchvision's common default, 16 x 112², is below S3D's 224²: it is raised to it.
    assert (s3d.num_frames, s3d.img_size) == (16, 224)
    s3d.check_input(torch.zeros(1, 3, 16, 224, 224))  # what it states, it takes
    with pytest.raises(ValueError, match=r"at least 14 frames of 224².*got 16 x 112²"):
        s3d.check_input(torch.zeros(1, 3, 16, 112, 112))
    r3d = load_foreign_model("torchvision:r3d_18")
    assert (r3d.num_frames, r3d.img_size) == (16, 112)


def test_a_3d_cnn_takes_clips_of_any_length_and_mvit_names_its_one_clip():
    r3d = load_foreign_model("torchvision:r3d_18", num_classes=K)
    assert r3d.num_frames == 16
    torch.manual_seed(0)
    data = [(torch.randn(3, 3, 8, IMG, IMG).clamp(-1, 1), torch.tensor([0, 1, 2]))]
    result = timematters.evaluate(r3d, data)  # 8-frame clips: no refusal
    assert result.metrics()["all"]["num_clips"] == 3
    # num_frames sizes the token grid (the order loss's head): set, it is probed again.
    r3d.img_size = IMG  # a smaller probe
    assert r3d.token_frames == 2
    r3d.num_frames = 8
    assert r3d.token_frames == 1
    mvit = load_foreign_model("torchvision:mvit_v2_s")
    with pytest.raises(ValueError) as error:
        mvit.check_input(torch.zeros(1, 3, 8, 224, 224))
    message = str(error.value)
    assert "takes only 16-frame clips of 224²" in message and "got 8 x 224x224" in message
    assert "model.num_frames=16" in message and "\n" not in message


# -- #11: the layout advice fits the mistake --------------------------------------------------


def _advice(video: torch.Tensor, *, views: bool = False) -> str:
    with pytest.raises(ValueError) as error:
        check_clips(video, views=views)
    message = str(error.value)
    assert "\n" not in message and len(message) < 250
    return message


def _apply(message: str, video: torch.Tensor) -> torch.Tensor:
    """The conversion the message gives, run on ``video``."""
    code = re.search(
        r"video(?=\.)(\.(transpose|permute)\([\d, ]+\))?(\[None\])?(\.float\(\) / 127\.5 - 1)?",
        message,
    )
    return eval(code.group(0), {"video": video})


CLIPS = torch.rand(2, 3, T, 8, 8) * 2 - 1  # [B, 3, T, H, W], mean = std = 0.5
PIXELS = torch.randint(0, 256, (2, 3, T, 8, 8), dtype=torch.uint8)  # the same layout, uint8


@pytest.mark.parametrize(
    "wrong, expected, words",
    [
        (
            CLIPS.transpose(1, 2),
            CLIPS,
            r"transformers' layout \[B, T, 3, H, W\].*transpose\(1, 2\)",
        ),
        (PIXELS.permute(0, 2, 3, 4, 1), PIXELS.float() / 127.5 - 1, r"permute\(0, 4, 1, 2, 3\)"),
        (PIXELS, PIXELS.float() / 127.5 - 1, r"layout is right \(no permute\): video\.float\(\)"),
        (PIXELS.transpose(1, 2), PIXELS.float() / 127.5 - 1, r"transpose\(1, 2\)\.float\(\)"),
        (PIXELS[0].permute(1, 2, 3, 0), PIXELS[:1].float() / 127.5 - 1, r"permute\(3, 0, 1, 2\)"),
    ],
)
def test_the_layout_advice_turns_what_was_given_into_clips(wrong, expected, words):
    message = _advice(wrong)
    assert re.search(words, message), message
    fixed = _apply(message, wrong)
    check_clips(fixed)
    torch.testing.assert_close(fixed, expected)


def test_the_layout_advice_counts_the_views_axis():
    views = CLIPS[:, None].expand(2, 2, 3, T, 8, 8)
    message = _advice(views.transpose(2, 3), views=True)
    assert "[B, V, T, 3, H, W]" in message
    torch.testing.assert_close(_apply(message, views.transpose(2, 3)), views)
    assert "permute" not in _advice(CLIPS.transpose(1, 2))  # a permute would scramble it


# -- #12: batches and labels the objective and evaluate cannot take ---------------------------


def _model():
    from timematters.backbones import create_backbone

    torch.manual_seed(0)
    kwargs = dict(num_frames=T, img_size=16, embed_dim=16, depth=1, num_heads=2)
    return create_backbone("timesformer_tiny_patch8_64", num_classes=K, **kwargs)


def _objective(model):
    cfg = LossConfig()
    cfg.flow.weight = 0
    return objective_for_model(model, cfg)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda b: (b["video"], b["label"]), r"got a tuple of 2 items: \{'video': video"),
        (lambda b: [b], r"got a list of 1 such batches: call it on each one"),
        (lambda b: b["video"], r"got a Tensor$"),
    ],
)
def test_the_objective_names_a_batch_that_is_not_one_dict(make, words):
    model = _model()
    batch = {"video": torch.randn(2, 3, T, 16, 16), "label": torch.tensor([0, 1])}
    with pytest.raises(TypeError, match=words) as error:
        _objective(model)(model, make(batch))
    message = str(error.value)
    assert "'video'" in message and "'label'" in message
    assert "\n" not in message and len(message) < 250  # not the tensors' values


def test_the_objective_refuses_labels_past_the_outputs_and_class_names():
    model = _model()
    objective = _objective(model)
    video = torch.randn(2, 3, T, 16, 16)
    with pytest.raises(ValueError, match="label 3 but .* has 3 outputs: labels are 0-based"):
        objective(model, {"video": video, "label": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match="label -1 but"):
        objective(model, {"video": video, "label": torch.tensor([-1, 0])})
    with pytest.raises(ValueError, match=r"got the name 'a'.*classes\.index\(name\)"):
        objective(model, {"video": video, "label": ["a", "b"]})
    out = objective(model, {"video": video, "label": [0, 2]})  # indices as a list still train
    assert torch.isfinite(out.total)


@pytest.mark.parametrize("labels", [["a", "b"], ("a", "b"), np.array(["a", "b"])])
def test_evaluate_says_labels_are_class_indices_when_given_names(labels):
    data = [(torch.randn(2, 3, T, 16, 16), labels)]
    with pytest.raises(
        ValueError, match=r"0-based class indices, got the name 'a'.*classes\.index"
    ):
        timematters.evaluate(_model(), data)
    # A Dataset of (clip, name) pairs, collated by evaluate
    pairs = [(torch.randn(3, T, 16, 16), name) for name in ("a", "b")]
    with pytest.raises(ValueError, match="got the name 'a'"):
        timematters.evaluate(_model(), torch.utils.data.StackDataset(*zip(*pairs, strict=True)))


# -- #13: a zero-shot model scores the classes evaluate and diagnose are given -----------------


@pytest.fixture(scope="module")
def xclip(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    folder = tmp_path_factory.mktemp("xclip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}  # single letters tell names apart
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    mit = dict(mit_hidden_size=32, mit_intermediate_size=64, mit_num_hidden_layers=1)
    config = transformers.XCLIPConfig(
        text_config=transformers.XCLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=77, **sizes
        ).to_dict(),
        vision_config=transformers.XCLIPVisionConfig(
            image_size=IMG, patch_size=16, num_frames=T, mit_num_attention_heads=2, **mit, **sizes
        ).to_dict(),
        projection_dim=32,
        prompt_layers=1,
        prompt_attention_heads=2,
    )
    torch.manual_seed(0)
    transformers.XCLIPModel(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return f"hf:{folder / 'model'}"


CLASSES = ["left", "right", "still"]


def _clips():
    torch.manual_seed(0)
    return [(torch.randn(3, 3, T, IMG, IMG).clamp(-1, 1), torch.tensor([0, 1, 2]))]


def test_evaluate_gives_a_zero_shot_model_the_classes_it_is_given(xclip):
    model = timematters.load_model(xclip)
    with pytest.raises(
        ValueError, match=r'model\.set_class_names\(names, prompt="a video of \{\}"'
    ):
        timematters.evaluate(model, _clips())
    result = timematters.evaluate(model, _clips(), classes=CLASSES)
    assert result.classes == CLASSES and model.class_names == CLASSES
    assert result.probs.shape == (3, 3)
    # Other classes later: those are scored, with the model's prompt.
    model.prompt = "a video of {}"
    other = timematters.evaluate(model, _clips(), classes=["up", "down", "still"])
    assert model.class_names == ["up", "down", "still"] and model.prompt == "a video of {}"
    assert not np.allclose(other.probs, result.probs)
    # Without classes, the ones it has.
    assert timematters.evaluate(model, _clips()).classes == ["up", "down", "still"]


def test_diagnose_gives_a_zero_shot_model_the_classes_it_is_given(xclip, tmp_path):
    model = timematters.load_model(xclip)
    report = timematters.diagnose(
        {"xclip": model},
        _clips(),
        tmp_path / "out",
        classes=CLASSES,
        probe_clips=None,
        gradcam_clips=0,
    )
    assert report["shuffle_test"]["xclip"]["all"]["num_clips"] == 3
    assert model.class_names == CLASSES


# -- #14: predict's overrides; the preset's flips ---------------------------------------------


@pytest.mark.parametrize("where", ["after the options", "among the videos"])
def test_predict_spells_an_override_given_without_o(tmp_path, capsys, where):
    video = str(tmp_path / "clip.mp4")  # never read: the arguments are refused first
    options = ["--model", "m:f", "--config", "videolist/time"]
    argv = [video, *options, "data.root=vids"]
    if where == "among the videos":
        argv = [video, "data.root=vids", *options]
    assert main(["predict", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "usage" not in error
    assert "overrides as -o KEY=VALUE: -o data.root=vids" in error


def test_the_videolist_preset_says_when_to_turn_flips_off():
    lines = find_config("videolist/time").read_text().splitlines()
    (hflip,) = [line for line in lines if line.strip().startswith("hflip:")]
    assert "data.hflip=false" in hflip and "left" in hflip


def test_predict_says_when_its_test_cannot_mean_anything(tmp_path):
    from videos import numbered_frames, write_video

    from timematters.backbones import create_backbone
    from timematters.diagnostics.predict import predict, predict_windows, summarise

    model = create_backbone("timesformer_tiny_patch8_64", num_classes=3, img_size=32, num_frames=4)
    one = write_video(tmp_path / "one.mp4", numbered_frames(1, 32, 32))
    assert "no perturbation can change it" in predict(model, one).describe()
    twelve = write_video(tmp_path / "twelve.mp4", numbered_frames(12, 32, 32), fps=12)
    with pytest.raises(ValueError, match=r"--window 0.1 s holds 1.2 frames .* at least 0.17 s"):
        predict_windows(model, twelve, seconds=0.1)
    with pytest.raises(ValueError, match="--fps 0"):
        predict_windows(model, twelve, seconds=1, fps=0)
    assert "no perturbation" not in predict(model, twelve).describe()
    # Shorter than the clip (training and eval skip it): said, and a clip of one frame is left
    # out of the summary over many videos.
    two = predict(model, write_video(tmp_path / "two.mp4", numbered_frames(2, 32, 32)))
    assert "the video is shorter than the clip: 2 different frames of its 4" in two.describe()
    summary = summarise([predict(model, one), two, predict(model, twelve)])
    assert summary.startswith("over 2 videos (no labels needed, 1 of one frame left out):")


def test_predict_reads_lists_with_spaced_labels_and_videos_of_any_container(
    tmp_path, capsys, off_graph
):
    from videos import numbered_frames, write_video

    folder = tmp_path / "phone"
    write_video(folder / "clip 1.mp4", numbered_frames(8))
    write_video(folder / "clip.3gp", numbered_frames(8), codec="libx264", options={})
    (folder / "notes.txt").write_text("shot on Tuesday")
    (folder / ".DS_Store").write_bytes(b"\0")
    listing = folder / "val.txt"
    listing.write_text("clip 1.mp4 air drumming\nclip.3gp playing the drum kit\n")
    assert main(["predict", str(listing), "--model", off_graph, "--json"]) == 0
    sources = [r["source"] for r in json.loads(capsys.readouterr().out)]
    assert sources == [str(folder / "clip 1.mp4"), str(folder / "clip.3gp")]
    # A folder: every container PyAV reads, and the files left out are said (not hidden ones).
    assert main(["predict", str(folder), "--model", off_graph, "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 2
    assert "left out 2 files that are not videos by their extension (notes.txt, val.txt)" in (
        captured.err
    )
    # Named on its own, a file of an extension not known here is tried as a video.
    (folder / "clip.3gp").rename(folder / "clip.dat")
    assert main(["predict", str(folder / "clip.dat"), "--model", off_graph, "--json"]) == 0


# -- command-line mistakes: files that are not what the command takes ------------------------

FAILING_FORWARD = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Failing(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.fc = nn.Linear(5, num_classes)

        def forward(self, video):
            return self.fc(video.flatten(1))  # not 5 features: a shape error in the user's code

    class Lookup(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.heads = {}

        def forward(self, video):
            return self.heads["video"](video)  # a KeyError in the user's code
    """
)


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    return error


def test_predict_and_table_name_files_that_are_not_what_they_take(tmp_path, capsys, off_graph):
    video = write_video(tmp_path / "clip.mp4", _frames())
    checkpoint = tmp_path / "last.pth"
    checkpoint.write_bytes(b"\x80\x02binary pickle")
    assert main(["predict", str(checkpoint), "--model", off_graph]) == 2
    assert "is a model's weights, not a video: a checkpoint goes in" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), str(video), "--model", off_graph]) == 2
    assert f"{tmp_path / 'empty'} holds no videos" in _one_line_error(capsys)
    before = video.read_bytes()
    assert main(["table", str(tmp_path), "--out", str(video)]) == 2  # (never the video)
    assert "is a file that is not a table" in _one_line_error(capsys)
    assert video.read_bytes() == before
    # Nor another command's markdown (a run's eval.md, a model card); its own table is replaced.
    card = tmp_path / "README.md"
    card.write_text("# a model card\n")
    assert main(["table", str(tmp_path), "--out", str(card)]) == 2
    assert "not a table `timematters table` wrote" in _one_line_error(capsys)
    assert card.read_text() == "# a model card\n"
    assert main(["table", str(tmp_path), "--out", str(tmp_path / "new.txt")]) == 2
    assert "give a .md file" in _one_line_error(capsys)
    assert main(["table", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a folder: give a file name" in _one_line_error(capsys)


def test_configs_copy_into_a_new_folder_and_not_below_a_file(tmp_path, capsys):
    assert main(["configs", "copy", "synthetic/time", f"{tmp_path / 'new'}/"]) == 0
    assert (tmp_path / "new" / "time.yaml").is_file()
    (tmp_path / "v.mp4").write_bytes(b"")
    capsys.readouterr()
    assert main(["configs", "copy", "synthetic/time", str(tmp_path / "v.mp4" / "x.yaml")]) == 2
    assert f"{tmp_path / 'v.mp4'} is a file, not a folder" in _one_line_error(capsys)


def test_a_users_module_failing_on_the_clips_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "failing_forward.py").write_text(FAILING_FORWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    video = write_video(tmp_path / "clip.mp4", _frames())
    options = ["--config", "videolist/time", "-o", "model.num_frames=4", "-o", "data.crop_size=32"]
    argv = ["predict", str(video), "--model", "failing_forward:Failing", *options]
    assert main(argv) == 2
    error = _one_line_error(capsys)
    assert "failing_forward:Failing failed on a [" in error and "TIMEMATTERS_TRACEBACK=1" in error
    monkeypatch.setenv("TIMEMATTERS_TRACEBACK", "0")  # off, as unset
    assert main(argv) == 2
    monkeypatch.setenv("TIMEMATTERS_TRACEBACK", "1")
    with pytest.raises(ValueError) as caught:
        main(argv)
    assert isinstance(caught.value.__cause__, RuntimeError)  # the user's line, chained
    monkeypatch.delenv("TIMEMATTERS_TRACEBACK")
    capsys.readouterr()
    # Any error of the user's code, not only a shape error (before: a KeyError's traceback).
    argv[argv.index("failing_forward:Failing")] = "failing_forward:Lookup"
    assert main(argv) == 2
    assert "failing_forward:Lookup failed on a [" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "command",
    [
        ["export", "{ckpt}"],
        ["eval", "synthetic/time", "--checkpoint", "{ckpt}"],
        ["predict", "{ckpt}.mp4", "--checkpoint", "{ckpt}"],
    ],
)
def test_another_librarys_checkpoint_with_a_config_entry_is_named_in_one_line(
    tmp_path, capsys, command
):
    # Its 'config' is not a run's: before, a KeyError traceback with exit 1.
    checkpoint = tmp_path / "theirs.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"lr": 0.1}}, checkpoint)
    assert main([part.format(ckpt=checkpoint) for part in command]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"timematters: error: {checkpoint} is not a timematters checkpoint (its 'config' has no "
        "model / data sections): give the checkpoints that train writes; a backbone's weights "
        "go in model.pretrained"
    )
