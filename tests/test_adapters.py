"""Every video model: Hugging Face, torchvision and a user's own module through the backbone
protocol, diagnosed, evaluated and TIME-trained; the official TIME checkpoints loaded. Tiny random
models built from their configs, no downloads."""

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import timematters  # noqa: E402
from timematters.backbones import VideoBackbone, create_backbone  # noqa: E402
from timematters.backbones.adapters import (  # noqa: E402
    load_foreign_model,
    rebuild_foreign_model,
)
from timematters.backbones.pretrained import PretrainedKeyError, load_pretrained  # noqa: E402
from timematters.cli import main  # noqa: E402
from timematters.config import LossConfig, load_config  # noqa: E402
from timematters.data.build import build_dataset  # noqa: E402
from timematters.data.synthetic import SyntheticVideoDataset  # noqa: E402
from timematters.engine.checkpoint import load_checkpoint  # noqa: E402
from timematters.engine.model import in_model_classes  # noqa: E402
from timematters.engine.train import train  # noqa: E402
from timematters.losses import build_objective  # noqa: E402

IMG, T, K = 64, 8, 10
# The built-in benchmark at toy size: 8 frames of 64², 10 classes.
DATA = [
    "data.synthetic.num_train=16",
    "data.synthetic.num_test=12",
    "data.num_workers=0",
    "eval.batch_size=10",
    "train.progress=false",
    "train.device=cpu",
    "train.precision=fp32",
]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


HF_KINDS = ("timesformer", "videomae", "vivit", "vjepa2", "videoprism")
# Token frames per model: V-JEPA 2, VideoMAE and ViViT embed 2-frame tubelets.
HF_TOKEN_FRAMES = {"timesformer": T, "videomae": T // 2, "vivit": T // 2, "vjepa2": T // 2}
HF_TOKEN_FRAMES["videoprism"] = T


def _save_hf(folder: Path, kind: str, **extra) -> Path:
    torch.manual_seed(0)
    sizes = dict(image_size=IMG, num_frames=T, num_labels=K, **TINY, **extra)
    if kind == "vjepa2":  # its own names for the clip size, and a predictor and a pooler
        config = transformers.VJEPA2Config(
            crop_size=IMG,
            frames_per_clip=T,
            patch_size=16,
            tubelet_size=2,
            mlp_ratio=2.0,
            pred_hidden_size=32,
            pred_num_hidden_layers=1,
            pred_num_attention_heads=2,
            num_pooler_layers=1,
            num_labels=K,
            **{k: v for k, v in TINY.items() if k != "intermediate_size"},
        )
        model = transformers.VJEPA2ForVideoClassification(config)
    elif kind == "videoprism":  # one spatial and one temporal layer
        config = transformers.VideoPrismVisionConfig(
            tubelet_size=[1, 16, 16],
            num_spatial_layers=1,
            num_temporal_layers=1,
            **{k: v for k, v in sizes.items() if k != "num_hidden_layers"},
        )
        model = transformers.VideoPrismForVideoClassification(config)
    elif kind == "timesformer":
        model = transformers.TimesformerForVideoClassification(
            transformers.TimesformerConfig(patch_size=16, **sizes)
        )
    elif kind == "videomae":
        model = transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(patch_size=16, tubelet_size=2, **sizes)
        )
    else:
        model = transformers.VivitForVideoClassification(
            transformers.VivitConfig(tubelet_size=[2, 16, 16], **sizes)
        )
    model.save_pretrained(folder / kind)
    return folder / kind


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    return {kind: _save_hf(folder, kind) for kind in HF_KINDS}


USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class FramePool(nn.Module):
        '''Logits from per-frame colour means, averaged over time: blind to frame order.'''

        def __init__(self, num_classes=10):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)

        def forward(self, video):
            return self.fc(video.mean(dim=(2, 3, 4)))

    def frame_pool(num_classes=10):
        torch.manual_seed(0)
        return FramePool(num_classes)
    """
)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_video_models.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    yield "my_video_models:frame_pool"
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def r3d_weights(tmp_path_factory):
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "r3d_18.pth"
    torch.save(r3d_18(weights=None, num_classes=K).state_dict(), path)
    return path


def _specs(hf_models, user_module, r3d_weights) -> dict[str, str]:
    return {
        "hf_timesformer": f"hf:{hf_models['timesformer']}",
        "hf_videomae": f"hf:{hf_models['videomae']}",
        "hf_vivit": f"hf:{hf_models['vivit']}",
        "hf_vjepa2": f"hf:{hf_models['vjepa2']}",
        "hf_videoprism": f"hf:{hf_models['videoprism']}",
        "r3d_18": f"torchvision:r3d_18:{r3d_weights}",
        "swin3d_t": "torchvision:swin3d_t",  # no weights: sized to the benchmark's 10 classes
        "user": user_module,
    }


@pytest.mark.parametrize(
    "name",
    [*(f"hf_{kind}" for kind in HF_KINDS), "r3d_18", "swin3d_t", "user"],
)
def test_diagnose_any_model_from_the_command_line(
    tmp_path, capsys, caplog, hf_models, user_module, r3d_weights, name
):
    spec = _specs(hf_models, user_module, r3d_weights)[name]
    out = tmp_path / "out"
    argv = ["diagnose", "--config", "synthetic/time", *DATA, "--model", spec, "--name", name]
    code = main([*argv, "--out", str(out), "--probe-clips", "4", "--gradcam-clips", "2"])
    assert code == 0
    report = (out / "report.md").read_text()
    data = json.loads((out / "diagnose.json").read_text())
    assert data["shuffle_test"][name]["all"]["num_clips"] == 12
    assert sum(data["confidence_gap"][name]["all"]["mass"]) == pytest.approx(1.0)
    if name == "user":  # logits only: the report says why there is no probe and no GradCAM
        # Nor does it name its classes: the order it is scored in is said (a video list's
        # classes are its sorted names, maybe not the order it was trained in).
        assert "names no classes: its output k is scored as the data's class k" in caplog.text
        assert "gives logits only" in data["order_probe"]["unsupported"][name]
        assert "gives logits only" in data["gradcam"]["skipped"][name]
        assert "no order probe" in report
        return
    accuracy = data["order_probe"]["accuracy"][name]
    assert "final" in accuracy or data["order_probe"]["skipped"][name]
    assert all(0 <= a <= 100 for a in accuracy.values())
    maps = np.load(out / "gradcam.npz")[f"maps_{name}"]
    assert maps.shape == (2, T, IMG, IMG) and np.isfinite(maps).all()
    assert "## Temporal-order probe" in report and "## GradCAM" in report
    if name == "r3d_18":  # layer4 pools 8 frames into 1: the report says so
        assert data["order_probe"]["skipped"][name]["block4"].startswith("one token frame")
        # Its blocks halve the frames: chance is per block, each cell names its frames.
        assert data["order_probe"]["chance"][name] == {
            "block1": 12.5,
            "block2": 25.0,
            "block3": 50.0,
        }
        assert f"| {name} | 100 / fr. | " in report and " (4 fr.) |" in report
        assert data["models"][name]["trained_with"] == str(r3d_weights)
    random_weights = name == "swin3d_t"  # a torchvision spec without WEIGHTS: said, twice
    assert ("**Random weights**" in report) is random_weights
    assert ("has random weights" in capsys.readouterr().err) is random_weights


def _renormalised(video: torch.Tensor, mean, std) -> torch.Tensor:
    """Clips normalised with mean = std = 0.5 -> normalised with ``mean`` / ``std``."""
    pixels = video * 0.5 + 0.5
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1, 1)


@pytest.mark.parametrize("kind", HF_KINDS)
def test_adapted_hf_models_give_the_hf_models_logits(tmp_path, kind):
    folder = _save_hf(tmp_path, kind)
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": imagenet[0], "image_std": imagenet[1]})
    )
    adapted = load_foreign_model(f"hf:{folder}").eval()
    # VideoPrism's processor never normalises, whatever its files say: pixels in [0, 1].
    normalisation = ([0.0] * 3, [1.0] * 3) if kind == "videoprism" else imagenet
    if kind == "vivit":  # its processor maps to [-1, 1] first (offset) unless told otherwise
        normalisation = ([(1 + m) / 2 for m in imagenet[0]], [s / 2 for s in imagenet[1]])
    assert isinstance(adapted, VideoBackbone)
    assert adapted.mean == pytest.approx(tuple(normalisation[0]))
    reference = getattr(transformers, type(adapted.model).__name__).from_pretrained(folder).eval()
    video = torch.randn(2, 3, T, IMG, IMG).clamp(-1, 1)  # ours: mean = std = 0.5
    frames = _renormalised(video, *normalisation).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        theirs = reference(**{reference.main_input_name: frames}).logits.reshape(2, K)
        ours = adapted(video)
        tokens = adapted.forward_features(video, return_blocks=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(adapted.forward_head(tokens.cls), ours)
    assert tokens.patches.shape == (2, HF_TOKEN_FRAMES[kind], (IMG // 16) ** 2, 32)
    assert len(tokens.blocks) == 2 and tokens.blocks[0].shape == tokens.patches.shape
    assert adapted.token_frames == HF_TOKEN_FRAMES[kind]


def test_block_taps_keep_each_layouts_frames_and_patches_apart(hf_models):
    # VideoPrism's spatial layer sees [(B T), S, D] and its temporal layer [(B S), T, D]; both
    # taps must give token (t, s) of clip b where the final tokens have it. With the last layer
    # an identity map (its two residual branches zeroed), its tap equals the final tokens before
    # the final norm, which the norm of the patches shows.
    model = load_foreign_model(f"hf:{hf_models['videoprism']}").eval()
    last = model.model.vision_model.temporal_layers[-1]
    (
        torch.nn.init.zeros_(last.attention.o_proj.weight),
        torch.nn.init.zeros_(last.attention.o_proj.bias),
    )
    torch.nn.init.zeros_(last.mlp.fc2.weight), torch.nn.init.zeros_(last.mlp.fc2.bias)
    video = torch.randn(3, 3, T, IMG, IMG).clamp(-1, 1)
    with torch.no_grad():
        tokens = model.forward_features(video, return_blocks=True)
        norm = model.model.vision_model.layernorm2
        torch.testing.assert_close(norm(tokens.blocks[-1]), tokens.patches, atol=1e-5, rtol=0)
        # The spatial tap of clip 1's frame 2 is that frame alone through the spatial layer.
        alone = model.forward_features(video[1:2, :, [2] * T], return_blocks=True).blocks[0]
        torch.testing.assert_close(tokens.blocks[0][1, 2], alone[0, 0], atol=1e-5, rtol=0)


def test_models_without_a_token_layout_get_their_logits_under_their_own_input_name(
    hf_models, monkeypatch
):
    # V-JEPA 2 and VideoPrism take pixel_values_videos, and VideoPrism's logits keep an axis
    # ([B, 1, K]): a classifier of a type with no token layout still gives [B, K] logits.
    from timematters.backbones.adapters import hf

    monkeypatch.setattr(hf, "_TOKEN_ADAPTERS", {})
    video = torch.randn(2, 3, T, IMG, IMG).clamp(-1, 1)
    for kind in ("vjepa2", "videoprism"):
        logits_only = load_foreign_model(f"hf:{hf_models[kind]}").eval()
        assert type(logits_only).__name__ == "HFClassifier"
        assert (logits_only.num_frames, logits_only.img_size) == (T, IMG)
        monkeypatch.undo()
        with_tokens = load_foreign_model(f"hf:{hf_models[kind]}").eval()
        monkeypatch.setattr(hf, "_TOKEN_ADAPTERS", {})
        with torch.no_grad():
            torch.testing.assert_close(logits_only(video), with_tokens(video), atol=1e-6, rtol=0)


def test_a_hub_id_gets_the_normalisation_of_its_repository(tmp_path, monkeypatch):
    # A hub id is resolved through the hub cache (offline here): a repository laid out as the
    # hub client stores it, with its preprocessor config next to the weights.
    import huggingface_hub.constants

    repo = tmp_path / "cache" / "models--someone--tiny-videomae"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    _save_hf(tmp_path, "videomae").rename(snapshot)
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    (snapshot / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": imagenet[0], "image_std": imagenet[1]})
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    model = load_foreign_model("hf:someone/tiny-videomae")
    assert (model.mean, model.std) == (tuple(imagenet[0]), tuple(imagenet[1]))


def test_each_model_type_gets_its_processors_normalisation(hf_models, tmp_path):
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = ((0.0,) * 3, (1.0,) * 3)
    # No preprocessor config: the defaults of the type's processor in transformers.
    assert _normalisation_of(hf_models["vjepa2"]) == imagenet
    assert _normalisation_of(hf_models["videomae"]) == ((0.5,) * 3, (0.5,) * 3)
    # A processor that does not normalise takes [0, 1] pixels, whatever mean it lists.
    folder = _save_hf(tmp_path, "videomae")
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": False, "image_mean": imagenet[0], "image_std": imagenet[1]})
    )
    assert _normalisation_of(folder) == pixels
    # VideoPrism's processor switches its video processor's normalisation off.
    folder = _save_hf(tmp_path, "videoprism")
    (folder / "video_preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "image_mean": imagenet[0], "image_std": imagenet[1]})
    )
    assert _normalisation_of(folder) == pixels


def _normalisation_of(folder: Path) -> tuple:
    model = load_foreign_model(f"hf:{folder}")
    return model.mean, model.std


@pytest.mark.parametrize("kind", ["timesformer", "videomae", "vjepa2", "videoprism"])
def test_hf_models_checkpoint_their_layers_with_the_same_gradients(hf_models, kind):
    adapted = load_foreign_model(f"hf:{hf_models[kind]}").train()
    video = torch.randn(2, 3, T, IMG, IMG).clamp(-1, 1)
    grads = []
    for checkpointed in (False, True):
        adapted.set_grad_checkpointing(checkpointed)
        adapted(video).logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in adapted.named_parameters() if p.requires_grad})
        adapted.zero_grad(set_to_none=True)
    layers = [m for m in adapted.model.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)
    # Every trainable parameter is on the classifier's path (DDP waits for each one's gradient);
    # V-JEPA 2's predictor, which the classifier never runs, is frozen.
    assert [n for n, grad in grads[0].items() if grad is None] == []
    frozen = {n for n, p in adapted.named_parameters() if not p.requires_grad}
    assert all(".predictor." in n for n in frozen) and bool(frozen) == (kind == "vjepa2")
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_torchvision_models_keep_their_normalisation_and_say_what_they_need():
    model = load_foreign_model("torchvision:r3d_18", num_classes=K, num_frames=T, img_size=IMG)
    model.eval()
    assert model.mean == (0.43216, 0.394666, 0.37645) and model.token_frames == 1
    video = torch.randn(1, 3, T, IMG, IMG)
    with torch.no_grad():
        direct = model.model(_renormalised(video, model.mean, model.std))
        torch.testing.assert_close(model(video), direct, atol=1e-5, rtol=0)
    s3d = load_foreign_model("torchvision:s3d", num_classes=K, num_frames=T, img_size=IMG)
    with pytest.raises(ValueError, match="at least 14 frames of 224"):
        s3d(video)
    with pytest.raises(ValueError, match="not a video model"):
        load_foreign_model("torchvision:resnet50")


def test_vjepa2_trains_under_ddp_with_its_unused_predictor_frozen(tmp_path, hf_models):
    # DDP waits for a gradient of every trainable parameter; V-JEPA 2's predictor gets none
    # (the classifier never runs it), so its second step would fail unless it is frozen.
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from timematters.losses import TimeModel, objective_for_model

    model = load_foreign_model(f"hf:{hf_models['vjepa2']}")
    cfg = LossConfig()
    cfg.flow.weight = 0  # tubelets
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(TimeModel(model, objective_for_model(model, cfg)))
        batch = {
            "video": torch.randn(2, 3, T, IMG, IMG).clamp(-1, 1),
            "label": torch.tensor([1, 2]),
        }
        for step in range(2):
            ddp(batch, torch.Generator().manual_seed(step)).total.backward()
    finally:
        dist.destroy_process_group()
    assert model.model.vjepa2.encoder.layer[0].norm1.weight.grad is not None


def test_foreign_models_rebuild_from_the_architecture_they_record(hf_models, r3d_weights):
    video = torch.randn(2, 3, T, IMG, IMG).clamp(-1, 1)
    specs = [f"hf:{hf_models[kind]}" for kind in HF_KINDS]
    for spec in [*specs, f"torchvision:r3d_18:{r3d_weights}"]:
        model = load_foreign_model(spec, num_frames=T, img_size=IMG).eval()
        architecture = model.architecture()
        json.dumps(architecture)  # plain data, as a weights-only checkpoint must hold
        rebuilt = rebuild_foreign_model(architecture, source=spec, num_frames=T, img_size=IMG)
        rebuilt.load_state_dict(model.state_dict())
        assert type(rebuilt) is type(model) and rebuilt.source == spec
        assert (rebuilt.mean, rebuilt.std) == (model.mean, model.std)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(video), model(video), rtol=0, atol=0)


def test_user_modules_are_found_in_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "models_beside_the_data.py").write_text(USER_MODULE)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.chdir(tmp_path)
    model = load_foreign_model("models_beside_the_data:frame_pool", num_classes=K)
    assert type(model.model).__name__ == "FramePool"
    with pytest.raises(ValueError, match="cannot import no_such_models .*PYTHONPATH"):
        load_foreign_model("no_such_models:build")


def test_eval_of_a_spec_writes_to_a_folder_named_after_it(tmp_path, monkeypatch, r3d_weights):
    monkeypatch.chdir(tmp_path)  # runs/eval/<name> is relative to the working folder
    assert (
        main(["eval", "synthetic/time", *DATA, "--model", f"torchvision:r3d_18:{r3d_weights}"]) == 0
    )
    assert (tmp_path / "runs" / "eval" / "r3d_18_r3d_18" / "eval.json").is_file()  # no ':' in it


def test_eval_of_a_local_hugging_face_folder_writes_beside_it(tmp_path, monkeypatch):
    # Every run's export is last_export/: two of them shared runs/eval/last_export before.
    monkeypatch.chdir(tmp_path)
    folders = [_save_hf(tmp_path / run / "checkpoints", "timesformer") for run in ("a", "b")]
    for folder in folders:
        assert main(["eval", "synthetic/time", *DATA, "--model", f"hf:{folder}"]) == 0
        assert (folder.with_name(f"{folder.name}_eval") / "eval.json").is_file()
    assert not (tmp_path / "runs").exists()


def test_torchvision_weights_by_name_come_from_torchs_cache(tmp_path, monkeypatch):
    # torchvision:r3d_18:DEFAULT reads torchvision's own file from the hub cache (downloaded
    # there when online); here the cache holds a file of that name, written by the test.
    from torchvision.models import get_model_weights
    from torchvision.models.video import r3d_18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = get_model_weights("r3d_18").DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / Path(entry.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(r3d_18(weights=None).state_dict(), cached)
    model = load_foreign_model("torchvision:r3d_18:DEFAULT", num_frames=T, img_size=IMG)
    torch.testing.assert_close(model.model.state_dict(), torch.load(cached), rtol=0, atol=0)
    assert model.num_classes == 400 and model.describe()["trained_with"] == str(entry)
    assert model.class_names == entry.meta["categories"]  # Kinetics-400's names, in order
    cached.unlink()  # not cached and no connection: one line saying where to put the file

    def offline(*args, **kwargs):
        raise OSError("no connection")

    # torchvision's own reference to torch.hub's loader (a real attempt could hang on a network
    # that drops packets instead of refusing them).
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=f"put that file in {cached.parent}"):
        load_foreign_model("torchvision:r3d_18:KINETICS400_V1")


def test_torchvision_weights_get_a_new_classifier_for_other_classes(r3d_weights, caplog):
    # Fine-tuning a Kinetics network on one's own classes: its features, a new classifier, said.
    trained = torch.load(r3d_weights)
    spec = f"torchvision:r3d_18:{r3d_weights}"
    tuned = load_foreign_model(spec, num_classes=3, num_frames=T, img_size=IMG)
    assert tuned.num_classes == 3 and tuned.model.fc.out_features == 3
    said = f"{spec}: its classifier fc ({K} classes) is replaced by a new one of 3"
    assert said in caplog.text
    features = {k: v for k, v in tuned.model.state_dict().items() if not k.startswith("fc.")}
    torch.testing.assert_close(features, {k: trained[k] for k in features}, rtol=0, atol=0)
    kept = load_foreign_model(spec, num_classes=K, num_frames=T, img_size=IMG)
    torch.testing.assert_close(kept.model.state_dict(), trained, rtol=0, atol=0)
    assert load_foreign_model(spec).num_classes == K  # no number given: the file's


def test_python_api_loads_evaluates_and_diagnoses_models(tmp_path, hf_models, user_module):
    cfg = load_config("synthetic/time", DATA)
    models = {
        "hf": timematters.load_model(f"hf:{hf_models['timesformer']}", cfg),
        "user": timematters.load_model(user_module, cfg),
        # A plain module, not loaded from a spec: the logits-only diagnostics apply to it too.
        "plain": torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, K)
        ),
    }
    clips = SyntheticVideoDataset("test", 12, img_size=IMG, num_frames=T)
    # (video, label) pairs, as a user's own loader gives them.
    pairs = torch.utils.data.DataLoader(
        [(clips[i]["video"], clips[i]["label"]) for i in range(12)], batch_size=4
    )
    result = timematters.evaluate(models["hf"], pairs, classes=clips.classes)
    assert result.metrics()["all"]["num_clips"] == 12
    # Without class names: the model's own (a transformers config's id2label), else indices.
    models["hf"].class_names = [f"action_{k}" for k in range(K)]  # as a hub id2label gives them
    assert timematters.evaluate(models["hf"], pairs).classes[-1] == f"action_{K - 1}"
    models["hf"].class_names = None
    assert timematters.evaluate(models["plain"], pairs).classes == [str(k) for k in range(K)]
    frames = torch.utils.data.DataLoader(  # decoded frames, not clips: said how to convert them
        [(torch.zeros(T, IMG, IMG, 3, dtype=torch.uint8), 0)], batch_size=1
    )
    with pytest.raises(ValueError, match=r"uint8 \[1, 8, 64, 64, 3\].*permute\(0, 4, 1, 2, 3\)"):
        timematters.evaluate(models["hf"], frames)
    report = timematters.diagnose(
        models,
        clips,
        tmp_path / "report",
        probe_clips=(4, 4),
        gradcam_clips=1,
    )
    assert set(report["shuffle_test"]) == {"hf", "user", "plain"}
    assert "gives logits only" in report["order_probe"]["unsupported"]["plain"]
    assert set(report["shuffle_test"]["hf"]) == {"all", "temporal", "static"}  # the dataset's
    assert report["models"]["hf"]["token_frames"] == T
    assert (tmp_path / "report" / "report.md").is_file()


@pytest.mark.parametrize("kind", ["timesformer", "videomae", "vjepa2", "videoprism"])
def test_time_trains_hf_models_end_to_end_and_resumes(tmp_path, kind):
    folder = _save_hf(tmp_path, kind)
    flow = "1" if HF_TOKEN_FRAMES[kind] == T else "0"  # VideoMAE's tokens span two frames
    overrides = [
        *DATA,
        f"model.name=hf:{folder}",
        "train.batch_size=4",
        "train.epochs=2",
        "train.log_every=1",
        f"loss.flow.weight={flow}",
    ]
    initial = load_foreign_model(f"hf:{folder}", num_classes=K).state_dict()
    records = []
    result = train(
        load_config("synthetic/time", [*overrides, f"train.out={tmp_path / 'full'}"]),
        step_callback=lambda step, record: records.append(record),
    )
    assert result["steps"] == 8
    terms = {"ce_loss", "order_loss", "debias_loss"} | ({"flow_loss"} if flow == "1" else set())
    assert terms <= set(records[0]) and all(np.isfinite(r[t]) for r in records for t in terms)
    state = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pth")
    changed = [
        k
        for k, v in state["model"].items()
        if ("encoder." in k or "vision_model." in k) and not torch.equal(v, initial[k])
    ]
    assert changed, "the TIME losses did not reach the HF backbone"

    class Killed(Exception):
        pass

    def kill_at_5(step, record):
        if step == 5:
            raise Killed

    killed = load_config(
        "synthetic/time",
        [*overrides, f"train.out={tmp_path / 'killed'}", "train.save_every_steps=2"],
    )
    with pytest.raises(Killed):
        train(killed, step_callback=kill_at_5)
    # The run resumes, and its checkpoint reloads, without the original folder (nor the hub for a
    # hub id): the transformers config the checkpoint recorded rebuilds the model.
    folder.rename(tmp_path / "moved")
    resumed = []
    train(
        killed,
        resume=tmp_path / "killed" / "checkpoints" / "last.pth",
        step_callback=lambda step, record: resumed.append(record),
    )
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[4:]]
    checkpoint = tmp_path / "full" / "checkpoints" / "last.pth"
    reloaded = timematters.load_model(checkpoint)
    assert reloaded.class_names == list(SyntheticVideoDataset("test", 1).classes)
    assert reloaded.family == "hf" and reloaded.source == str(checkpoint)
    torch.testing.assert_close(reloaded.state_dict(), state["model"], rtol=0, atol=0)
    code = main(["eval", "synthetic/time", *DATA, "--model", str(checkpoint)])
    assert code == 0


@pytest.mark.parametrize("name", ["hf_timesformer", "r3d_18", "user"])
def test_init_from_a_checkpoint_of_a_foreign_model_loads_every_weight(
    tmp_path, hf_models, user_module, r3d_weights, name
):
    # Every key of an adapted model starts with "model.", a prefix reading a file strips (as a
    # DDP one's): --init-from put it back nowhere and refused its own runs' checkpoints.
    spec = _specs(hf_models, user_module, r3d_weights)[name]
    trained = load_foreign_model(spec, num_classes=K, num_frames=T, img_size=IMG)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)  # weights that differ from the freshly loaded model's everywhere
    path = tmp_path / "last.pth"
    torch.save({"model": trained.state_dict()}, path)
    fresh = load_foreign_model(spec, num_classes=K, num_frames=T, img_size=IMG)
    report = load_pretrained(fresh, path)
    assert report.new == [] and report.dropped == []
    torch.testing.assert_close(fresh.state_dict(), trained.state_dict(), rtol=0, atol=0)
    # The wrapped model's own state dict (torchvision's, transformers', the user's) fits too.
    fresh = load_foreign_model(spec, num_classes=K, num_frames=T, img_size=IMG)
    load_pretrained(fresh, trained.model.state_dict())
    torch.testing.assert_close(fresh.state_dict(), trained.state_dict(), rtol=0, atol=0)
    # A user's module has no known classifier: one mis-shaped tensor is refused, not every
    # weight quietly left out as a "classifier of another class count".
    if name == "user":
        other = {"model.fc.weight": torch.zeros(K, 4), "model.fc.bias": torch.zeros(K)}
        with pytest.raises(PretrainedKeyError, match=r"model.fc.weight: checkpoint \[10, 4\]"):
            load_pretrained(fresh, other)


def test_init_from_a_foreign_run_trains_from_its_weights(tmp_path, hf_models):
    spec = f"hf:{hf_models['timesformer']}"
    overrides = [*DATA, f"model.name={spec}", "train.batch_size=4", "train.epochs=1"]
    first = train(load_config("synthetic/time", [*overrides, f"train.out={tmp_path / 'a'}"]))
    checkpoint = first["run_dir"] / "checkpoints" / "last.pth"
    code = main(
        ["train", "synthetic/time", *overrides, f"train.out={tmp_path / 'b'}"]
        + ["--init-from", str(checkpoint)]
    )
    assert code == 0
    log = (tmp_path / "b" / "train.log").read_text()
    assert "initialised anew" not in log  # every weight came from the checkpoint


def test_clips_labelled_with_a_models_class_names_are_scored_in_its_classes(tmp_path, capsys):
    # A model that names its classes (as hub checkpoints do) on a few clips labelled by name:
    # the list's labels are read as the model's classes, the argmax stays over all of them.
    from videos import moving_square_frames, write_video

    names = [f"action_{i}" for i in range(K)]
    labels = dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    folder = _save_hf(tmp_path, "videomae", **labels)
    frames = moving_square_frames(10, height=IMG, width=IMG)
    for clip in ("a", "b"):
        write_video(tmp_path / f"{clip}.mp4", frames)
    (tmp_path / "test.txt").write_text("a.mp4 action_7\nb.mp4 action_2\n")
    overrides = [
        "data.dataset=videolist",
        f"data.val_annotations={tmp_path / 'test.txt'}",
        f"model.num_frames={T}",
        f"data.crop_size={IMG}",
        f"data.eval_short_side={IMG}",
        "data.num_workers=0",
        "train.progress=false",
    ]
    cfg = load_config("videolist/time", overrides)
    model = timematters.load_model(f"hf:{folder}", cfg)
    test_set = build_dataset(cfg, "val", flow_labels=False, patch_size=1)
    assert test_set.classes == ["action_2", "action_7"]  # the list's own, sorted
    scored = in_model_classes(cfg, "val", model, test_set)
    assert scored.classes == names and [s.label for s in scored.samples] == [7, 2]
    out = tmp_path / "eval"
    argv = ["eval", "videolist/time", *overrides, "--model", f"hf:{folder}", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "eval.json").read_text())["all"]["num_clips"] == 2
    # A class list fixes the classes: then a model of other classes is refused, as before.
    (tmp_path / "classes.txt").write_text("action_2\naction_7\n")
    assert main([*argv, f"data.class_list={tmp_path / 'classes.txt'}"]) == 2
    assert "other classes" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_a_tubelet_model_trains_with_all_three_losses(tmp_path, backend):
    # VideoMAE's 2-frame tubelets: 4 token frames of 8; flow labelled between tubelets' first
    # frames, in the loader (OpenCV) or on the device (torch), the same [B, 3, S] either way.
    folder = _save_hf(tmp_path, "videomae")
    run = tmp_path / "run"
    argv = ["train", "synthetic/time", *DATA, f"model.name=hf:{folder}", f"flow.backend={backend}"]
    assert main([*argv, "train.epochs=1", f"train.out={run}"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    flow = [r["flow_loss"] for r in records if "flow_loss" in r]
    assert flow and all(math.isfinite(value) for value in flow)


# -- the official TIME release ------------------------------------------------------------------

BACKBONES = ["timesformer_tiny_patch8_64", "motionformer_tiny_patch8_64", "xvit_tiny_patch8_64"]


def _official_time_checkpoint(name: str, model, objective) -> dict:
    """Our model and objective in the official release's layout: the TIME heads inside the
    backbone under their released names, the flow head's key projection with a bias, the
    backbone's own wrapper and prefix; X-ViT's classifier named ``consensus.head``."""
    heads = {}
    for key, value in objective.state_dict().items():
        _, _loss, rest = key.split(".", 2)  # losses.<loss>.<name>
        heads[rest] = value
    heads["mlp_k.bias"] = torch.randn(model.embed_dim)  # softmax cancels it
    backbone = dict(model.state_dict())
    if name.startswith("xvit"):
        for suffix in ("weight", "bias"):
            backbone[f"consensus.head.{suffix}"] = backbone.pop(f"consensus.mlp_head.4.{suffix}")
        return {"state_dict": {f"base_model.{k}": v for k, v in {**backbone, **heads}.items()}}
    if name.startswith("motionformer"):
        backbone = {k.replace("patch_embed.", "patch_embed.", 1): v for k, v in backbone.items()}
    return {"model_state": {f"model.{k}": v for k, v in {**backbone, **heads}.items()}}


@pytest.mark.parametrize("name", BACKBONES)
def test_official_time_checkpoints_load_strictly_and_give_the_same_losses(tmp_path, name):
    def build(seed: int):
        torch.manual_seed(seed)
        model = create_backbone(
            name,
            num_classes=K,
            num_frames=4,
            img_size=32,
            depth=2,
            embed_dim=24,
            num_heads=2,
            drop_path_rate=0.0,
        )
        objective = build_objective(
            LossConfig(), embed_dim=24, num_frames=4, grid=model.grid, patch_size=model.patch_size
        )
        with torch.no_grad():  # no zero-initialised gate hides a parameter
            for p in [*model.parameters(), *objective.parameters()]:
                p.add_(0.05 * torch.randn_like(p))
        return model.eval(), objective.eval()

    model, objective = build(0)
    path = tmp_path / "official.pyth"
    torch.save(_official_time_checkpoint(name, model, objective), path)
    fresh_model, fresh_objective = build(1)
    report = load_pretrained(fresh_model, path, objective=fresh_objective)
    assert (
        not report.new
        and not report.dropped
        and len(report.objective) == len(fresh_objective.state_dict())
    )
    assert any("mlp_k.bias dropped" in note for note in report.notes)
    batch = {
        "video": torch.randn(2, 3, 4, 32, 32),
        "label": torch.tensor([1, 3]),
        "flow_labels": torch.randint(0, 9, (2, 3, 16)),
    }
    with torch.no_grad():
        expected = objective(model, batch, torch.Generator().manual_seed(0))
        got = fresh_objective(fresh_model, batch, torch.Generator().manual_seed(0))
    for term, value in expected.terms.items():
        torch.testing.assert_close(got.terms[term], value, atol=1e-6, rtol=0, msg=term)


def test_in_memory_state_dicts_distilled_deit_and_clip_vits(tmp_path):
    source = create_backbone("vit_tiny_patch16_64", num_classes=5, img_size=32, patch_size=8)
    target = create_backbone("vit_tiny_patch16_64", num_classes=5, img_size=32, patch_size=8)
    load_pretrained(target, source.state_dict())  # a state dict in memory
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)

    distilled = dict(source.state_dict())
    pos = distilled["pos_embed"]
    distilled["pos_embed"] = torch.cat([pos[:, :1], torch.randn_like(pos[:, :1]), pos[:, 1:]], 1)
    distilled["dist_token"] = torch.randn(1, 1, 96)
    distilled["head_dist.weight"], distilled["head_dist.bias"] = torch.randn(5, 96), torch.randn(5)
    report = load_pretrained(target, distilled)
    assert any("distilled DeiT" in note for note in report.notes)
    assert torch.equal(target.pos_embed, pos)

    clip = {
        **source.state_dict(),
        "norm_pre.weight": torch.ones(96),
        "norm_pre.bias": torch.zeros(96),
    }
    with pytest.raises(ValueError, match="CLIP-style ViT .norm_pre"):
        load_pretrained(target, clip)
    # Register tokens, no class token, transformers' key names: named by their cause (before: "not
    # a square grid", or every key listed).
    registers = {**source.state_dict(), "reg_token": torch.zeros(1, 4, 96)}
    with pytest.raises(ValueError, match="register tokens"):
        load_pretrained(target, registers)
    pooled = {k: v for k, v in source.state_dict().items() if k != "cls_token"}
    pooled["pos_embed"] = pooled["pos_embed"][:, 1:]
    with pytest.raises(ValueError, match="without a class token .timm's class_token=False"):
        load_pretrained(target, pooled)
    transformers_vit = {"vit.embeddings.cls_token": torch.zeros(1, 1, 96)}
    with pytest.raises(ValueError, match="a transformers ViT .*model.pretrained=timm:NAME"):
        load_pretrained(target, transformers_vit)


def test_the_flow_grid_of_a_hub_model_is_read_from_its_config_alone(tmp_path):
    # The run loads the weights once it knows the data's classes; the loader's flow labels need
    # only the patch and tubelet sizes before that, read without the weights (a 1 GB V-JEPA 2's).
    from timematters.config import load_config
    from timematters.engine.model import model_flow_grid

    folder = _save_hf(tmp_path, "videomae")
    architecture = load_foreign_model(f"hf:{folder}").architecture()
    (folder / "model.safetensors").unlink()
    cfg = load_config("synthetic/time", [*DATA, f"model.name=hf:{folder}"])
    assert model_flow_grid(cfg) == (16, 2)  # 16² patches, 2-frame tubelets
    assert model_flow_grid(cfg, architecture=architecture) == (16, 2)  # a resumed run's


@pytest.mark.parametrize("kind", ["vivit", "timesformer", "vjepa2"])
@pytest.mark.parametrize("processor_file", [False, True])
def test_clips_reach_the_network_as_its_own_processor_makes_them(
    tmp_path, monkeypatch, kind, processor_file
):
    """The adapter's input equals what the model type's video processor gives for the same
    frames: ViViT's maps to [-1, 1] before it normalises (4u - 3 with its defaults), which its
    video processor's files do not say (before: 2u - 1, logits 0.34 off)."""
    from timematters.backbones.adapters import hf as hf_adapter

    folder = _save_hf(tmp_path, kind)
    processor = hf_adapter.video_processor_class(
        transformers.AutoConfig.from_pretrained(folder).model_type
    )()
    if processor_file:
        processor.save_pretrained(folder)
    frames = torch.randint(0, 256, (T, 3, IMG, IMG), dtype=torch.uint8)
    made = processor([frames], do_resize=False, do_center_crop=False, return_tensors="pt")
    made = made.get("pixel_values", made.get("pixel_values_videos"))  # V-JEPA 2's name
    adapter = load_foreign_model(f"hf:{folder}")
    seen, pixel_values = [], hf_adapter._pixel_values
    monkeypatch.setattr(
        hf_adapter, "_pixel_values", lambda v: seen.append(pixel_values(v)) or seen[-1]
    )
    ours = (frames.float() / 255 - 0.5) / 0.5  # our clips: [-1, 1], [T, C, H, W]
    adapter(ours.permute(1, 0, 2, 3)[None])
    torch.testing.assert_close(seen[0], made, atol=2e-5, rtol=0)


def test_gradcam_of_a_joint_space_time_timesformer(tmp_path):
    """Its last layer norm sees the whole clip [B, 1 + S T, D], not one frame per row as divided
    attention's does (before: einops' "can't divide axis" in the report)."""
    from timematters.diagnostics.gradcam import video_gradcam

    folder = _save_hf(tmp_path, "timesformer", attention_type="joint_space_time")
    adapter = load_foreign_model(f"hf:{folder}").eval()
    layer, reshape = adapter.gradcam_layer()
    x = torch.randn(2, 1 + T * (IMG // 16) ** 2, 32)
    # The map's (t, h, w) are the tokens' own: as the order probe and the losses read them.
    grid = rearrange(adapter._grid(x[:, 1:]), "b t (h w) d -> b d t h w", h=IMG // 16)
    torch.testing.assert_close(reshape(x), grid)
    maps = video_gradcam(adapter, torch.randn(1, 3, T, IMG, IMG).clamp(-1, 1), targets=[0])
    assert maps.shape == (1, T, IMG, IMG) and np.isfinite(maps).all()


def test_a_missing_local_folder_is_not_asked_of_the_hub(tmp_path, monkeypatch):
    """hf:runs/export with runs/ a folder here is a path with a typo: refused at once (before,
    tried as a hub id: half a minute of retries offline)."""
    from timematters.backbones.adapters.hf import load_hf_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/export", "./export", "runs/a/export", str(tmp_path / "export")):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            load_hf_model(name)


def test_gradcam_of_mvit_reads_the_last_blocks_tokens_in_their_grid():
    """Its blocks hand their grid on beside the tokens: the map takes the last block's input
    grid (from the token count) in the order the probe reads; a tiny MViT of torchvision's."""
    pytest.importorskip("torchvision")
    from torchvision.models.video.mvit import MSBlockConfig, MViT

    from timematters.backbones.adapters.torchvision import MViTAdapter
    from timematters.diagnostics.gradcam import video_gradcam

    blocks = [  # the second pools space, as MViT's stages do
        MSBlockConfig(1, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
        MSBlockConfig(1, 16, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
        MSBlockConfig(1, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1]),
    ]
    network = MViT((32, 32), 8, blocks, True, True, True, True, num_classes=3)
    meta = {"min_frames": 8, "min_size": 32, "categories": None}  # patchify halves the frames
    meta.update(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    model = MViTAdapter(network, meta, "tiny mvit").eval()
    video = torch.randn(2, 3, 8, 32, 32).clamp(-1, 1)
    inputs = {}
    last = model.block_modules()[-1]
    handle = last.register_forward_pre_hook(lambda module, args: inputs.update(x=args))
    model.final_grid(video)
    handle.remove()
    tokens, grid = inputs["x"]
    assert tuple(grid) == (4, 4, 4)
    layer, reshape = model.gradcam_layer()
    probed = model.block_grid((tokens, grid))  # b t (h w) c, as the order probe reads it
    torch.testing.assert_close(reshape(tokens), rearrange(probed, "b t (h w) c -> b c t h w", h=4))
    maps = video_gradcam(model, video, targets=[1, 2])
    assert maps.shape == (2, 8, 32, 32) and np.isfinite(maps).all() and maps.std() > 0


def test_a_torchvision_model_in_memory_trains_through_its_adapter_and_is_told_so():
    from torchvision.models.video import r3d_18

    from timematters.backbones.adapters import as_video_backbone
    from timematters.config import FlowLossConfig, LossConfig, OrderLossConfig
    from timematters.losses import objective_for_model

    network = r3d_18(weights=None, num_classes=K)
    # evaluate / diagnose adapt it themselves; the objective said only what it lacked.
    with pytest.raises(TypeError, match=r"in its adapter: model = .*as_video_backbone\(model\)"):
        objective_for_model(network)
    model = as_video_backbone(network, num_frames=T, img_size=IMG)  # the clips it will see
    losses = LossConfig(order=OrderLossConfig(weight=0), flow=FlowLossConfig(weight=0))
    objective = objective_for_model(model, losses)
    video = torch.rand(2, 3, T, IMG, IMG) * 2 - 1
    out = objective(model, {"video": video, "label": torch.tensor([0, 1])})
    out.total.backward()
    assert network.fc.weight.grad is not None  # the adapter trains the network it holds
