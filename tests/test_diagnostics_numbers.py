"""What the diagnose report says against what was measured: intervals that are off, plots placed
and labelled by what they hold, notes that follow the settings, clips without a figure."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_diagnostics_api import IMG, K, ProtocolModel, T, _batches
from test_train import tiny_config

import timematters
from timematters.backbones import create_backbone
from timematters.config import EvalConfig, config_to_dict, load_config
from timematters.data.synthetic import CLASSES as SYNTHETIC
from timematters.diagnostics import plots
from timematters.diagnostics.confidence import confidence_gaps
from timematters.diagnostics.reliance import propose_subsets, write_subsets_file
from timematters.diagnostics.report import run_diagnose
from timematters.engine.checkpoint import save_checkpoint
from timematters.engine.evaluate import EvalResult, compare_gaps, evaluate
from timematters.engine.model import evaluate_checkpoint

CLASSES = [f"c{k}" for k in range(K)]
QUICK = dict(probe_clips=None, gradcam_clips=0)


@pytest.fixture
def figures(monkeypatch):
    """The plots' figures by file name, kept open instead of saved."""
    kept = {}

    def keep(fig, out, dpi=110):
        kept[Path(out).name] = fig
        return Path(out)

    monkeypatch.setattr(plots, "_save", keep)
    yield kept
    for fig in kept.values():
        plots.plt.close(fig)


def test_without_intervals_no_difference_is_called_inside_the_noise(tmp_path):
    models = {"a": ProtocolModel(), "b": ProtocolModel(depth=1)}
    settings = EvalConfig(bootstrap_samples=0, perturbations=("shuffle", "reverse"))
    report = timematters.diagnose(
        models,
        _batches(),
        tmp_path / "r",
        subsets={"pairs": [[0, 1]]},
        settings=settings,
        **QUICK,
    )
    assert "Flip rate under reverse" in (tmp_path / "r" / "report.md").read_text()
    for per_perturbation in report["compared"]["b"].values():
        for d in per_perturbation.values():
            assert d["outside_noise"] is None and np.isfinite(d["difference"])
    text = (tmp_path / "r" / "report.md").read_text()
    section = text.split("## Is the difference real?")[1].split("##")[0]
    assert "eval.bootstrap_samples=0" in section
    assert "noise," not in section and "nan" not in section
    assert "- b vs a, all, reverse: " in section and "points (no interval)" in section
    assert "nan" not in text.split("## Confidence gap")[0]  # nor a flip rate "± nan"


def test_with_intervals_a_difference_gets_its_verdict():
    labels = np.array([0, 1] * 10)
    right = np.eye(2)[labels]
    blind = EvalResult(labels, right, {"shuffle": right}, ["x", "y"])
    aware = EvalResult(labels, right, {"shuffle": right[:, ::-1].copy()}, ["x", "y"])
    d = compare_gaps(blind, aware)["all"]["shuffle"]
    assert d["outside_noise"] is True and d["difference"] == 100.0


def test_the_order_probe_plot_places_each_value_at_its_block(tmp_path, figures):
    curves = {
        "four": {"block1": 90.0, "block2": 80.0, "block3": 70.0, "block4": 60.0, "final": 50.0},
        "two": {"block1": 40.0, "block2": 30.0, "final": 20.0},
    }
    plots.plot_order_probe(curves, tmp_path / "order_probe.png")
    ax = figures["order_probe.png"].axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["two"].get_xdata()) == [0, 1, 4]  # its final at the four's final
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4", "final"]


def test_the_confidence_gap_plot_names_the_perturbation_it_holds(tmp_path, figures):
    settings = EvalConfig(perturbations=("reverse", "shuffle"))
    report = timematters.diagnose(
        {"m": ProtocolModel()}, _batches(), tmp_path / "r", settings=settings, **QUICK
    )
    ax = figures["confidence_gap.png"].axes[0]
    assert ax.get_xlabel() == "confidence gap (original - reversed)"
    (result,) = [evaluate(ProtocolModel(), _batches(), settings=settings)]
    assert report["confidence_gap"]["m"]["all"]["mean"] == pytest.approx(
        float(result.confidence_gap("reverse").mean())
    )


def test_the_perturbation_notes_follow_the_settings(tmp_path):
    settings = EvalConfig(perturbations=("shuffle", "freeze"), shuffle="per_batch", freeze_frame=0)
    timematters.diagnose(
        {"m": ProtocolModel()}, _batches(), tmp_path / "r", settings=settings, **QUICK
    )
    text = (tmp_path / "r" / "report.md").read_text()
    assert "one for each batch, shared by its clips; possibly the identity" in text
    assert "freeze: the first frame repeated" in text
    assert "never the identity" not in text and "middle frame" not in text
    timematters.diagnose({"m": ProtocolModel()}, _batches(), tmp_path / "d", **QUICK)
    assert "(one per clip, never the identity)" in (tmp_path / "d" / "report.md").read_text()


@pytest.mark.parametrize("temporal", [["c1"], [1]])
def test_gradcam_picks_temporal_classes_first_whether_named_or_numbered(tmp_path, temporal):
    report = timematters.diagnose(
        {"m": ProtocolModel()},
        _batches(),
        tmp_path / "r",
        classes=CLASSES,
        subsets={"temporal": temporal},
        probe_clips=None,
        gradcam_clips=1,
    )
    (clip,) = report["gradcam"]["clips"]
    assert clip["class"] == "c1"


class NaNOnSomeClips(ProtocolModel):
    """NaN logits for the clips whose top-left pixel is above 0.8 in some frame (whatever their
    order)."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        logits = super().forward(video)
        broken = video[:, 0, :, 0, 0].amax(dim=1) > 0.8
        return torch.where(broken[:, None], torch.full_like(logits, float("nan")), logits)


def test_clips_with_nan_confidences_are_left_out_of_the_confidence_gap(tmp_path):
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.5, 0.5]])
    shuffled = np.array([[0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [np.nan, np.nan]])
    result = EvalResult(labels, probs, {"shuffle": shuffled}, ["x", "y"])
    gaps = confidence_gaps(result)["all"]
    assert gaps["mean"] == pytest.approx(0.15) and gaps["median"] == pytest.approx(0.15)
    assert sum(gaps["mass"]) == pytest.approx(1.0)
    assert gaps["num_clips"] == 2 and gaps["num_left_out"] == 2
    # Per class too: class x's confidence is its finite clip's, 0.9 (before: NaN).
    rows = {row["name"]: row for row in result.class_reliance()}
    assert rows["x"]["confidence"] == pytest.approx(0.9) and rows["x"]["top1"] == 50.0
    assert rows["y"]["shuffled_confidence"] == pytest.approx(0.8)

    batches = _batches(num_clips=12)
    videos = torch.cat([video for video, _ in batches])
    broken = int((videos[:, 0, :, 0, 0].amax(dim=1) > 0.8).sum())
    assert 0 < broken < len(videos)
    report = timematters.diagnose({"m": NaNOnSomeClips()}, batches, tmp_path / "r", **QUICK)
    gap = report["confidence_gap"]["m"]["all"]
    assert np.isfinite(gap["mean"]) and sum(gap["mass"]) == pytest.approx(1.0)
    assert gap["num_left_out"] == broken
    text = (tmp_path / "r" / "report.md").read_text()
    assert (
        f"have no gap and are left out (the accuracies count them as misses): m {broken}." in text
    )


def test_gradcam_p_is_the_evaluated_confidence_over_all_views(tmp_path):
    videos = torch.rand(4, 2, 3, T, IMG, IMG, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batches = [(videos, torch.arange(4) % K)]  # two views a clip
    model = ProtocolModel()
    result = evaluate(model, batches)
    report = timematters.diagnose(
        {"m": model}, batches, tmp_path / "r", probe_clips=None, gradcam_indices=[0, 1]
    )
    for clip, position in zip(report["gradcam"]["clips"], [0, 1], strict=True):
        expected = result.probs[position, clip["label"]]
        assert clip["confidence"]["m"] == pytest.approx(float(expected), rel=1e-5)
    with torch.no_grad():  # the first view alone says something else
        first_view = model(videos[:2, 0]).softmax(-1)[torch.arange(2), torch.arange(2)]
    assert not np.allclose(first_view.numpy(), result.probs[[0, 1], [0, 1]], atol=1e-4)


def test_diagnose_and_eval_check_the_data_not_the_presets_own_model(tmp_path):
    # synthetic/time's own model (16-pixel patches) cannot take 72-pixel frames; r3d_18 can.
    overrides = ["data.crop_size=72", "data.synthetic.num_test=3", "train.device=cpu"]
    cfg = load_config("synthetic/time", [*overrides, "eval.bootstrap_samples=10"])
    report = run_diagnose(
        cfg, ["torchvision:r3d_18"], tmp_path / "r", probe_clips=None, gradcam_clips=0
    )
    assert report["dataset"]["num_clips"] == 3
    assert len(evaluate_checkpoint(cfg, "torchvision:r3d_18").labels) == 3


def test_a_one_frame_checkpoint_gets_the_refusal_not_the_presets_flow_loss(tmp_path):
    image = tiny_config(tmp_path, "model.name=vit_tiny_patch16_64", "model.num_frames=1")
    model = create_backbone(
        "vit_tiny_patch16_64",
        num_classes=len(SYNTHETIC),
        num_frames=1,
        img_size=32,
        **image.model.kwargs,
    )
    checkpoint = tmp_path / "vit.pth"
    save_checkpoint(
        {
            "model": model.state_dict(),
            "classes": list(SYNTHETIC),
            "config": config_to_dict(image),
        },
        checkpoint,
    )
    cfg = load_config(
        "synthetic/time",
        [
            "model.num_frames=1",
            "data.crop_size=32",
            "data.synthetic.num_test=2",
            "train.device=cpu",
        ],
    )
    # The data's own reason (its clips are motions), not the preset's flow loss nor the model.
    with pytest.raises(ValueError, match="model.num_frames=1 cannot show one"):
        run_diagnose(cfg, [checkpoint], tmp_path / "r", probe_clips=None, gradcam_clips=0)


def test_subsets_take_time_reversed_pairs_as_a_subsets_file_gives_them(tmp_path):
    settings = EvalConfig(perturbations=("reverse",))
    report = timematters.diagnose(
        {"m": ProtocolModel()},
        _batches(),
        tmp_path / "r",
        classes=CLASSES,
        subsets={"temporal": [0, 1], "pairs": [[0, 1]]},
        settings=settings,
        **QUICK,
    )
    row = report["shuffle_test"]["m"]
    assert set(row) == {"all", "temporal"} and row["all"]["num_paired"] == 6  # classes 0 and 1
    named = evaluate(
        ProtocolModel(), _batches(), classes=CLASSES, subsets={"pairs": [["c0", "c2"]]}
    )
    assert named.pairs == {0: 2, 2: 0} and named.subsets == {}
    with pytest.raises(ValueError, match=r"not a pair of classes; give \[\[a, b\], ...\]"):
        evaluate(ProtocolModel(), _batches(), subsets={"pairs": [0, 1]})


def test_diagnose_refuses_evaluations_without_the_settings_perturbations_before_writing(tmp_path):
    shuffled = evaluate(ProtocolModel(), _batches())
    with pytest.raises(ValueError, match="evaluations: one scored shuffle but .* asks for reverse"):
        timematters.diagnose(
            {"m": ProtocolModel()},
            _batches(),
            tmp_path / "r",
            evaluations=[shuffled],
            settings=EvalConfig(perturbations=("reverse",)),
            **QUICK,
        )
    assert not (tmp_path / "r" / "diagnose.json").exists()


def test_the_subsets_file_says_when_no_class_had_enough_clips(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[labels]
    few = EvalResult(labels, probs, {"shuffle": probs[:, ::-1].copy()}, ["x", "y", "z"])
    path = write_subsets_file(propose_subsets(few), tmp_path / "s.yaml", model="m")
    text = path.read_text()
    assert "No class has 5 clips or more" in text and "qualified" not in text
    timematters.diagnose({"m": ProtocolModel()}, _batches(), tmp_path / "r", **QUICK)  # 2-3 a class
    report = (tmp_path / "r" / "report.md").read_text()
    assert "No Temporal / Static split proposed: no class has 5 clips or more" in report


def test_a_clip_with_nan_logits_is_no_flip_under_reverse():
    # Pair x <-> y; the y clips are right, two of them NaN once reversed: argmax said class 0,
    # x, the partner, and counted them flips.
    labels = np.array([1, 1, 1, 1])
    right = np.eye(2)[labels]
    reversed_probs = right.copy()
    reversed_probs[:2] = np.nan
    result = EvalResult(labels, right, {"reverse": reversed_probs}, ["x", "y"], pairs={0: 1, 1: 0})
    assert result.flips().tolist() == [0.0, 0.0, 0.0, 0.0]
    assert result.metrics()["all"]["reversed_top1"] == 50.0  # and they are misses


def test_a_classs_confidence_gap_pairs_each_clips_two_confidences():
    # A clip NaN once shuffled is left out of both sides (as in the histogram), not of one.
    labels = np.array([0, 0])
    probs = np.array([[0.9, 0.1], [0.5, 0.5]])
    shuffled = np.array([[0.9, 0.1], [np.nan, np.nan]])
    (row,) = EvalResult(labels, probs, {"shuffle": shuffled}, ["x", "y"]).class_reliance()
    assert row["shuffled_confidence_gap"] == pytest.approx(0.0)  # before: 0.7 - 0.9 = -0.2


def test_a_few_clips_get_an_interval_but_no_verdict_on_two_models_gaps():
    labels = np.array([0, 1, 0])  # 3 clips: B loses all under shuffle, A none
    right = np.eye(2)[labels]
    blind = EvalResult(labels, right, {"shuffle": right}, ["x", "y"])
    aware = EvalResult(labels, right, {"shuffle": right[:, ::-1].copy()}, ["x", "y"])
    d = compare_gaps(blind, aware)["all"]["shuffle"]
    assert d["difference"] == 100.0 and d["outside_noise"] is None  # before: [100, 100], outside


def test_top5_ranks_classes_a_confident_model_gives_a_tiny_probability():
    from timematters.engine.evaluate import _hits, aggregate_views

    logits = torch.zeros(1, 1, 10)
    logits[0, 0, 0], logits[0, 0, 9] = 200.0, 50.0  # class 9 second: float32 rounded it to 0
    probs = aggregate_views(logits, "logits").numpy()
    top1, top5 = _hits(probs, np.array([9]))
    assert top1.tolist() == [0.0] and top5.tolist() == [1.0]
