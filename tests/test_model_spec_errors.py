"""A model spec that cannot work (a factory that fails, a module that does not import, outputs
that are not logits, weights of another network) is refused in one line naming the spec or the
file, what went wrong and what to change; never a traceback from deep inside torch."""

import sys
import textwrap

import pytest
import torch
from test_errors import _cli, _one_clear_line
from test_pretrained import _tiny
from test_train import TINY

from timematters.backbones.adapters import load_foreign_model
from timematters.backbones.pretrained import PretrainedKeyError, load_pretrained

FACTORIES = textwrap.dedent(
    """
    from types import SimpleNamespace

    import torch
    from torch import nn

    class ColourMeans(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)

        def forward(self, video):
            return self.fc(video.mean(dim=(2, 3, 4)))

    class TupleOut(ColourMeans):
        def forward(self, video):
            return super().forward(video), 0

    class PerFrame(ColourMeans):  # [B, T, K]: logits of each frame, not of the clip
        def forward(self, video):
            return self.fc(video.mean(dim=(3, 4)).transpose(1, 2))

    class Flattened(ColourMeans):  # [B * K]
        def forward(self, video):
            return super().forward(video).flatten()

    class WithLogits(ColourMeans):
        def forward(self, video):
            return SimpleNamespace(logits=super().forward(video))

    def needs_depth(depth, num_classes=3):
        return ColourMeans(num_classes)

    def raises(num_classes=3):
        raise RuntimeError("boom inside the factory")

    def tuple_out(num_classes=3):
        return TupleOut(num_classes)

    def per_frame(num_classes=3):
        return PerFrame(num_classes)

    def flattened(num_classes=3):
        return Flattened(num_classes)

    def with_logits(num_classes=3):
        return WithLogits(num_classes)

    def colour_means(num_classes=3):
        return ColourMeans(num_classes)
    """
)


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A folder on sys.path holding ``spec_error_models.py`` (the factories above); the test may
    write more modules into it. They are forgotten afterwards, as the next test's are new files."""
    (tmp_path / "spec_error_models.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("spec_error_"):
            del sys.modules[name]


def _single_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "factory, words, cause",
    [
        (
            "needs_depth",
            [
                "spec_error_models:needs_depth: needs_depth(num_classes=3) failed: TypeError: ",
                "missing 1 required positional argument: 'depth'",
                "give depth a default",
            ],
            TypeError,
        ),
        (
            "raises",
            ["spec_error_models:raises: raises(num_classes=3) failed: RuntimeError: boom"],
            RuntimeError,
        ),
    ],
)
def test_a_failing_factory_is_named_with_its_call_and_its_error(
    user_modules, factory, words, cause
):
    with pytest.raises(ValueError) as caught:
        load_foreign_model(f"spec_error_models:{factory}", num_classes=3)
    message = _single_line(caught.value)
    for word in words:
        assert word in message, (word, message)
    # Chained: TIMEMATTERS_TRACEBACK=1 shows the line of the user's code that failed.
    assert isinstance(caught.value.__cause__, cause)


def test_a_failing_factory_is_one_cli_line_and_its_traceback_on_request(
    user_modules, capsys, monkeypatch
):
    monkeypatch.chdir(user_modules)  # eval writes under runs/ in the working folder
    argv = ["eval", "synthetic/time", *TINY, "--model", "spec_error_models:needs_depth"]
    code, err = _cli(capsys, *argv)
    assert code == 2
    _one_clear_line(err, "spec_error_models:needs_depth", "TypeError", "'depth'")
    monkeypatch.setenv("TIMEMATTERS_TRACEBACK", "1")
    with pytest.raises(ValueError) as caught:
        _cli(capsys, *argv)
    assert isinstance(caught.value.__cause__, TypeError)


def test_a_module_given_as_a_file_is_told_its_import_name(user_modules, capsys, monkeypatch):
    """Before: "run from the folder that holds it" to a user in that folder, or "neither a
    checkpoint file nor a model spec" for a path."""
    monkeypatch.chdir(user_modules.parent)
    folder = user_modules.name
    for spec in (f"{folder}/spec_error_models.py:ColourMeans", "spec_error_models.py:ColourMeans"):
        code, err = _cli(capsys, "eval", "synthetic/time", *TINY, "--model", spec)
        assert code == 2
        _one_clear_line(err, "without .py: give spec_error_models:ColourMeans")
    # timm:NAME, model.pretrained's weights spec, given as a model.
    code, err = _cli(
        capsys, "eval", "synthetic/time", *TINY, "--model", "timm:vit_tiny_patch16_224"
    )
    assert code == 2
    _one_clear_line(err, "timm has no video classifiers", "model.pretrained")


def test_a_syntax_error_names_the_file_and_line(user_modules):
    (user_modules / "spec_error_syntax.py").write_text("import torch\n\ndef build(:\n")
    with pytest.raises(ValueError) as caught:
        load_foreign_model("spec_error_syntax:build")
    message = _single_line(caught.value)
    assert message.startswith("spec_error_syntax:build: ")
    assert f"{user_modules / 'spec_error_syntax.py'} line 3: " in message
    assert isinstance(caught.value.__cause__, SyntaxError)


def test_a_missing_dependency_is_named_rather_than_the_module(user_modules):
    (user_modules / "spec_error_imports.py").write_text("import spec_error_not_installed\n")
    with pytest.raises(ValueError) as caught:
        load_foreign_model("spec_error_imports:build")
    message = _single_line(caught.value)
    assert "spec_error_imports imports spec_error_not_installed, which is not installed" in message
    assert "PYTHONPATH" not in message  # the module was found: the folder advice would mislead
    # The module itself not found: that advice is the right one.
    with pytest.raises(ValueError, match="cannot import spec_error_absent .*PYTHONPATH"):
        load_foreign_model("spec_error_absent:build")


@pytest.mark.parametrize(
    "factory, words",
    [
        ("tuple_out", ["spec_error_models:tuple_out returned a tuple;", "[batch, classes]"]),
        ("per_frame", ["spec_error_models:per_frame returned [2, 4, 3]", "[2, 3, 4, 16, 16]"]),
        ("flattened", ["spec_error_models:flattened returned [6]", "[batch, classes]"]),
    ],
)
def test_outputs_that_are_not_logits_are_refused_on_the_first_forward(user_modules, factory, words):
    model = load_foreign_model(f"spec_error_models:{factory}", num_classes=3, num_frames=4)
    with pytest.raises(ValueError) as caught:
        model(torch.zeros(2, 3, 4, 16, 16))
    message = _single_line(caught.value)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("factory", ["colour_means", "with_logits"])
def test_logits_as_a_tensor_or_an_attribute_pass_the_check(user_modules, factory):
    model = load_foreign_model(f"spec_error_models:{factory}", num_classes=3, num_frames=4)
    assert model(torch.zeros(2, 3, 4, 16, 16)).shape == (2, 3)


def test_torchvision_weights_of_another_network_are_one_line(tmp_path):
    # mc3_18 and r3d_18 share every name; mc3_18's layers 2-4 convolve 1 x 3 x 3, r3d_18's 3 x 3 x 3.
    from torchvision.models.video import mc3_18

    path = tmp_path / "mc3_weights.pth"
    torch.save(mc3_18(weights=None, num_classes=3).state_dict(), path)
    with pytest.raises(ValueError) as caught:
        load_foreign_model(f"torchvision:r3d_18:{path}", num_classes=3)
    message = _single_line(caught.value)
    assert message.startswith(f"{path} does not fit torchvision:r3d_18: ")
    assert "layer2.0.conv1.0.weight is [128, 64, 1, 3, 3] in the file, " in message
    assert "[128, 64, 3, 3, 3] in the model" in message
    assert message.endswith("weights of another network?")


def test_a_misspelt_torchvision_weights_name_lists_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DEFAULTT is no file here either
    with pytest.raises(FileNotFoundError) as caught:
        load_foreign_model("torchvision:r3d_18:DEFAULTT", num_classes=3)
    message = _single_line(caught.value)
    assert message.startswith(
        "torchvision:r3d_18:DEFAULTT: neither torchvision's weights for r3d_18 ("
    )
    assert "KINETICS400_V1" in message and "DEFAULT" in message
    assert message.endswith("nor a weights file")


def _conv_net_weights(**extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 3-D CNN's names, torchvision's VideoResNet layout at toy size."""
    weights = {
        "stem.0.weight": torch.randn(4, 3, 3, 7, 7),
        "stem.1.weight": torch.ones(4),
        "layer1.0.conv1.0.weight": torch.randn(4, 4, 3, 3, 3),
        "layer2.0.conv1.0.weight": torch.randn(8, 4, 3, 3, 3),
        "fc.weight": torch.randn(5, 8),
        "fc.bias": torch.zeros(5),
    }
    return {**weights, **extra}


def test_weights_of_another_network_are_one_line_not_every_key(tmp_path):
    model = _tiny()
    model_keys = len(model.state_dict()) - 2  # its classifier, head.*, is left to the model
    path = tmp_path / "conv_net.pth"
    torch.save(_conv_net_weights(), path)
    with pytest.raises(PretrainedKeyError) as caught:
        load_pretrained(model, path)
    message = _single_line(caught.value)
    assert message.startswith(
        f"{path} does not fit the model: none of the model's {model_keys} keys are in it "
        "(weights of another network?)"
    )
    assert "cls_token" in message and "blocks.0." in message  # the model's side
    assert "stem.0.weight" in message and "layer1.0.conv1.0.weight" in message  # the file's
    assert "stem.1.weight" not in message  # a glimpse of each module, not every key
    assert len(caught.value.missing) == model_keys  # the full lists stay on the exception

    # One key in common is still almost none.
    torch.save(_conv_net_weights(cls_token=model.cls_token.detach().clone()), path)
    with pytest.raises(PretrainedKeyError, match=f"only 1 of the model's {model_keys} keys"):
        load_pretrained(model, path)


def test_init_from_weights_of_another_network_is_one_cli_line(tmp_path, capsys):
    path = tmp_path / "conv_net.pth"
    torch.save(_conv_net_weights(), path)
    base = ["train", "synthetic/time", *TINY, f"train.out={tmp_path / 'run'}", "train.epochs=1"]
    code, err = _cli(capsys, *base, "--init-from", str(path))
    assert code == 2
    _one_clear_line(err, "conv_net.pth", "none of the model's", "weights of another network?")
