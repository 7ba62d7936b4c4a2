"""`timematters export`: a trained model leaves as a transformers folder or a safetensors file that
gives the checkpoint's outputs, names its classes and says how its clips are made."""

import json

import numpy as np
import pytest
import torch
from einops import rearrange
from test_adapters import _save_hf
from test_train import tiny_config

import timematters
from timematters.backbones import create_backbone
from timematters.cli import main
from timematters.data.synthetic import SyntheticVideoDataset
from timematters.data.transforms import EvalTransform
from timematters.engine.export import _recipe_extras
from timematters.engine.train import train

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from safetensors.torch import load_model  # noqa: E402

SHORT = ["data.synthetic.num_train=8", "train.epochs=1", "train.progress=false"]
CLASSES = list(SyntheticVideoDataset("test", 1).classes)


def _trained(tmp_path, name: str, *extra: str):
    """The last checkpoint of a two-step run of ``name`` on 4 frames of 32²."""
    run = tmp_path / name.replace(":", "_").replace("/", "_")
    train(tiny_config(run, *SHORT, *extra))
    return run / "checkpoints" / "last.pth"


def _clip(frames: int, size: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, frames, size, size).clamp(-1, 1)


def test_timesformer_exports_to_transformers_with_the_checkpoints_outputs(tmp_path, capsys):
    normalisation = ["data.mean=[0.45,0.4,0.35]", "data.std=[0.225,0.2,0.25]"]
    checkpoint = _trained(tmp_path, "timesformer", *normalisation)
    assert main(["export", str(checkpoint)]) == 0
    out = checkpoint.with_name("last_export")
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "left out: TIME head flow, TIME head order" in printed

    ours = timematters.load_model(checkpoint)
    theirs = transformers.AutoModelForVideoClassification.from_pretrained(out).eval()
    again = timematters.load_model(f"hf:{out}")  # and back into every timematters command
    again.set_input_normalisation(again.mean, again.std)  # clips made as ours were
    video = _clip(4, 32)
    with torch.no_grad():
        logits = ours(video)
        hf_logits = theirs(pixel_values=rearrange(video, "b c t h w -> b t c h w")).logits
        torch.testing.assert_close(hf_logits, logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(again(video), logits, rtol=0, atol=1e-5)
    assert logits.abs().max() > 0.1  # a non-trivial comparison
    assert [theirs.config.id2label[i] for i in range(len(CLASSES))] == CLASSES
    assert again.class_names == CLASSES
    assert (again.mean, again.std) == ((0.45, 0.4, 0.35), (0.225, 0.2, 0.25))

    # The video processor makes the clips the checkpoint was evaluated on: short side resized,
    # centre crop, normalised (the benchmark's frames are made at the crop size: no resize).
    processor = transformers.AutoVideoProcessor.from_pretrained(out)
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    made = processor([torch.from_numpy(frames).permute(0, 3, 1, 2)], return_tensors="pt")
    expected = EvalTransform(32, 32, num_crops=1, mean=again.mean, std=again.std)(frames)[0]
    pixel_values = rearrange(made["pixel_values"][0], "t c h w -> c t h w")
    torch.testing.assert_close(pixel_values, expected, rtol=0, atol=1e-5)

    # The model card's own lines load it and score a clip.
    card = (out / "README.md").read_text()
    assert "order (λ = 1), debias (λ = 1), flow (λ = 1)" in card
    assert "| timesformer_tiny_patch8_64 |" in card  # the run's final evaluation of it
    # A whole video in: the lines take the frames the evaluation takes (segment centres).
    from timematters.data.sampling import EvalClip

    snippet = card.split("```python")[1].split("```")[0].replace('"."', repr(str(out)))
    video = np.random.default_rng(1).integers(0, 256, (13, 32, 48, 3), dtype=np.uint8)
    scope = {"video": torch.from_numpy(video).permute(0, 3, 1, 2)}
    exec(snippet, scope)
    taken = EvalClip().indices(13, 4)
    assert list(scope["indices"]) == list(taken)
    clip = processor([torch.from_numpy(video[taken]).permute(0, 3, 1, 2)], return_tensors="pt")
    torch.testing.assert_close(scope["logits"], theirs(**clip).logits)

    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "hf" and info["classes"] == CLASSES
    assert info["clips"] == {
        "num_frames": 4,
        "sampling": "segment",
        "dense_stride": 8,
        "frame_size": 32,
        "resize_short_side": 32,
        "interpolation": "bilinear",
        "test_views": {"temporal": 1, "spatial_crops": 1, "aggregation": "logits"},
        "mean": [0.45, 0.4, 0.35],
        "std": [0.225, 0.2, 0.25],
    }


def test_a_run_of_a_hugging_face_model_exports_back_to_its_own_kind(tmp_path):
    folder = _save_hf(tmp_path, "videomae")
    overrides = ["model.num_frames=8", "data.crop_size=64", "loss.flow.weight=0"]
    checkpoint = _trained(tmp_path, "hf", f"model.name=hf:{folder}", "model.kwargs={}", *overrides)
    out = tmp_path / "exported"
    info = timematters.export(checkpoint, out)  # the Python API
    assert info["format"] == "hf" and info["spec"] == f"hf:{out}"

    ours = timematters.load_model(checkpoint)
    theirs = transformers.AutoModelForVideoClassification.from_pretrained(out).eval()
    assert type(theirs).__name__ == "VideoMAEForVideoClassification"
    video = _clip(8, 64)
    with torch.no_grad():
        # The adapter renormalises the dataset's clips to the model's own mean and std.
        mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (ours.mean, ours.std))
        pixels = ((video * 0.5 + 0.5) - mean) / std
        hf_logits = theirs(pixel_values=rearrange(pixels, "b c t h w -> b t c h w")).logits
        torch.testing.assert_close(hf_logits, ours(video), rtol=0, atol=1e-5)
    assert [theirs.config.id2label[i] for i in range(len(CLASSES))] == CLASSES
    assert timematters.load_model(f"hf:{out}").mean == ours.mean

    # As weights and a config, built as export.json says.
    weights = tmp_path / "weights"
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(weights)]) == 0
    network = json.loads((weights / "export.json").read_text())["network"]
    config = transformers.AutoConfig.for_model(**json.loads(network["config"]))
    rebuilt = transformers.AutoModelForVideoClassification.from_config(config).eval()
    load_model(rebuilt, str(weights / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixel_values=pixels.transpose(1, 2)).logits, hf_logits)
    assert [rebuilt.config.id2label[i] for i in range(len(CLASSES))] == CLASSES  # not LABEL_0


@pytest.mark.parametrize(
    "name",
    ["timesformer_tiny_patch8_64", "motionformer_tiny_patch8_64", "xvit_tiny_patch8_64"],
)
def test_safetensors_export_builds_our_backbones_from_export_json(tmp_path, monkeypatch, name):
    checkpoint = _trained(tmp_path, name, f"model.name={name}")
    out = tmp_path / "weights"
    assert main(["export", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "safetensors" and info["network"]["name"] == name
    network = create_backbone(name, **info["network"]["kwargs"])
    load_model(network, str(out / "model.safetensors"))
    carded = _card_loads(out, monkeypatch)  # the model card's own lines build and load it
    torch.testing.assert_close(carded.state_dict(), network.state_dict(), rtol=0, atol=0)
    video = _clip(4, 32)
    with torch.no_grad():  # the card's model as evaluated: in eval mode (drop-path off)
        expected = timematters.load_model(checkpoint)(video)
        torch.testing.assert_close(carded(video), expected, rtol=0, atol=0)


def test_an_image_vit_exports_weights_that_timm_builds(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from timematters.data.synthetic_images import write_backgrounds_tree
    from timematters.image_demo import Budget, image_demo_config

    budget = Budget(num_train=8, num_test=2, epochs=1, img_size=32)
    root = write_backgrounds_tree(tmp_path / "in9", num_train=8, num_test=2, img_size=32)
    cfg = image_demo_config(
        order=True, debias=True, seed=0, data_root=root, out=tmp_path / "vit", budget=budget
    )
    cfg.train.batch_size, cfg.train.progress = 4, False
    train(cfg)
    checkpoint = tmp_path / "vit" / "checkpoints" / "last.pth"
    assert main(["export", str(checkpoint)]) == 0  # auto: transformers has no such ViT form
    printed = capsys.readouterr().out
    hint = json.loads(checkpoint.with_name("last_export").joinpath("export.json").read_text())
    assert hint["timm"] in printed and "TIME head order" in printed
    card = checkpoint.with_name("last_export").joinpath("README.md").read_text()
    assert "- image-classification" in card  # its evaluation: Table 4, not a 1-frame shuffle
    assert "Backgrounds Challenge's test variations" in card and "Mixed-Rand" in card
    # It speaks of images, not of frames and their order (before: "1 frames ... of the video").
    assert "## Images" in card and "One image (a clip of one frame)" in card
    assert "patch-shuffled images" in card and "order of its frames" not in card
    assert hint["clips"]["interpolation"] == "bicubic" and "resized (bicubic, antialiased)" in card
    assert "clips: 1 frame of 32²" in printed
    network = eval(hint["timm"], {"timm": timm})  # the line export.json gives, as it is
    load_model(network, str(checkpoint.with_name("last_export") / "model.safetensors"))
    images = _clip(1, 32)
    with torch.no_grad():
        expected = timematters.load_model(checkpoint)(images)
        torch.testing.assert_close(network.eval()(images[:, :, 0]), expected, rtol=0, atol=1e-6)


def test_a_torchvision_run_exports_the_networks_own_weights(tmp_path, monkeypatch):
    spec = ["model.name=torchvision:r3d_18", "model.kwargs={}"]
    spec += ["loss.flow.weight=0", "loss.order.weight=0"]  # 1 token frame at 4 frames
    checkpoint = _trained(tmp_path, "r3d", *spec)
    out = tmp_path / "exported"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0  # auto: safetensors
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "safetensors" and info["build"].endswith("r3d_18(num_classes=10)")
    from torchvision.models.video import r3d_18

    network = r3d_18(num_classes=10).eval()
    load_model(network, str(out / "model.safetensors"))
    carded = _card_loads(out, monkeypatch)
    torch.testing.assert_close(carded.state_dict(), network.state_dict(), rtol=0, atol=0)
    trained = timematters.load_model(checkpoint)
    video = _clip(4, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (trained.mean, trained.std))
    assert info["clips"]["mean"] == list(trained.mean)  # Kinetics' statistics, the network's own
    with torch.no_grad():  # the card's model in eval mode: BatchNorm's running statistics
        expected = trained(video)
        torch.testing.assert_close(
            carded(((video * 0.5 + 0.5) - mean) / std), expected, rtol=0, atol=1e-5
        )


def _card_loads(out, monkeypatch) -> torch.nn.Module:
    """Run the model card's Load lines in the export's folder, as a user would; their model."""
    card = (out / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(code, scope)
    return scope["model"]


def test_a_run_of_your_own_module_exports_its_weights(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def pool(num_classes=10):\n"
        "    return nn.Sequential(nn.Flatten(2), nn.Flatten(1), nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ["model.name=my_models:pool", "model.kwargs={}", "loss.order.weight=0"]
    checkpoint = _trained(tmp_path, "mine", *spec, "loss.flow.weight=0")
    out = tmp_path / "exported"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["network"] == {"kind": "module", "spec": "my_models:pool"}
    assert info["build"] == "pool(num_classes=10)"  # the run's call: what its signature takes
    import my_models

    network = my_models.pool(num_classes=10)
    video = _clip(4, 32)
    network(video)  # LazyLinear takes its size from a first clip
    load_model(network, str(out / "model.safetensors"))
    with torch.no_grad():
        expected = timematters.load_model(checkpoint)(video)
        torch.testing.assert_close(network(video), expected, rtol=0, atol=0)


PROTOCOL_MODULE = """
import torch
from torch import nn
from timematters.backbones import VideoTokens

class Tokens(nn.Module):
    embed_dim, patch_size, grid, classifier_name, num_frames, token_frames = 8, 8, (4, 4), "head", 4, 4

    def __init__(self, num_classes=10):
        super().__init__()
        self.embed = nn.Conv3d(3, 8, kernel_size=(1, 8, 8), stride=(1, 8, 8))
        self.head = nn.Linear(8, num_classes)

    def forward_features(self, video, return_blocks=False):
        patches = self.embed(video).flatten(3).permute(0, 2, 3, 1)
        return VideoTokens(patches.mean(dim=(1, 2)), patches)

    def forward_head(self, cls):
        return self.head(cls)

    def forward(self, video):
        return self.forward_head(self.forward_features(video).cls)

    def convert_state_dict(self, state_dict, source):
        return state_dict, set()
"""


def test_a_run_of_your_own_video_backbone_exports_the_lines_that_rebuild_it(tmp_path, monkeypatch):
    (tmp_path / "my_backbones.py").write_text(PROTOCOL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ["model.name=my_backbones:Tokens", "model.kwargs={}", "loss.flow.weight=0"]
    checkpoint = _trained(tmp_path, "tokens", *spec)
    out = tmp_path / "exported"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["network"] == {"kind": "module", "spec": "my_backbones:Tokens"}
    assert (
        "create_backbone" not in info["build"]
        and "create_backbone" not in (out / "README.md").read_text()
    )
    import my_backbones

    network = my_backbones.Tokens(num_classes=10)
    load_model(network, str(out / "model.safetensors"))
    carded = _card_loads(out, monkeypatch)  # the card's lines import the module and load it
    torch.testing.assert_close(carded.state_dict(), network.state_dict(), rtol=0, atol=0)
    video = _clip(4, 32)
    with torch.no_grad():
        expected = timematters.load_model(checkpoint)(video)
        torch.testing.assert_close(network(video), expected, rtol=0, atol=0)


def test_what_cannot_be_exported_is_refused_with_the_fix(tmp_path, capsys):
    motionformer = _trained(tmp_path, "mf", "model.name=motionformer_tiny_patch8_64")
    assert main(["export", str(motionformer), "--format", "hf"]) == 2
    error = capsys.readouterr().err
    assert "no Hugging Face transformers form" in error and "--format safetensors" in error
    assert not motionformer.with_name("last_export").exists()  # refused before writing

    readd = "model.kwargs={embed_dim: 24, depth: 2, num_heads: 2, readd_time_embed: true}"
    readded = _trained(tmp_path, "readd", readd)
    assert main(["export", str(readded), "--format", "hf"]) == 2
    assert "Appendix D" in capsys.readouterr().err

    weights = tmp_path / "weights.pth"
    torch.save(torch.load(motionformer, weights_only=True)["model"], weights)
    assert main(["export", str(weights)]) == 2
    assert "not a timematters checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pth")]) == 2
    assert main(["export", str(motionformer.parents[1])]) == 2  # the run folder
    assert f"checkpoint is {motionformer}" in capsys.readouterr().err


def test_an_export_replaces_its_own_folder_only(tmp_path, capsys):
    checkpoint = _trained(tmp_path, "timesformer")
    someone = tmp_path / "someones_model"  # a save_pretrained folder of another model
    someone.mkdir()
    (someone / "config.json").write_text("{}")
    assert main(["export", str(checkpoint), "--out", str(someone)]) == 2
    assert "config.json" in capsys.readouterr().err
    assert (someone / "config.json").read_text() == "{}" and len(list(someone.iterdir())) == 1

    # A folder holding other files (frames): export.json lists what the export wrote, not them.
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "img_00001.png").write_bytes(b"png")
    assert main(["export", str(checkpoint), "--out", str(frames), "--format", "hf"]) == 0
    files = json.loads((frames / "export.json").read_text())["files"]
    assert "img_00001.png" not in files and {"config.json", "model.safetensors"} <= set(files)
    assert sorted(p.name for p in frames.iterdir()) == sorted([*files, "img_00001.png"])

    copy = tmp_path / "elsewhere.pth"  # not in its run's folder: no evaluation is claimed
    copy.write_bytes(checkpoint.read_bytes())
    assert main(["export", str(copy), "--out", str(tmp_path / "copy")]) == 0
    assert "No evaluation of this checkpoint is known" in (tmp_path / "copy/README.md").read_text()

    out = tmp_path / "export"
    assert main(["export", str(checkpoint), "--out", str(out), "--format", "hf"]) == 0
    assert main(["export", str(checkpoint), "--out", str(out), "--format", "safetensors"]) == 0
    assert not (out / "config.json").exists()  # the earlier export went whole
    run = checkpoint.parents[1]
    assert main(["export", str(checkpoint), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" not in err
    # --overwrite replaces earlier exports and others' files of those names, never a run.
    assert main(["export", str(checkpoint), "--out", str(run), "--overwrite"]) == 2
    assert checkpoint.is_file() and (run / "config.yaml").is_file()


# 71 x 40: 39 pixels to spare, the centre crop at 19 (transformers floors; round() gave 20).
@pytest.mark.parametrize("height, width", [(60, 90), (90, 60), (40, 71), (71, 40)])
def test_the_video_processor_resizes_and_crops_as_the_evaluation_does(height, width):
    from timematters.config import load_config
    from timematters.engine.export import _video_processor

    overrides = ["data.crop_size=32", "data.eval_short_side=40", "data.mean=[0.45,0.4,0.35]"]
    cfg = load_config("videolist/time", [*overrides, "data.std=[0.225,0.2,0.25]"])
    network = torch.nn.Identity()  # ours take the dataset's normalisation
    processor = _video_processor("videomae", network, cfg)
    frames = np.random.default_rng(0).integers(0, 256, (4, height, width, 3), dtype=np.uint8)
    made = processor([torch.from_numpy(frames).permute(0, 3, 1, 2)], return_tensors="pt")
    expected = EvalTransform(32, 40, num_crops=1, mean=cfg.data.mean, std=cfg.data.std)(frames)
    pixel_values = rearrange(made["pixel_values"][0], "t c h w -> c t h w")
    torch.testing.assert_close(pixel_values, expected[0], rtol=0, atol=1e-5)


def test_the_model_card_says_its_lines_make_one_of_the_evaluations_views(tmp_path):
    from timematters.engine.export import _views_note

    checkpoint = _trained(tmp_path, "views")
    timematters.export(checkpoint, tmp_path / "out")
    card = (tmp_path / "out/README.md").read_text()
    assert "needs transformers 5 or later" in card and 'pipeline("video-classification")' in card
    assert "combined" not in card  # the built-in benchmark is scored on one view
    views = {"temporal": 2, "spatial_crops": 3, "aggregation": "softmax"}
    (note, _) = _views_note({"format": "hf", "clips": {"test_views": views}}, images=False)
    assert "the evaluation above combined 6 views (2 temporal x 3 spatial, their softmax" in note


def test_the_model_card_names_the_fine_tuning_options_a_run_used(tmp_path):
    extras = [
        "optim.layer_decay=0.75",
        "data.mixup=0.8",
        "data.cutmix=1.0",
        "data.random_erase=0.25",
    ]
    checkpoint = _trained(tmp_path, "recipe", *extras)
    timematters.export(checkpoint, tmp_path / "out")
    card = (tmp_path / "out/README.md").read_text()
    assert (
        "Also trained with layer-wise lr decay 0.75, Mixup (α = 0.8), CutMix (α = 1), random "
        "erasing (p = 0.25)." in card
    )
    plain = _trained(tmp_path, "plain")
    timematters.export(plain, tmp_path / "plain_out")
    assert "Also trained with" not in (tmp_path / "plain_out/README.md").read_text()
    repeated = {"data": {"repeated_augmentation": 2}}  # decoded videos only: not this benchmark
    assert _recipe_extras(repeated) == "repeated augmentation (2 clips a video)"


def test_without_transformers_auto_exports_safetensors_and_hf_says_what_it_needs(
    tmp_path, monkeypatch, capsys
):
    import importlib.util

    checkpoint = _trained(tmp_path, "timesformer_tiny_patch8_64")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name)
    )
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "auto")]) == 0
    assert "transformers is not installed" in capsys.readouterr().err
    assert json.loads((tmp_path / "auto" / "export.json").read_text())["format"] == "safetensors"
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "pip install 'timematters[hf]', or --format safetensors" in capsys.readouterr().err


def test_a_benchmark_checkpoint_and_its_export_make_the_same_clips_in_predict(tmp_path):
    # The built-in benchmark renders its frames at the crop size: the checkpoint's clips were
    # resized to data.eval_short_side (224) first, a 7x zoom for 32² frames, its export's not.
    from timematters.diagnostics.predict import predict

    checkpoint = _trained(tmp_path, "timesformer")
    assert main(["export", str(checkpoint)]) == 0
    frames = np.random.default_rng(0).integers(0, 256, (6, 36, 44, 3), dtype=np.uint8)
    ours = predict(timematters.load_model(checkpoint), frames, perturbations=())
    theirs = predict(
        timematters.load_model(f"hf:{checkpoint.with_name('last_export')}"),
        frames,
        perturbations=(),
    )
    assert [name for name, _ in ours.top] == [name for name, _ in theirs.top]
    np.testing.assert_allclose([p for _, p in ours.top], [p for _, p in theirs.top], atol=1e-5)


def test_the_model_card_says_where_training_began_and_a_best_checkpoints_evaluation(tmp_path):
    source = _trained(tmp_path, "source")
    run = tmp_path / "fine_tuned"
    train(tiny_config(run, *SHORT), init_from=source)  # --init-from replaces model.pretrained
    timematters.export(run / "checkpoints" / "last.pth", tmp_path / "out")
    card = (tmp_path / "out/README.md").read_text()
    assert ", from source/checkpoints/last.pth: epoch 1" in card

    # A best.pth of an epoch's end before the last: its evaluation, not "none known".
    state = torch.load(source, weights_only=False)
    state.update(final_eval_lines=None, best_top1=42.25, best_epoch=1)
    best = tmp_path / "earlier" / "checkpoints" / "best.pth"
    best.parent.mkdir(parents=True)
    torch.save(state, best)
    timematters.export(best, tmp_path / "best_out")
    card = (tmp_path / "best_out/README.md").read_text()
    assert (
        "Top-1 42.2% on the test clips at the end of epoch 1 (the evaluation that made this" in card
    )


def test_a_card_titles_a_local_model_by_its_folders_name_and_a_hub_id_as_it_is():
    from timematters.engine.export import _display_name

    assert _display_name("hf:/home/me/models/videomae-ssv2") == "hf:videomae-ssv2"
    assert _display_name("hf:MCG-NJU/videomae-base") == "hf:MCG-NJU/videomae-base"
    assert _display_name("timesformer") == "timesformer"


@pytest.mark.parametrize("kind", ["videomae", "vjepa2"])
def test_transformers_video_pipeline_classifies_with_an_exported_folder(tmp_path, kind):
    folder = _save_hf(tmp_path, kind)
    overrides = ["model.num_frames=8", "data.crop_size=64", "loss.flow.weight=0"]
    checkpoint = _trained(tmp_path, kind, f"model.name=hf:{folder}", "model.kwargs={}", *overrides)
    out = tmp_path / "exported"
    timematters.export(checkpoint, out)
    # V-JEPA 2's config names its clip length frames_per_clip; the pipeline reads num_frames.
    pipe = transformers.pipeline("video-classification", model=str(out))
    video = np.random.default_rng(0).integers(0, 256, (20, 80, 96, 3), dtype=np.uint8)
    scores = pipe(video, top_k=len(CLASSES))  # frames: a file needs torchcodec to decode
    assert sorted(score["label"] for score in scores) == sorted(CLASSES)
    assert sum(score["score"] for score in scores) == pytest.approx(1, abs=1e-5)
