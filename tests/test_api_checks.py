"""The Python API in a user's own loop: what the objective, ``evaluate`` and ``load_model`` take,
and a one-line error naming the fix for what they cannot (a DDP-wrapped backbone, frames in the
wrong layout, labels past the outputs), never a silently wrong number."""

import sys
import textwrap

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import timematters
from timematters.backbones import create_backbone
from timematters.config import LossConfig
from timematters.losses import TimeModel, objective_for_model

T, IMG, K = 4, 16, 3


def _model():
    torch.manual_seed(0)
    kwargs = dict(num_frames=T, img_size=IMG, embed_dim=16, depth=1, num_heads=2)
    return create_backbone("timesformer_tiny_patch8_64", num_classes=K, **kwargs)


def _objective(model):
    cfg = LossConfig()
    cfg.flow.weight = 0
    return objective_for_model(model, cfg)


def _batch(B=2):
    return {"video": torch.randn(B, 3, T, IMG, IMG), "label": torch.arange(B) % K}


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_wrapped_backbone_is_refused_with_the_module_to_wrap(one_process_group):
    # The objective calls forward_features: a DDP's forward, and so its gradient all-reduce,
    # would be skipped without a word.
    model = _model()
    objective = _objective(model)
    wrapped = DistributedDataParallel(model)
    for call in (lambda: objective(wrapped, _batch()), lambda: objective_for_model(wrapped)):
        with pytest.raises(TypeError) as caught:
            call()
        assert "DistributedDataParallel(TimeModel(backbone, objective))" in str(caught.value)
    # What to do instead: the two as one module, its output the objective's.
    ddp = DistributedDataParallel(TimeModel(model, objective))
    batch = _batch()
    out = ddp(batch, torch.Generator().manual_seed(0))
    out.total.backward()
    direct = objective(model, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.total, direct.total)
    assert model.head.weight.grad is not None
    with pytest.raises(TypeError, match=r"DataParallel\(TimeModel"):
        objective(torch.nn.DataParallel(model), _batch())


@pytest.mark.parametrize(
    "video, words",
    [
        (torch.randn(2, T, IMG, IMG, 3), r"float \[B, C=3, T, H, W\].*\[2, 4, 16, 16, 3\]"),
        (torch.randn(2, T, 3, IMG, IMG), r"\[2, 4, 3, 16, 16\].*video\.transpose\(1, 2\)"),
        (
            torch.zeros(2, 3, T, IMG, IMG, dtype=torch.uint8),
            r"torch.uint8.*no permute\): video\.float\(\) / 127\.5 - 1",
        ),
        ([torch.randn(3, T, IMG, IMG)] * 2, r"one tensor .* got a list; torch.stack"),
        (torch.randn(3, T, IMG, IMG), r"one clip \[3, 4, 16, 16\], not a batch: video\[None\]"),
    ],
)
def test_clips_in_another_layout_are_named_with_the_conversion(video, words):
    model = _model()
    with pytest.raises(ValueError, match=words):
        _objective(model)(model, {"video": video, "label": torch.zeros(2, dtype=torch.long)})


def test_the_batch_names_what_it_lacks_and_takes_labels_as_a_list():
    model = _model()
    objective = _objective(model)
    with pytest.raises(
        KeyError, match=r"no 'video'.*'video' \[B, 3, T, H, W\] and 'label'.*'clip'"
    ):
        objective(model, {"clip": torch.randn(2, 3, T, IMG, IMG), "label": torch.zeros(2)})
    batch = _batch()
    as_list = objective(model, {**batch, "label": batch["label"].tolist()})
    torch.testing.assert_close(as_list.terms["ce_loss"], objective(model, batch).terms["ce_loss"])


def test_evaluate_refuses_labels_past_the_outputs_and_reads_subsets_by_name():
    model = _model().eval()
    batch = [(torch.randn(3, 3, T, IMG, IMG), torch.tensor([1, 2, 3]))]  # 1-based: 3 of 3
    with pytest.raises(ValueError, match="label 3 but the model has 3 outputs: labels are 0-based"):
        timematters.evaluate(model, batch)
    data = [(batch[0][0], torch.tensor([0, 1, 2]))]
    classes = ["a", "b", "c"]
    by_name = timematters.evaluate(model, data, classes=classes, subsets={"ab": ["a", "b"]})
    by_index = timematters.evaluate(model, data, classes=classes, subsets={"ab": [0, 1]})
    assert by_name.metrics()["ab"]["num_clips"] == 2
    assert by_name.metrics() == by_index.metrics()
    with pytest.raises(ValueError, match=r"subset 'ab': 'z' not among the classes \(a, b, c\)"):
        timematters.evaluate(model, data, classes=classes, subsets={"ab": ["a", "z"]})


def test_evaluate_says_how_to_give_clips_that_are_not_batches():
    model = _model().eval()
    clips = [(torch.randn(3, T, IMG, IMG), 0), (torch.randn(3, T, IMG, IMG), 1)]
    with pytest.raises(ValueError, match="one clip .* wrap in a DataLoader"):
        timematters.evaluate(model, clips)
    assert timematters.evaluate(model, torch.utils.data.DataLoader(clips, batch_size=2))
    one = (torch.randn(2, 3, T, IMG, IMG), torch.tensor([0, 1]))
    for data in (one, {"video": one[0], "label": one[1]}):
        with pytest.raises(
            TypeError, match=r"data is one batch: give a list of batches, \[batch\]"
        ):
            timematters.evaluate(model, data)


FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Pool(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)

        def forward(self, video):
            return self.fc(video.mean(dim=(2, 3, 4)))

    def sixteen_frames(num_classes=5, num_frames=16, img_size=112):
        model = Pool(num_classes)
        model.built_for = (num_frames, img_size)
        return model
    """
)


def test_load_model_without_a_config_keeps_a_models_own_clip_size(tmp_path, monkeypatch):
    # Without a config there are no clips to build for: the factory's defaults and torchvision's
    # 16 x 112 apply, not a hidden default config's 8 x 224.
    (tmp_path / "api_factories.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = timematters.load_model("api_factories:sixteen_frames")
    assert model.model.built_for == (16, 112)
    r3d = timematters.load_model("torchvision:r3d_18", num_classes=3)
    assert (r3d.num_frames, r3d.describe()["frame_size"]) == (16, 112)
    sys.modules.pop("api_factories", None)


def test_load_model_gives_a_trained_model_the_classes_asked_for(tmp_path):
    from torchvision.models.video import r3d_18

    path = tmp_path / "r3d.pth"
    torch.save(r3d_18(weights=None, num_classes=3).state_dict(), path)
    assert timematters.load_model(f"torchvision:r3d_18:{path}").num_classes == 3
    # To fine-tune on 7 classes: a new classifier (the number used to be ignored without a word).
    assert timematters.load_model(f"torchvision:r3d_18:{path}", num_classes=7).num_classes == 7
    # Scoring it on a dataset of 7 classes keeps the trained one (then refused as other classes).
    kept = timematters.load_model(f"torchvision:r3d_18:{path}", untrained_classes=7)
    assert kept.num_classes == 3


def test_a_weight_for_no_loss_is_refused():
    from timematters.losses import CrossEntropyLoss, Objective, OrderLoss

    with pytest.raises(
        ValueError, match=r"weights for no loss: orderr; the losses: \['ce', 'order'\]"
    ):
        Objective([CrossEntropyLoss(), OrderLoss(16, num_frames=T)], {"orderr": 0.0})


def test_a_module_that_half_honours_the_protocol_is_told_what_it_lacks():
    from torch import nn

    from timematters.backbones.adapters.module import as_video_backbone

    class Half(nn.Module):  # tokens, but no grid
        embed_dim, num_frames, patch_size, token_frames = 8, T, 8, T

        def forward_features(self, video, return_blocks=False): ...

        def forward_head(self, cls): ...

    reason = as_video_backbone(Half(), source="mine").unsupported["order_probe"]
    assert reason == "Half gives logits only (it lacks grid for token diagnostics)"


def test_a_compiled_backbone_is_told_to_compile_the_pair():
    model = _model()
    compiled = torch.compile(model)  # wrapping only: nothing is compiled before a call
    with pytest.raises(TypeError, match=r"torch.compile\(TimeModel\(backbone, objective\)\)"):
        _objective(model)(compiled, _batch())


def test_a_loss_config_made_in_python_is_checked_as_a_config_file_is():
    model = _model()
    for change, match in (
        (lambda c: setattr(c.order, "axis", "spatial"), r"loss.order.axis='spatial' is not one of"),
        (lambda c: setattr(c.debias, "shuffle", "random"), r"loss.debias.shuffle='random'"),
        (lambda c: setattr(c.flow, "weight", float("nan")), r"loss.flow.weight must be a number"),
        (lambda c: setattr(c.ce, "smoothing", 1.5), r"loss.ce.smoothing must be in \[0, 1\)"),
    ):
        cfg = LossConfig()
        change(cfg)
        with pytest.raises(ValueError, match=match):
            objective_for_model(model, cfg)


class _Tokens(torch.nn.Module):
    """A user's backbone: frames of a 2x2 grid of 8-pixel patches."""

    embed_dim, num_frames, token_frames, patch_size, grid = 8, 4, 4, 8, (2, 2)

    def __init__(self, layout="b t s d"):
        super().__init__()
        torch.manual_seed(0)
        self.layout = layout
        self.embed = torch.nn.Conv3d(3, 8, kernel_size=(1, 8, 8), stride=(1, 8, 8))
        self.head = torch.nn.Linear(8, K)

    def forward_features(self, video, return_blocks=False):
        from einops import rearrange

        from timematters.backbones import VideoTokens

        patches = rearrange(self.embed(video), f"b d t h w -> {self.layout.replace('s', '(h w)')}")
        return VideoTokens(patches.mean(dim=(1, 2)), patches)

    def forward_head(self, cls):
        return self.head(cls)

    def forward(self, video):
        return self.forward_head(self.forward_features(video).cls)


def test_tokens_in_another_layout_or_sizes_that_are_not_numbers_are_named():
    batch = {"video": torch.rand(2, 3, 4, 16, 16) * 2 - 1, "label": torch.tensor([0, 1])}
    cfg = LossConfig()
    cfg.flow.weight = 0
    assert torch.isfinite(objective_for_model(_Tokens(), cfg)(_Tokens(), batch).total)

    class TwoFrames(_Tokens):
        num_frames = token_frames = 2

    # (s, t) for (t, s): where S = T nothing tells, elsewhere the sizes do.
    transposed, two = TwoFrames("b s t d"), {**batch, "video": batch["video"][:, :, :2]}
    with pytest.raises(ValueError, match=r"gave patches \[4, 4, 2, 8\].*= \[4, 2, 4, 8\]"):
        objective_for_model(transposed, cfg)(transposed, two)
    # Clips of another length than the model's: named as such, not as a token layout.
    with pytest.raises(ValueError, match="the clips have 2 frames but _Tokens.num_frames is 4"):
        objective_for_model(_Tokens(), cfg)(_Tokens(), two)

    class Method(_Tokens):
        def token_frames(self):  # a method where the protocol has a size
            return 4

    with pytest.raises(
        TypeError, match=r"Method.token_frames is a method; .*\(a property, not a method"
    ):
        objective_for_model(Method(), cfg)

    class NoWidth(torch.nn.Module):  # the sizes but its width
        num_frames, token_frames, patch_size, grid = 4, 4, 8, (2, 2)
        forward_features, forward_head = _Tokens.forward_features, _Tokens.forward_head

    with pytest.raises(TypeError, match=r"NoWidth lacks embed_dim of the VideoBackbone protocol"):
        objective_for_model(NoWidth(), cfg)


def test_few_frames_shuffled_per_batch_warn_of_unshuffled_steps(caplog):
    objective_for_model(_Tokens(), LossConfig())  # 4 frames, per_batch: 1 step in 24
    assert "with 4 frames one step in 24 shuffles no frame" in caplog.text
    caplog.clear()
    cfg = LossConfig()
    cfg.debias.shuffle = "per_sample"
    objective_for_model(_Tokens(), cfg)
    assert "shuffles no frame" not in caplog.text


def test_labels_in_common_other_forms_are_taken_or_named():
    import numpy as np

    model = _model()
    objective = objective_for_model(model)
    video = torch.rand(2, 3, T, IMG, IMG) * 2 - 1
    flow = torch.zeros(2, T - 1, (IMG // 8) ** 2, dtype=torch.int64)
    reference = objective(
        model, {"video": video, "label": torch.tensor([0, 1]), "flow_labels": flow}
    )
    # int32 labels, NumPy flow labels, a list of per-clip tensors: the same losses.
    for label, flow_labels in (
        (torch.tensor([0, 1], dtype=torch.int32), flow.int()),
        ([torch.tensor(0), torch.tensor(1)], flow.numpy()),
        (np.array([0, 1]), list(flow)),
    ):
        batch = {"video": video, "label": label, "flow_labels": flow_labels}
        out = objective(model, batch, torch.Generator().manual_seed(0))
        expected = objective(
            model,
            {**batch, "label": torch.tensor([0, 1]), "flow_labels": flow},
            torch.Generator().manual_seed(0),
        )
        assert torch.equal(out.total, expected.total)
    assert torch.isfinite(reference.total)
    soft = torch.nn.functional.one_hot(torch.tensor([0, 1]), K).float()
    with pytest.raises(ValueError, match=r"torch.float32 \[2, 3\]; .*one-hot or soft targets"):
        objective(model, {"video": video, "label": soft, "flow_labels": flow})
    with pytest.raises(ValueError, match=r"flow label 9: the direction classes are 0 to 8"):
        objective(model, {"video": video, "label": torch.tensor([0, 1]), "flow_labels": flow + 9})
    with pytest.raises(ValueError, match=r"batch\['flow_labels'\] holds torch.float32"):
        objective(
            model, {"video": video, "label": torch.tensor([0, 1]), "flow_labels": flow.float()}
        )


def test_pixels_left_in_0_255_are_refused_by_the_objective_evaluate_and_mix_clips():
    import numpy as np

    from timematters.losses import mix_clips

    model, batch = _model(), _batch()
    pixels = {
        **batch,
        "video": torch.linspace(0, 255, batch["video"].numel()).view_as(batch["video"]),
    }
    with pytest.raises(ValueError, match="the clips reach 255, as pixels in \\[0, 255\\] do"):
        TimeModel(model, _objective(model))(pixels)
    with pytest.raises(ValueError, match="video / 127.5 - 1"):
        timematters.evaluate(model, [(pixels["video"], pixels["label"])])
    # Before, mix_clips turned uint8 clips into floats in [0, 255], which were then taken.
    uint8 = {**batch, "video": pixels["video"].to(torch.uint8)}
    with pytest.raises(ValueError, match="got torch.uint8"):
        mix_clips(uint8, mixup=0.8, rng=np.random.default_rng(0))
    # Normalised with ImageNet's statistics, clips reach about 2.6: taken.
    imagenet = (torch.rand(2, 3, T, IMG, IMG) - 0.406) / 0.225
    TimeModel(model, _objective(model))({**batch, "video": imagenet})


def test_evaluate_names_a_subset_class_past_the_outputs_and_a_perturbation_not_scored():
    model = _model()
    data = [(torch.randn(2, 3, T, IMG, IMG), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match="subset 't': class 7 is not one of the 3 classes"):
        timematters.evaluate(model, data, subsets={"t": [0, 7]})  # before: a NaN row
    result = timematters.evaluate(model, data)
    with pytest.raises(ValueError, match="no reverse in this evaluation .*eval.perturbations"):
        result.confidence_gap("reverse")  # before: KeyError


def test_evaluate_reads_the_logits_of_a_module_that_returns_an_output_object():
    class Output:
        def __init__(self, logits):
            self.logits = logits

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, K)

        def forward(self, video):
            return Output(self.head(video.mean(dim=(2, 3, 4))))

    data = [(torch.randn(4, 3, T, IMG, IMG), torch.tensor([0, 1, 2, 0]))]
    result = timematters.evaluate(Pooled(), data)  # before: "Tensor type unknown to einops"
    assert result.metrics()["all"]["gap"] == 0  # frame order cannot move a frame average


def test_load_model_of_a_model_object_says_where_it_goes():
    with pytest.raises(TypeError, match="not a TimeSformer: a model in memory goes to evaluate"):
        timematters.load_model(_model())
