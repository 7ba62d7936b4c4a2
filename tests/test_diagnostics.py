"""The diagnostics against cases with known answers, and `run_diagnose` end to end."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from test_train import TINY, TORCHRUN, tiny_config
from torch import nn
from torch.utils.data import DataLoader

from timematters.backbones import VideoTokens, create_backbone, list_backbones
from timematters.config import config_to_dict
from timematters.data.collate import collate_videos
from timematters.data.synthetic import CLASSES, SyntheticVideoDataset
from timematters.diagnostics.confidence import confidence_gaps, gap_histogram
from timematters.diagnostics.gradcam import video_gradcam
from timematters.diagnostics.order_probe import order_probe
from timematters.diagnostics.report import run_diagnose
from timematters.engine.checkpoint import save_checkpoint
from timematters.engine.evaluate import evaluate
from timematters.engine.model import load_model_from_checkpoint
from timematters.engine.train import train

T, IMG = 4, 32
TINY_BACKBONES = [name for name in list_backbones() if name.endswith("_tiny_patch8_64")]


def _takes_video(name: str) -> bool:
    """Image backbones are one-frame video backbones."""
    with torch.device("meta"):
        return create_backbone(name).num_frames > 1


TINY_VIDEO_BACKBONES = [name for name in TINY_BACKBONES if _takes_video(name)]


class FramePoolModel(nn.Module):
    """A video classifier over per-frame colour means pooled over time: blind to frame order.

    With ``first_frame_only`` it reads frame 0 alone instead, so shuffling changes its output.
    """

    def __init__(self, num_classes: int, first_frame_only: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.first_frame_only = first_frame_only
        self.proj = nn.Linear(3, 16)
        self.head = nn.Linear(16, num_classes)

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        frames = rearrange(video.mean(dim=(3, 4)), "b c t -> b t c")
        if self.first_frame_only:
            pooled = 100 * (frames[:, 0] - frames.mean(dim=1))
        else:  # sorted first, so the sum runs in one order whatever the frame order: exact
            pooled = frames.sort(dim=1).values.mean(dim=1)
        patches = self.proj(frames)[:, :, None]  # [B, T, 1, D]
        return VideoTokens(self.proj(pooled), patches, (patches,) if return_blocks else None)

    def forward_head(self, cls: torch.Tensor) -> torch.Tensor:
        return 20 * self.head(cls)  # confident, so that confidences can move

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video).cls)


def _synthetic_loader(num_clips: int = 40) -> tuple[SyntheticVideoDataset, DataLoader]:
    dataset = SyntheticVideoDataset("test", num_clips, img_size=IMG, num_frames=T)
    return dataset, DataLoader(dataset, batch_size=16, collate_fn=collate_videos)


def test_gap_histogram_is_a_probability_mass_with_zero_in_the_bin_right_of_it():
    mass, edges = gap_histogram(np.array([0.0, 0.0, 0.95, -1.0, 1.0]))
    assert len(mass) == 20 and edges[0] == -1 and edges[-1] == 1
    assert mass.sum() == pytest.approx(1.0)
    assert mass[10] == pytest.approx(0.4)  # [0, 0.1)
    assert mass[0] == pytest.approx(0.2) and mass[19] == pytest.approx(0.4)  # ends included
    noise, _ = gap_histogram(np.array([-3e-8, 2e-8, -0.0]))  # rounding noise counts as 0
    assert noise[10] == 1.0


def test_an_order_blind_model_has_no_gap_and_all_confidence_gaps_at_zero():
    dataset, loader = _synthetic_loader()
    blind = evaluate(FramePoolModel(10), loader, classes=dataset.classes, subsets=dataset.subsets)
    for subset, m in blind.metrics().items():
        assert m["num_clips"] > 0, subset
        assert m["gap"] == 0.0 and m["gap_top5"] == 0.0, subset
    zero_bin = 10  # [0, 0.1): the bin holding a gap of exactly 0
    for subset, h in confidence_gaps(blind).items():
        assert h["mass"][zero_bin] == 1.0, subset
        assert h["mean"] == 0.0

    # The control: the same checks fail for a model that looks at frame 0 only.
    aware = evaluate(
        FramePoolModel(10, first_frame_only=True),
        loader,
        classes=dataset.classes,
        subsets=dataset.subsets,
    )
    assert confidence_gaps(aware)["all"]["mass"][zero_bin] < 1.0
    assert np.abs(aware.confidence_gap()).max() > 0.05


class FrameIndexStub(nn.Module):
    """Block 1 carries a one-hot of each frame's position; block 2 and the final tokens only
    per-frame noise, independent of position."""

    num_frames = 8

    def forward_features(self, video: torch.Tensor, return_blocks: bool = False) -> VideoTokens:
        B, _, T_, _, _ = video.shape
        noise = rearrange(video[:, :, :, :2, :2], "b c t h w -> b t (h w) c")  # [B, T, 4, 3]
        position = repeat(F.one_hot(torch.arange(T_), T_).float(), "t k -> b t 4 k", b=B)
        with_position = torch.cat([position + 0.1 * noise[..., :1], noise], dim=-1)
        without = torch.cat([torch.zeros_like(position), noise], dim=-1)
        return VideoTokens(
            without.mean(dim=(1, 2)), without, (with_position, without) if return_blocks else None
        )


def _random_batches(num_batches: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"video": torch.randn(8, 3, 8, 4, 4, generator=generator)} for _ in range(num_batches)]


def test_order_probe_reads_the_frame_index_where_it_is_and_only_there():
    (result,) = order_probe(
        [FrameIndexStub()],
        _random_batches(4, seed=0) + _random_batches(4, seed=1),
        fit_clips=32,
        held_out_clips=32,
        device=torch.device("cpu"),
    )
    accuracy = result["accuracy"]
    assert list(accuracy) == ["block1", "block2", "final"]
    assert result["frames"] == {"block1": 8, "block2": 8, "final": 8} and not result["skipped"]
    assert accuracy["block1"] > 99.0
    chance = 100 / 8
    assert accuracy["block2"] < chance + 10
    assert accuracy["final"] < chance + 10


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_gradcam_maps_have_the_clip_shape_and_are_finite(name):
    frames = T if _takes_video(name) else 1
    model = _tiny(name, frames=frames)
    video = torch.randn(2, 3, frames, IMG, IMG, generator=torch.Generator().manual_seed(1))
    maps = video_gradcam(model, video, targets=[1, 3])
    assert maps.shape == (2, frames, IMG, IMG)
    assert np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() > m.min() for m in maps)  # a map, not a constant: gradients arrived
    assert all(p.grad is None for p in model.parameters()) and model.training  # left as found


def _tiny(name: str = "timesformer_tiny_patch8_64", frames: int = T) -> torch.nn.Module:
    torch.manual_seed(0)
    sizes = dict(num_frames=frames, img_size=IMG, embed_dim=24, depth=2, num_heads=2)
    return create_backbone(name, num_classes=5, drop_path_rate=0.0, **sizes)


def test_gradcam_in_a_training_step_keeps_the_gradients_the_step_accumulated():
    model, video = _tiny(), torch.randn(2, 3, T, IMG, IMG)
    model(video).logsumexp(-1).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    video_gradcam(model, video[:1], targets=[2])
    for name, param in model.named_parameters():  # before: every one None
        torch.testing.assert_close(param.grad, before[name], rtol=0, atol=0)


def test_gradcam_of_a_frozen_model_or_under_no_grad_gives_the_same_maps():
    model, video = _tiny(), torch.randn(1, 3, T, IMG, IMG)
    maps = video_gradcam(model, video, targets=[1])
    with torch.no_grad():  # before: "element 0 of tensors does not require grad"
        np.testing.assert_allclose(video_gradcam(model, video, targets=[1]), maps, atol=1e-6)
    model.requires_grad_(False)
    np.testing.assert_allclose(video_gradcam(model, video, targets=[1]), maps, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_names_a_target_that_is_no_class():
    with pytest.raises(ValueError, match="target 5 is no class of a 5-class model"):
        video_gradcam(_tiny(), torch.randn(1, 3, T, IMG, IMG), targets=[5])


def test_gradcam_tubelets_are_stretched_back_to_frames():
    model = create_backbone(
        "motionformer_tiny_patch8_64",
        num_classes=5,
        num_frames=T,
        img_size=IMG,
        embed_dim=24,
        depth=2,
        num_heads=2,
        tubelet_size=2,
    )
    maps = video_gradcam(model, torch.randn(1, 3, T, IMG, IMG), targets=[0])
    assert maps.shape == (1, T, IMG, IMG) and np.isfinite(maps).all()


class _DetachedBlocks(FramePoolModel):
    """Per-block tokens that are copies: the logits do not depend on them."""

    blocks = [None, None]
    grid = (1, 1)

    def forward_features(self, video, return_blocks=False):
        tokens = super().forward_features(video, return_blocks)
        copies = (tokens.patches.clone(),) * 2 if return_blocks else None
        return VideoTokens(tokens.cls, tokens.patches, copies)


def test_gradcam_says_so_when_block_tokens_are_off_the_graph():
    with pytest.raises(RuntimeError, match="no gradient"):
        video_gradcam(_DetachedBlocks(5), torch.randn(1, 3, T, IMG, IMG), targets=[0])


def test_run_diagnose_compares_two_trained_checkpoints(tmp_path):
    runs = {}
    for name, weight in (("baseline", "0"), ("+TIME", "1")):
        extra = [f"loss.{loss}.weight={weight}" for loss in ("order", "debias", "flow")]
        runs[name] = train(tiny_config(tmp_path / name, "train.epochs=1", *extra))
    cfg = tiny_config(tmp_path / "baseline")
    checkpoints = [tmp_path / name / "checkpoints" / "last.pth" for name in runs]
    out = tmp_path / "diagnose"
    data = run_diagnose(
        cfg,
        checkpoints,
        out,
        names=list(runs),
        probe_clips=(4, 4),
        gradcam_clips=2,
    )

    clips = [c["index"] for c in data["gradcam"]["clips"]]
    assert len(clips) == 2
    for file in (
        "diagnose.json",
        "report.md",
        "shuffle_accuracy.png",
        "confidence_gap.png",
        "order_probe.png",
        "gradcam.npz",
        *(f"gradcam_{i}.png" for i in clips),
    ):
        assert (out / file).is_file(), file
    assert json.loads((out / "diagnose.json").read_text())["models"].keys() == set(runs)
    report = (out / "report.md").read_text()
    assert "baseline" in report and "+TIME" in report
    for name, run in runs.items():
        # The shuffle test is the training run's own evaluation, and the probe covers every block.
        assert data["shuffle_test"][name] == run["metrics"]
        assert list(data["order_probe"]["accuracy"][name]) == ["block1", "block2", "final"]
        assert sum(data["confidence_gap"][name]["all"]["mass"]) == pytest.approx(1.0)
    maps = np.load(out / "gradcam.npz")
    assert maps["maps_+TIME"].shape == (2, T, IMG, IMG)

    # Handing in the runs' evaluations skips the shuffle test and gives the same numbers.
    again = run_diagnose(
        cfg,
        checkpoints,
        tmp_path / "again",
        names=list(runs),
        probe_clips=None,
        gradcam_clips=0,
        evaluations=[r["result"] for r in runs.values()],
    )
    assert again["shuffle_test"] == data["shuffle_test"]
    assert "order_probe" not in again and "gradcam" not in again


@pytest.mark.parametrize("name", TINY_VIDEO_BACKBONES)
def test_run_diagnose_on_every_tiny_video_backbone(tmp_path, name):
    cfg = tiny_config(tmp_path, f"model.name={name}")
    model = create_backbone(
        name, num_classes=len(CLASSES), num_frames=T, img_size=IMG, **cfg.model.kwargs
    )
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(
        {"model": model.state_dict(), "classes": list(CLASSES), "config": config_to_dict(cfg)},
        checkpoint,
    )
    loaded, classes = load_model_from_checkpoint(cfg, checkpoint)
    assert classes == list(CLASSES) and not loaded.training
    data = run_diagnose(
        cfg,
        [checkpoint],
        tmp_path / "out",
        probe_clips=(4, 4),
        gradcam_clips=1,
    )
    (row,) = data["shuffle_test"].values()
    assert set(row) == {"all", "temporal", "static"}
    (accuracy,) = data["order_probe"]["accuracy"].values()
    assert len(accuracy) == len(model.blocks) + 1
    assert not data["gradcam"]["skipped"]
    for file in (
        "report.md",
        "diagnose.json",
        f"gradcam_{data['gradcam']['clips'][0]['index']}.png",
    ):
        assert (tmp_path / "out" / file).is_file(), file


def test_diagnose_under_torchrun_shares_the_shuffle_test_and_gives_one_process_report(tmp_path):
    train(tiny_config(tmp_path / "run", "train.epochs=1"))
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pth")
    common = [*TINY, "--checkpoint", checkpoint, "--probe-clips", "4", "--gradcam-clips", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reports = {}
    for processes in (1, 2):
        out = tmp_path / f"diagnose{processes}"
        launch = [TORCHRUN, "--standalone", f"--nproc_per_node={processes}"]
        command = [*launch, "-m", "timematters.cli", "diagnose", "--config", "synthetic/time"]
        done = subprocess.run(
            [*command, *common, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        reports[processes] = json.loads((out / "diagnose.json").read_text())
    assert "on 2 processes" in done.stdout
    one, two = reports[1], reports[2]
    assert two["shuffle_test"] == one["shuffle_test"]  # every clip, in dataset order
    assert two["confidence_gap"] == one["confidence_gap"]
    assert two["order_probe"]["accuracy"] == one["order_probe"]["accuracy"]
    assert [c["index"] for c in two["gradcam"]["clips"]] == [
        c["index"] for c in one["gradcam"]["clips"]
    ]
    # A folder that cannot take the report is refused by rank 0 alone, before any work.
    again = subprocess.run(
        [*command, *common, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    said = [line for line in again.stderr.splitlines() if "timematters: error:" in line]
    assert again.returncode != 0 and len(said) == 1 and "holds a run" in said[0], again.stderr


def test_a_model_named_with_a_leading_underscore_keeps_its_legend_entry(tmp_path):
    import warnings

    from timematters.diagnostics import plots

    # matplotlib leaves out labels that begin with "_": the plot had no legend entry for it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "No artists with labels found to put in legend"
        plots.plot_order_probe({"_baseline": {"block0": 50.0, "final": 25.0}}, tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()
