"""Every model converts the clips it is given to the normalisation it was trained with: ours from
a checkpoint as adapted ones do, and only for as long as a diagnose call says so."""

import pytest
import torch
from test_train import tiny_config
from videos import moving_square_frames, write_video

import timematters
from timematters.backbones import InputNormalisation, VideoTokens, clips_normalised
from timematters.backbones.adapters import load_foreign_model
from timematters.cli import main
from timematters.engine.model import describe_model, load_model
from timematters.engine.train import train

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
AS_IMAGENET = [f"data.mean={list(IMAGENET[0])}", f"data.std={list(IMAGENET[1])}"]


def _as_imagenet(video: torch.Tensor) -> torch.Tensor:
    """Clips normalised with mean = std = 0.5 -> the same pixels normalised as ImageNet's."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in IMAGENET)
    return (video * 0.5 + 0.5 - mean) / std


def test_a_checkpoint_scores_clips_of_any_normalisation_alike(tmp_path):
    trained = tiny_config(tmp_path / "run", *AS_IMAGENET, "train.max_steps=1", "train.epochs=1")
    train(trained)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    half = load_model(checkpoint, tiny_config(tmp_path / "other"))  # clips at 0.5 / 0.5
    imagenet = load_model(checkpoint, trained)  # clips as it was trained on
    assert describe_model(half)["mean"] == list(IMAGENET[0])  # what it takes, either way
    video = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(half(video), imagenet(_as_imagenet(video)), atol=1e-5)
    # Without a config it takes the clips of its own run.
    assert load_model(checkpoint).input_mean == IMAGENET[0]


def test_a_model_is_told_the_clips_normalisation_for_one_diagnose_call(tmp_path):
    torch.manual_seed(0)
    r3d = load_foreign_model("torchvision:r3d_18", num_classes=3, num_frames=4, img_size=32)
    video = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        before = r3d.eval()(video)
    timematters.diagnose(
        {"r3d": r3d},
        [(_as_imagenet(video), labels)],
        tmp_path / "out",
        mean=IMAGENET[0],
        std=IMAGENET[1],
        probe_clips=None,
        gradcam_clips=0,
    )
    with torch.no_grad():
        assert torch.equal(r3d(video), before)  # 0.5-normalised clips score as before


def _save_hub_classifier(folder, classes: list[str]) -> None:
    """A tiny random transformers TimeSformer (4 frames of 32²) that names ``classes``."""
    transformers = pytest.importorskip("transformers")
    config = transformers.TimesformerConfig(
        image_size=32,
        patch_size=16,
        num_frames=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
    )
    torch.manual_seed(0)
    transformers.TimesformerForVideoClassification(config).save_pretrained(folder)


def test_models_that_number_their_classes_differently_are_not_scored_on_one_labelling(
    tmp_path, capsys
):
    """Each hub model reads a video list labelled by name in its own class order; two orders
    cannot share the clips' labels, so the run is refused instead of scoring one model wrongly."""
    names = ["left", "right", "still"]
    nameless = [f"LABEL_{i}" for i in range(3)]  # transformers' placeholders: no class names
    for folder, order in (("a", names), ("b", names[::-1]), ("n", nameless)):
        _save_hub_classifier(tmp_path / folder, order)
    for i in range(3):
        write_video(tmp_path / f"{i}.mp4", moving_square_frames(8, 48, 48))
    (tmp_path / "val.txt").write_text("".join(f"{i}.mp4 {n}\n" for i, n in enumerate(names)))
    data = [
        f"data.val_annotations={tmp_path / 'val.txt'}",
        "model.num_frames=4",
        "data.crop_size=32",
        "data.eval_short_side=32",
        "data.num_workers=0",
    ]
    argv = ["diagnose", "--config", "videolist/time", *data, "--no-probe", "--gradcam-clips", "0"]
    one = [*argv, "--model", f"hf:{tmp_path / 'b'}", "--out", str(tmp_path / "one")]
    assert main(one) == 0  # alone, a model scores in its own order
    both = [*argv, "--model", f"hf:{tmp_path / 'a'}", "--model", f"hf:{tmp_path / 'b'}"]
    assert main([*both, "--out", str(tmp_path / "both")]) == 2
    assert "numbers the classes otherwise than --model hf:" in capsys.readouterr().err
    # A model without class names is scored in the list's order, which the named one changes.
    for pair in ((tmp_path / "n", tmp_path / "b"), (tmp_path / "b", tmp_path / "n")):
        models = [option for folder in pair for option in ("--model", f"hf:{folder}")]
        assert main([*argv, *models, "--out", str(tmp_path / "mixed")]) == 2
        err = capsys.readouterr().err
        assert f"--model hf:{tmp_path / 'n'} names no classes and numbers the classes" in err
        assert f"otherwise than --model hf:{tmp_path / 'b'}, in whose class order" in err
    # Alongside a model in the list's own order, it is scored as it is alone.
    models = ["--model", f"hf:{tmp_path / 'n'}", "--model", f"hf:{tmp_path / 'a'}"]
    assert main([*argv, *models, "--out", str(tmp_path / "own")]) == 0


class _Tokens(torch.nn.Module):
    """A user's VideoBackbone that wants ImageNet-normalised clips and names its classes."""

    embed_dim, patch_size, grid, classifier_name, num_frames, token_frames = 8, 8, (4, 4), "h", 4, 4
    mean, std = IMAGENET
    classes = ["a", "b"]

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Conv3d(3, 8, kernel_size=(1, 8, 8), stride=(1, 8, 8))
        self.h = torch.nn.Linear(8, 2)

    def forward_features(self, video, return_blocks=False):
        patches = self.embed(video).flatten(3).permute(0, 2, 3, 1)
        return VideoTokens(patches.mean(dim=(1, 2)), patches)

    def forward_head(self, cls):
        return self.h(cls)

    def forward(self, video):
        return self.forward_head(self.forward_features(video).cls)


class _ConvertingTokens(InputNormalisation, _Tokens):
    mean, std = IMAGENET  # a user's class states its own, over InputNormalisation's default

    def forward_features(self, video, return_blocks=False):
        return super().forward_features(self.renormalise(video), return_blocks)


def test_a_user_backbone_converts_the_clips_to_its_normalisation_or_is_refused(tmp_path):
    video = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    data = [(video, torch.tensor([0, 1]))]
    options = dict(probe_clips=None, gradcam_clips=0)
    with pytest.raises(ValueError, match="cannot convert them: inherit .*InputNormalisation"):
        timematters.diagnose({"mine": _Tokens()}, data, tmp_path / "refused", **options)
    converting = _ConvertingTokens()
    report = timematters.diagnose({"mine": converting}, data, tmp_path / "out", **options)
    assert report["models"]["mine"]["mean"] == list(IMAGENET[0])
    with torch.no_grad():  # what it scored is what it scores on the ImageNet-normalised pixels
        assert torch.allclose(converting(video), _Tokens()(_as_imagenet(video)), atol=1e-5)
    assert converting.class_names == ["a", "b"] and converting.source == "mine"
    # As data normalised the way it wants, the plain one needs no conversion.
    imagenet = [(_as_imagenet(video), torch.tensor([0, 1]))]
    timematters.diagnose(
        {"mine": _Tokens()}, imagenet, tmp_path / "as", mean=IMAGENET[0], std=IMAGENET[1], **options
    )


class _ConvertingLogits(InputNormalisation, torch.nn.Module):
    """A user's logits-only module (no tokens) that converts its clips itself."""

    mean, std = IMAGENET

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.h = torch.nn.Linear(3, 2)

    def forward(self, video):
        return self.h(self.renormalise(video).mean(dim=(2, 3, 4)))


def test_a_backbone_without_convert_state_dict_keeps_its_tokens_and_one_conversion(tmp_path):
    """convert_state_dict is for loading foreign checkpoints only: without it a model still
    honours the protocol; and a logits-only module that converts its clips is not converted
    twice by the wrapper around it."""
    from timematters.backbones import VideoBackbone
    from timematters.config import EvalConfig

    video = torch.rand(4, 3, 4, 32, 32) * 2 - 1
    data = [(video, torch.tensor([0, 1, 1, 0]))]
    options = dict(probe_clips=None, gradcam_clips=0, settings=EvalConfig(bootstrap_samples=0))
    for model in (_ConvertingTokens(), _ConvertingLogits()):
        model.eval()
        with torch.no_grad():
            model.set_input_normalisation(*IMAGENET)
            truth = model(_as_imagenet(video)).softmax(-1)
            model.set_input_normalisation((0.5,) * 3, (0.5,) * 3)
        name = type(model).__name__
        report = timematters.diagnose({name: model}, data, tmp_path / name, **options)
        result = timematters.evaluate(model, data, settings=EvalConfig(bootstrap_samples=0))
        assert torch.allclose(torch.as_tensor(result.probs).float(), truth, atol=1e-6), name
        expected = 100 * (truth.argmax(1) == data[0][1]).float().mean().item()
        assert report["shuffle_test"][name]["all"]["top1"] == pytest.approx(expected), name
    assert isinstance(_ConvertingTokens(), VideoBackbone)
    assert report["models"]["_ConvertingLogits"]["mean"] == list(IMAGENET[0])


def test_fine_tuning_a_classifier_that_orders_the_classes_otherwise_keeps_each_row_its_class(
    tmp_path, capsys
):
    order = ["still", "right", "left"]  # the hub model's; the list's sort to left, right, still
    _save_hub_classifier(tmp_path / "hub", order)
    for i in range(3):
        write_video(tmp_path / f"{i}.mp4", moving_square_frames(8, 48, 48))
    (tmp_path / "train.txt").write_text(
        "".join(f"{i}.mp4 {n}\n" for i, n in enumerate(sorted(order)))
    )
    cfg = tiny_config(
        tmp_path / "run",
        "data.dataset=videolist",
        f"data.annotations={tmp_path / 'train.txt'}",
        f"data.val_annotations={tmp_path / 'train.txt'}",
        f"model.name=hf:{tmp_path / 'hub'}",
        "model.kwargs={}",
        "loss.flow.weight=0",
        "data.train_short_side=[32,40]",
        "data.eval_short_side=32",
        "train.batch_size=3",
        "train.max_steps=1",
        "optim.lr=1e-12",
        "optim.weight_decay=0",
    )
    train(cfg)
    assert "its classifier's outputs are put in the data's order" in capsys.readouterr().out
    trained = load_model(tmp_path / "run" / "checkpoints" / "last.pth")
    assert trained.class_names == ["left", "right", "still"]
    video = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():  # lr ~0: the same network, its outputs in the data's order
        expected = load_model(f"hf:{tmp_path / 'hub'}")(video)[:, [2, 1, 0]]
        assert torch.allclose(trained(video), expected, atol=1e-4)


def test_evaluate_takes_the_clips_normalisation_inside_clips_normalised():
    torch.manual_seed(0)
    r3d = load_foreign_model("torchvision:r3d_18", num_classes=3, num_frames=4, img_size=32)
    video = torch.rand(4, 3, 4, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0])
    half = timematters.evaluate(r3d, [(video, labels)])
    with clips_normalised({"r3d": r3d}, *IMAGENET):
        imagenet = timematters.evaluate(r3d, [(_as_imagenet(video), labels)])
    assert imagenet.metrics()["all"]["top1"] == half.metrics()["all"]["top1"]
    assert r3d.input_mean == (0.5, 0.5, 0.5)  # told for the block only


def test_evaluate_refuses_a_backbone_that_cannot_convert_the_clips_as_diagnose_does():
    """Before: evaluate scored it on 0.5 / 0.5 clips it does not take, without a word."""
    video, labels = torch.rand(2, 3, 4, 32, 32) * 2 - 1, torch.tensor([0, 1])
    with pytest.raises(ValueError, match="_Tokens takes clips normalised with mean"):
        timematters.evaluate(_Tokens(), [(video, labels)])
    # Clips normalised as it wants, said so: scored.
    with clips_normalised({"mine": _Tokens()}, *IMAGENET):
        result = timematters.evaluate(_Tokens(), [(_as_imagenet(video), labels)])
    assert result.metrics()["all"]["num_clips"] == 2


CONVERTING_MODULE = """
import torch
from torch import nn
from timematters.backbones import InputNormalisation, VideoTokens

class Tokens(InputNormalisation, nn.Module):
    embed_dim, patch_size, grid, classifier_name, num_frames, token_frames = 8, 8, (4, 4), "head", 4, 4
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, num_classes=10):
        super().__init__()
        self.embed = nn.Conv3d(3, 8, kernel_size=(1, 8, 8), stride=(1, 8, 8))
        self.head = nn.Linear(8, num_classes)

    def forward_features(self, video, return_blocks=False):
        patches = self.embed(self.renormalise(video)).flatten(3).permute(0, 2, 3, 1)
        return VideoTokens(patches.mean(dim=(1, 2)), patches)

    def forward_head(self, cls):
        return self.head(cls)

    def forward(self, video):
        return self.forward_head(self.forward_features(video).cls)
"""


def test_a_users_backbone_reloaded_from_its_checkpoint_keeps_its_own_normalisation(
    tmp_path, monkeypatch
):
    """Trained on the data's clips converted to its ImageNet normalisation, it is scored so
    from its checkpoint too (it was told the data's normalisation as its own, and scored
    otherwise than its run did)."""
    (tmp_path / "converting_backbones.py").write_text(CONVERTING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ["model.name=converting_backbones:Tokens", "model.kwargs={}", "loss.flow.weight=0"]
    cfg = tiny_config(tmp_path / "run", *spec, "train.epochs=1")
    train(cfg)
    reloaded = load_model(tmp_path / "run" / "checkpoints" / "last.pth", cfg)
    assert (reloaded.mean, reloaded.std) == IMAGENET
    import converting_backbones

    trained = converting_backbones.Tokens(num_classes=reloaded.head.out_features)
    trained.load_state_dict(reloaded.state_dict())
    trained.set_input_normalisation(cfg.data.mean, cfg.data.std)  # as training told it
    video = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(video), trained.eval()(video))
