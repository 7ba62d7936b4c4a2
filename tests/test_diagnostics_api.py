"""`diagnose`, `order_probe`, `video_gradcam` and `predict` called from Python on a user's own
models and data: what they are told, what they refuse, and what they leave as they found it."""

import numpy as np
import pytest
import torch
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader

import timematters
from timematters.backbones import VideoBackbone, VideoTokens, create_backbone
from timematters.backbones.adapters import load_foreign_model
from timematters.diagnostics.gradcam import video_gradcam
from timematters.diagnostics.order_probe import order_probe
from timematters.diagnostics.predict import clip_of, explain_prediction, predict
from timematters.losses.shuffle import freeze_frames

T, IMG, K = 4, 16, 3
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ProtocolModel(nn.Module):
    """Honours ``VideoBackbone`` and nothing more: no ``.blocks``, only the tokens' ``blocks``.

    Patch tokens with a random time embedding (so each block knows the frame order), then
    ``depth`` residual layers; ``blocks[i]`` is the tensor layer i + 1 reads.
    """

    embed_dim = 8
    patch_size = 8
    classifier_name = "head"

    def __init__(self, depth: int = 2, detached: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.num_frames, self.grid, self.detached = T, (IMG // 8, IMG // 8), detached
        self.embed = nn.Conv3d(3, 8, kernel_size=(1, 8, 8), stride=(1, 8, 8))
        self.time_embed = nn.Parameter(torch.randn(1, T, 1, 8))
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(depth))
        self.head = nn.Linear(8, K)

    @property
    def token_frames(self) -> int:
        return self.num_frames

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        x = rearrange(self.embed(video), "b d t h w -> b t (h w) d") + self.time_embed
        blocks = []
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
            blocks.append(x.clone() if self.detached else x)
        return VideoTokens(x.mean(dim=(1, 2)), x, tuple(blocks) if return_blocks else None)

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.head(cls)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video).cls)

    def convert_state_dict(self, state_dict: dict, source: str) -> tuple[dict, set[str]]:
        return state_dict, set()


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batches(num_clips: int = 8, batch_size: int = 4, seed: int = 0) -> list[tuple]:
    """(video, label) batches of clips normalised with mean = std = 0.5."""
    videos = torch.rand(num_clips, 3, T, IMG, IMG, generator=_seeded(seed)) * 2 - 1
    labels = torch.arange(num_clips) % K
    return [
        (videos[i : i + batch_size], labels[i : i + batch_size])
        for i in range(0, num_clips, batch_size)
    ]


def test_diagnose_tells_adapted_models_how_the_clips_are_normalised(tmp_path):
    torch.manual_seed(0)
    r3d = load_foreign_model("torchvision:r3d_18", num_classes=K, num_frames=T, img_size=IMG)
    r3d.eval()
    ((half, labels),) = _batches(num_clips=2, batch_size=2)
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in IMAGENET)
    imagenet = ((half * 0.5 + 0.5) - mean) / std  # the same pixels, normalised as ImageNet's
    options = dict(probe_clips=None, gradcam_clips=1)
    as_given = timematters.diagnose({"r3d": r3d}, [(half, labels)], tmp_path / "a", **options)
    renormalised = timematters.diagnose(
        {"r3d": r3d},
        [(imagenet, labels)],
        tmp_path / "b",
        mean=IMAGENET[0],
        std=IMAGENET[1],
        **options,
    )
    (first,), (second,) = as_given["gradcam"]["clips"], renormalised["gradcam"]["clips"]
    assert second["confidence"]["r3d"] == pytest.approx(first["confidence"]["r3d"], rel=1e-4)
    assert r3d.input_mean == (0.5, 0.5, 0.5)  # told for the call only: the model is unchanged


def test_diagnose_refuses_a_one_shot_iterator_before_any_work(tmp_path):
    generator = (batch for batch in _batches())
    with pytest.raises(ValueError, match="one-shot iterator .*pass a list of batches"):
        timematters.diagnose({"m": ProtocolModel()}, generator, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_order_probe_with_no_clips_to_fit_skips_every_block():
    (result,) = order_probe(
        [ProtocolModel()], _batches(), fit_clips=0, held_out_clips=4, device=torch.device("cpu")
    )
    assert result["accuracy"] == {}  # not chance in every block, which reads as "order lost"
    assert set(result["skipped"].values()) == {"no clips to fit the probe on"}


class NoBlocksModel(ProtocolModel):
    """The protocol as README words it, ``forward_features(video)``: no ``return_blocks``."""

    def forward_features(self, video: torch.Tensor) -> VideoTokens:
        return super().forward_features(video)


def test_the_order_probe_reads_the_final_tokens_of_a_model_that_gives_no_blocks(tmp_path):
    models = {"plain": NoBlocksModel(), "full": ProtocolModel()}
    # One number is both counts, as --probe-clips N; counts it cannot use are refused at once.
    with pytest.raises(ValueError, match=r"probe_clips=\(0, 4\): give \(clips to fit"):
        timematters.diagnose(models, _batches(), tmp_path / "out", probe_clips=(0, 4))
    assert not (tmp_path / "out").exists()
    report = timematters.diagnose(models, _batches(), tmp_path / "out", probe_clips=4)
    assert report["order_probe"]["fit_clips"] == 4
    accuracy = report["order_probe"]["accuracy"]
    assert set(accuracy["plain"]) == {"final"} and set(accuracy["full"]) == {
        "block1",
        "block2",
        "final",
    }
    assert accuracy["plain"]["final"] == accuracy["full"]["final"]  # the same network


def test_diagnose_on_one_clip_says_why_the_order_probe_has_no_figures(tmp_path):
    report = timematters.diagnose(
        {"m": ProtocolModel()}, _batches(num_clips=1), tmp_path / "report", gradcam_clips=0
    )
    probe = report["order_probe"]
    assert probe["fit_clips"] == 0 and probe["accuracy"] == {"m": {}}
    assert set(probe["skipped"]["m"]) == {"block1", "block2", "final"}
    text = (tmp_path / "report" / "report.md").read_text()
    assert "- m, block1, block2, final: no clips to fit the probe on." in text


def test_diagnose_gives_gradcam_for_a_protocol_model_and_names_why_another_has_none(tmp_path):
    models = {"two": ProtocolModel(depth=2), "one": ProtocolModel(depth=1)}
    assert isinstance(models["two"], VideoBackbone) and not hasattr(models["two"], "blocks")
    report = timematters.diagnose(models, _batches(), tmp_path / "report", probe_clips=(4, 4))
    gradcam = report["gradcam"]
    assert gradcam["clips"] and set(gradcam["clips"][0]["confidence"]) == {"two", "one"}
    maps = np.load(tmp_path / "report" / "gradcam.npz")
    assert maps["maps_two"].shape == (len(gradcam["clips"]), T, IMG, IMG)
    assert "maps_one" not in maps  # one block: nothing enters a last block after another
    assert "needs two blocks" in gradcam["skipped"]["one"]
    assert "No GradCAM for one: GradCAM reads" in (tmp_path / "report" / "report.md").read_text()
    assert report["order_probe"]["accuracy"]["one"]  # the rest of the report is kept


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(depth=1), ValueError, "needs two blocks; .* gives 1"),
        (dict(detached=True), RuntimeError, "no gradient"),
    ],
)
def test_gradcam_that_fails_leaves_the_model_in_its_mode(kwargs, error, match):
    model = ProtocolModel(**kwargs).train()
    model.blocks = model.layers  # as our backbones have, so the failure is the one asked for
    with pytest.raises(error, match=match):
        video_gradcam(model, torch.randn(1, 3, T, IMG, IMG), targets=[0])
    assert model.training and all(p.grad is None for p in model.parameters())


def test_diagnose_says_why_models_that_saw_shuffled_clips_are_not_compared(tmp_path):
    ((videos, labels),) = _batches(num_clips=12, batch_size=12)
    pairs = list(zip(videos, labels, strict=True))
    shuffled = DataLoader(pairs, batch_size=4, shuffle=True, generator=_seeded(0))
    models = {"a": ProtocolModel(), "b": ProtocolModel(depth=1)}
    options = dict(probe_clips=None, gradcam_clips=0)
    # Evaluated one by one, each pass over a shuffling loader has its own order: not comparable.
    apart = [timematters.evaluate(model, shuffled) for model in models.values()]
    report = timematters.diagnose(
        models, shuffled, tmp_path / "apart", evaluations=apart, **options
    )
    assert report["compared"] == {}
    assert "different orders (a shuffling DataLoader?)" in report["not_compared"]["b"]
    text = (tmp_path / "apart" / "report.md").read_text()
    assert "- b vs a: the models saw their clips in different orders" in text
    # diagnose's own shuffle test scores every model on each batch: one order, compared.
    report = timematters.diagnose(models, shuffled, tmp_path / "together", **options)
    assert set(report["compared"]) == {"b"} and report["not_compared"] == {}


def _frames(seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, size=(6, 20, 24, 3), dtype=np.uint8)  # [T, H, W, 3]


def test_predict_takes_a_uint8_tensor_as_its_array_and_names_anything_else_briefly():
    model, frames = ProtocolModel().eval(), _frames()
    from_tensor = predict(model, torch.from_numpy(frames))
    assert from_tensor == predict(model, frames) and from_tensor.source == "<array>"
    floats = torch.from_numpy(frames).float()
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\] array; got Tensor of shape") as e:
        predict(model, floats)
    assert len(str(e.value)) < 150  # the shape and dtype, not the tensor's values
    with pytest.raises(TypeError, match="got a list of 6 items") as e:
        predict(model, list(frames))
    assert len(str(e.value)) < 150


def test_predict_and_explain_hand_the_model_back_in_training_mode(tmp_path):
    model = ProtocolModel().train()
    predict(model, _frames())
    assert model.training
    explain_prediction(model, _frames(), tmp_path)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_predict_wraps_a_plain_module_as_diagnose_does():
    plain = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, K))
    with pytest.raises(ValueError, match="Sequential takes clips of any size: give num_frames"):
        predict(plain, _frames())
    result = predict(plain, _frames(), num_frames=T, frame_size=IMG)
    assert len(result.top) == K
    with pytest.raises(NotImplementedError, match="no GradCAM for Sequential: .*logits only"):
        explain_prediction(plain, _frames(), "unused")


def test_predict_takes_freeze_each_the_frames_in_turn_averaged():
    model, frames = ProtocolModel().eval(), _frames()
    result = predict(model, frames, perturbations=("freeze_each",))
    clip, _ = clip_of(model, frames)
    best = int(model(clip).argmax())
    with torch.no_grad():
        frozen = torch.cat([freeze_frames(clip, t) for t in range(T)])
        expected = model(frozen).softmax(dim=-1).mean(dim=0)[best]
    assert result.top1_probability["freeze_each"] == pytest.approx(float(expected), rel=1e-5)


def test_gradcam_of_one_clip_without_its_batch_axis_says_so():
    model = create_backbone("timesformer_tiny_patch8_64", num_classes=3, num_frames=4, img_size=16)
    with pytest.raises(ValueError, match=r"one clip \[3, 4, 16, 16\], not a batch: video\[None\]"):
        video_gradcam(model, torch.randn(3, 4, 16, 16), [0])


def test_the_order_probe_runs_where_the_model_is_by_default():
    model = create_backbone("timesformer_tiny_patch8_64", num_classes=3, num_frames=4, img_size=16)
    batches = [{"video": torch.randn(4, 3, 4, 16, 16), "label": torch.zeros(4, dtype=torch.long)}]
    (result,) = order_probe([model.eval()], batches, fit_clips=2, held_out_clips=2)
    assert "final" in result["accuracy"]


def test_models_evaluated_in_one_pass_score_as_they_do_one_by_one():
    from timematters.config import EvalConfig
    from timematters.engine.evaluate import evaluate_models

    ((videos, labels),) = _batches(num_clips=10, batch_size=10)
    loader = DataLoader(list(zip(videos, labels, strict=True)), batch_size=4)
    models = [ProtocolModel().eval(), ProtocolModel(depth=1).train()]
    settings = EvalConfig(perturbations=["shuffle", "reverse", "freeze_each"])
    together = evaluate_models(models, loader, settings=settings)
    for model, result in zip(models, together, strict=True):
        alone = timematters.evaluate(model, loader, settings=settings)
        np.testing.assert_array_equal(result.probs, alone.probs)
        for name in settings.perturbations:  # the same frame orders for every model
            np.testing.assert_array_equal(result.perturbed[name], alone.perturbed[name])
        assert result.metrics() == alone.metrics()
    assert models[1].training and not models[0].training  # each handed back in its own mode


def test_a_long_video_is_predicted_window_by_window(tmp_path, monkeypatch, capsys):
    from videos import numbered_frames, write_frame_folder, write_video

    from timematters.cli import main
    from timematters.diagnostics.predict import predict_windows

    video = write_video(tmp_path / "long.mp4", numbered_frames(30), fps=12)  # 2.5 s
    model = ProtocolModel().eval()
    windows = predict_windows(model, video, seconds=1.0)
    # 12-frame windows; the 6-frame tail is half a window: kept.
    assert [w.window for w in windows] == [[0, 12], [12, 24], [24, 30]]
    assert [w.seconds for w in windows] == [[0.0, 1.0], [1.0, 2.0], [2.0, 2.5]]
    for w in windows:
        assert all(w.window[0] <= i < w.window[1] for i in w.frames) and len(w.frames) == T
    alone = predict(model, video, window=(12, 24))  # the same clip as its window's
    assert (alone.top, alone.frames) == (windows[1].top, windows[1].frames)
    # 9-frame windows: the 3-frame tail is under half a window, left out.
    assert predict_windows(model, video, seconds=0.75)[-1].window == [18, 27]
    frames = write_frame_folder(tmp_path / "frames", numbered_frames(12))
    with pytest.raises(ValueError, match="has no frame rate .*--fps N"):
        predict_windows(model, frames, seconds=0.5)
    assert len(predict_windows(model, frames, seconds=0.5, fps=12)) == 2

    (tmp_path / "protocol_model.py").write_text(
        "from test_diagnostics_api import ProtocolModel\n"
        "def build(num_classes=3):\n"
        "    return ProtocolModel()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["predict", str(video), "--model", "protocol_model:build", "--window", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"{video} [0.0-1.0 s]" in printed and f"{video} [2.0-2.5 s]" in printed
    assert "over 3 windows (no labels needed):" in printed
    assert main(["predict", str(video), "--model", "m:f", "--window", "1", "--explain", "x"]) == 2


class _DropoutModel(ProtocolModel):
    """Dropout on the final tokens: training mode changes its confidences."""

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.dropout(cls, 0.5, self.training))


def test_gradcam_explains_the_picked_clips_in_eval_mode_whatever_the_loader_order(tmp_path):
    from torch.utils.data import Subset

    from timematters.data.collate import collate_videos
    from timematters.data.synthetic import SyntheticVideoDataset

    dataset = SyntheticVideoDataset("test", 12, img_size=IMG, num_frames=T)
    backwards = DataLoader(
        Subset(dataset, range(11, -1, -1)), batch_size=5, collate_fn=collate_videos
    )
    model = _DropoutModel().train()  # as a module comes, in training mode
    model.head = nn.Linear(8, len(dataset.classes))
    report = timematters.diagnose(
        {"m": model}, backwards, tmp_path / "r", probe_clips=None, gradcam_indices=[0, 1]
    )
    # Positions are the evaluation's, in dataset order: clips 0 and 1, read from anywhere.
    clips = report["gradcam"]["clips"]
    assert [clip["index"] for clip in clips] == [0, 1]
    assert [clip["label"] for clip in clips] == [dataset[0]["label"], dataset[1]["label"]]
    assert model.training  # handed back as it came
    with torch.no_grad():
        model.eval()
        for clip in clips:
            video = dataset[clip["index"]]["video"][None]
            expected = model(video).softmax(-1)[0, clip["label"]].item()
            assert clip["confidence"]["m"] == pytest.approx(expected, abs=1e-6)


def test_transformers_and_torchvision_models_given_as_objects_get_their_adapters(tmp_path):
    # Before, a TimesformerForVideoClassification object was wrapped as a logits-only module and
    # fed [B, C, T, H, W] where transformers reads [B, T, C, H, W]: at 3 frames the shuffle test
    # permuted colour channels and said the gap was 0.
    transformers = pytest.importorskip("transformers")
    from torchvision.models.video import mc3_18, r3d_18

    from timematters.backbones.adapters.module import as_video_backbone

    config = transformers.TimesformerConfig(
        image_size=IMG,
        patch_size=8,
        num_frames=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=K,
    )
    model = transformers.TimesformerForVideoClassification(config).eval()
    adapted = as_video_backbone(model, source="mine")
    video = torch.randn(2, 3, 3, IMG, IMG)
    # Normalised as its type's video processor does by default: ImageNet's mean and std.
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (adapted.mean, adapted.std))
    assert adapted.mean == (0.485, 0.456, 0.406)
    pixels = (video * 0.5 + 0.5 - mean) / std
    with torch.no_grad():
        expected = model(pixel_values=rearrange(pixels, "b c t h w -> b t c h w")).logits
        torch.testing.assert_close(adapted(video), expected)
    assert adapted.grid == (2, 2) and "order_probe" not in adapted.unsupported
    # Saved and loaded by its spec, it is the same adapter with the same normalisation.
    model.save_pretrained(tmp_path / "tsf")
    by_spec = load_foreign_model(f"hf:{tmp_path / 'tsf'}")
    loaded = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / "tsf")
    again = as_video_backbone(loaded, source="mine")
    assert type(again) is type(by_spec) and again.mean == by_spec.mean
    assert again.source == f"hf:{tmp_path / 'tsf'}"
    with pytest.raises(ValueError, match="TimesformerModel has no video classifier"):
        as_video_backbone(transformers.TimesformerModel(config), source="mine")

    # torchvision's r3d_18 and mc3_18 share a class; the shapes tell them apart.
    for factory, name in ((r3d_18, "r3d_18"), (mc3_18, "mc3_18")):
        network = as_video_backbone(factory(num_classes=K), source="mine")
        assert network.source == f"torchvision:{name}" and network.num_classes == K
        assert network.mean == (0.43216, 0.394666, 0.37645)  # its Kinetics weights' own
        assert "order_probe" not in network.unsupported and "gradcam" not in network.unsupported


class _ReadsFrameZero(nn.Module):
    """Logits from frame 0's mean colour alone: the freeze and shuffle tests move it predictably."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3, K)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(video[:, :, 0].mean(dim=(2, 3)) * 10)


def test_predict_freezes_the_frame_the_run_evaluates_with():
    from timematters.data.sampling import EvalClip

    model, frames = _ReadsFrameZero(), _frames()
    sizes = dict(num_frames=T, frame_size=IMG, perturbations=("freeze",))
    middle = predict(model, frames, **sizes)
    assert middle.top1_probability["freeze"] != pytest.approx(middle.top[0][1])
    # eval.freeze_frame=0 (before: predict repeated the middle frame whatever the run said).
    first = predict(model, frames, eval_clip=EvalClip(freeze_frame=0), **sizes)
    assert first.top1_probability["freeze"] == pytest.approx(first.top[0][1], abs=1e-6)


def test_predictions_sharing_a_generator_are_shuffled_each_by_its_own_permutation():
    model, frames = _ReadsFrameZero(), _frames()
    sizes = dict(num_frames=T, frame_size=IMG, perturbations=("shuffle",))
    alone = {predict(model, frames, **sizes).top1_probability["shuffle"] for _ in range(6)}
    assert len(alone) == 1  # one seed, one permutation: reproducible
    shared = torch.Generator().manual_seed(0)
    drawn = {
        predict(model, frames, generator=shared, **sizes).top1_probability["shuffle"]
        for _ in range(6)
    }
    assert len(drawn) > 1  # the CLI's videos and windows: a permutation each


def test_models_on_different_devices_are_refused_in_one_line(tmp_path):
    """Before: the clips went to the first model's device and the other failed deep in its
    forward pass (the meta device stands in for a GPU here)."""
    from timematters.diagnostics.report import _one_device

    cpu, meta = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta")
    assert _one_device({"a": cpu, "b": torch.nn.Identity()}) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"different devices \(a on cpu, b on meta\)"):
        _one_device({"a": cpu, "b": meta})


class _SixteenPatches(ProtocolModel):
    """4 x 4 patches of 4 pixels: S = 16 differs from T = 4, so a transposed layout shows."""

    patch_size = 4

    def __init__(self):
        super().__init__()
        self.grid = (4, 4)
        self.embed = nn.Conv3d(3, 8, kernel_size=(1, 4, 4), stride=(1, 4, 4))


class _TransposedPatches(_SixteenPatches):
    """Hands patches as [B, S, T, D]: the order probe would classify patch positions."""

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        tokens = super().forward_features(video, return_blocks)
        return VideoTokens(tokens.cls, tokens.patches.transpose(1, 2), tokens.blocks)


class _TransposedBlocks(_SixteenPatches):
    """Right final tokens, blocks as [B, S, T, D]."""

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        tokens = super().forward_features(video, return_blocks)
        blocks = tuple(b.transpose(1, 2) for b in tokens.blocks or ()) or None
        return VideoTokens(tokens.cls, tokens.patches, blocks)


class _TupleTokens(ProtocolModel):
    def forward_features(self, video: torch.Tensor, return_blocks: bool = False):
        tokens = super().forward_features(video)
        return tokens.cls, tokens.patches


@pytest.mark.parametrize(
    "model, match",
    [
        (_TransposedBlocks(), r"block 1 as \[4, 16, 4, 8\].*at most the clips' 4"),
        (_TupleTokens(), r"returned a tuple; the protocol wants VideoTokens"),
    ],
)
def test_the_order_probe_refuses_a_user_module_whose_tokens_are_not_in_the_protocols_layout(
    model, match
):
    # Probed as they came, blocks of 16 "frames" from 4-frame clips gave a figure, no error.
    with pytest.raises((ValueError, TypeError), match=match):
        order_probe([model], _batches(), fit_clips=4, held_out_clips=4, progress=False)


def test_transposed_patches_are_refused_where_their_shape_tells():
    # Probed as they came, they gave 6.2% "frame order": chance for 16 patch positions.
    with pytest.raises(ValueError, match=r"gave patches \[4, 16, 4, 8\].*\[4, 4, 16, 8\]"):
        order_probe(
            [_TransposedPatches()], _batches(), fit_clips=4, held_out_clips=4, progress=False
        )


def test_a_module_built_for_other_clips_is_refused_with_the_size_to_give(tmp_path):
    longer = ProtocolModel()
    longer.num_frames = 2 * T  # built for 8 frames, given 4: a shape error deep inside before
    with pytest.raises(ValueError, match=r"declares num_frames 8 but the clips have 4 frames"):
        timematters.evaluate(longer, _batches())

    class Cnn(nn.Module):
        """A 3-D CNN whose grid is its last feature map (stride 8 over 16² frames: 2 x 2)."""

        embed_dim, num_frames, token_frames, grid = 8, T, T, (2, 2)

        def __init__(self, patch_size: int):
            super().__init__()
            self.patch_size = patch_size
            self.conv = nn.Conv3d(3, 8, kernel_size=(1, 8, 8), stride=(1, 8, 8))
            self.head = nn.Linear(8, K)

        def forward_features(self, video, return_blocks=False):
            x = rearrange(self.conv(video), "b d t h w -> b t (h w) d")
            return VideoTokens(x.mean(dim=(1, 2)), x)

        def forward_head(self, cls):
            return self.head(cls)

        def forward(self, video):
            return self.forward_head(self.forward_features(video).cls)

    # patch_size 1 (the protocol's advice until now) made predict feed it 2² clips.
    with pytest.raises(ValueError, match=r"grid \(2, 2\) of 1-pixel cells, 2x2 frames.*16x16"):
        timematters.evaluate(Cnn(patch_size=1), _batches())
    assert timematters.evaluate(Cnn(patch_size=8), _batches()).metrics()["all"]["top1"] >= 0
    frames = np.zeros((T, 40, 40, 3), dtype=np.uint8)
    assert predict(Cnn(patch_size=8), frames).top  # clips of its own 16² frames


@pytest.mark.parametrize(
    "grid, match",
    [(4, r"grid is 4; the protocol wants \(h, w\), two ints"), ((2.0, 2.0), r"grid is \(2.0")],
)
def test_a_protocol_modules_grid_is_checked_when_it_is_taken(grid, match):
    model = ProtocolModel()
    model.grid = grid
    with pytest.raises(TypeError, match=match):
        timematters.evaluate(model, _batches())


class _LogitsWithBuffers(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).view(-1, 1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std).view(-1, 1, 1, 1))
        self.head = nn.Linear(3, K)

    def forward(self, video):
        return self.head(video.mean(dim=(2, 3, 4)))


def test_mean_and_std_may_be_buffers_or_one_number_and_anything_else_is_named():
    from timematters.backbones.normalisation import declared_normalisation

    buffers = _LogitsWithBuffers([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    # Tensors of three made "Boolean value of Tensor ... is ambiguous" before.
    assert declared_normalisation(buffers) == ((0.5,) * 3, (0.5,) * 3)
    assert timematters.evaluate(buffers, _batches()).metrics()["all"]["top1"] >= 0
    scalar = ProtocolModel()
    scalar.mean, scalar.std = 0.45, 0.25  # one number for every channel
    assert declared_normalisation(scalar) == ((0.45,) * 3, (0.25,) * 3)
    two = ProtocolModel()
    two.mean = (0.5, 0.5)
    with pytest.raises(ValueError, match=r"ProtocolModel.mean is \(0.5, 0.5\).*three numbers"):
        timematters.evaluate(two, _batches())
