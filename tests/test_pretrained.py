"""Pretrained loading: file formats and wrappers, embedding resizing, the key check, safety."""

from __future__ import annotations

import pytest
import torch

from timematters.backbones.layers import resample_pos_embed, resample_time_embed
from timematters.backbones.pretrained import (
    PretrainedKeyError,
    detect_source,
    load_pretrained,
    read_state_dict,
)
from timematters.backbones.timesformer import TimeSformer


def _tiny(**kwargs) -> TimeSformer:
    defaults = {
        "num_classes": 5,
        "num_frames": 4,
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "drop_path_rate": 0.0,
    }
    return TimeSformer(**{**defaults, **kwargs}).eval()


def _trained(seed: int = 0, **kwargs) -> TimeSformer:
    """A tiny model whose every parameter (temporal_fc and time_embed included) is non-trivial."""
    torch.manual_seed(seed)
    model = _tiny(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_checkpoint_loads(tmp_path):
    source = _trained()
    path = tmp_path / "official.pyth"
    wrapped = {f"model.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 15, "model_state": wrapped, "cfg": "TRAIN:\n  ENABLE: True\n"}, path)

    model = _tiny()
    report = load_pretrained(model, path)
    assert report.source == "official" and report.new == [] and report.resized == {}
    assert _same_weights(model, source)
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(video), source(video))


def test_own_checkpoint_loads(tmp_path):
    source = _trained()
    path = tmp_path / "checkpoint.pth"
    optimizer = torch.optim.AdamW(source.parameters())
    torch.save(
        {"model": source.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path
    )
    model = _tiny()
    load_pretrained(model, path)
    assert _same_weights(model, source)


def test_ddp_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = _trained()
    path = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert read_state_dict(path).keys() == source.state_dict().keys()
    model = _tiny()
    load_pretrained(model, path)
    assert _same_weights(model, source)


def test_detect_source():
    ours = _tiny().state_dict()
    assert detect_source(ours) == "official"
    vit = {k: v for k, v in ours.items() if "temporal" not in k and k != "time_embed"}
    assert detect_source(vit) == "timm_vit"
    assert (
        detect_source({"timesformer.embeddings.cls_token": ours["cls_token"]}) == "hf_timesformer"
    )


def test_embeddings_resized_to_more_frames_and_larger_frames(tmp_path):
    source = _trained(num_frames=4, img_size=32)
    path = tmp_path / "small.pth"
    torch.save(source.state_dict(), path)

    model = _tiny(num_frames=8, img_size=48)
    report = load_pretrained(model, path)
    assert report.resized == {
        "pos_embed": ((1, 17, 32), (1, 37, 32)),
        "time_embed": ((1, 4, 32), (1, 8, 32)),
    }
    assert model.pos_embed.shape == (1, 37, 32) and model.time_embed.shape == (1, 8, 32)
    assert torch.equal(model.pos_embed, resample_pos_embed(source.pos_embed, (6, 6)))
    assert torch.equal(model.time_embed, resample_time_embed(source.time_embed, 8))
    assert torch.equal(model.pos_embed[:, 0], source.pos_embed[:, 0])  # CLS entry kept
    assert torch.equal(model.blocks[1].temporal_fc.weight, source.blocks[1].temporal_fc.weight)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 48, 48)).shape == (1, 5)


def test_new_number_of_classes_gets_a_new_head(tmp_path):
    source = _trained(num_classes=5)
    path = tmp_path / "five.pth"
    torch.save(source.state_dict(), path)

    model = _tiny(num_classes=7)
    head_before = model.head.weight.clone()
    report = load_pretrained(model, path)
    assert report.dropped == ["head.bias", "head.weight"]
    assert report.new == ["head.bias", "head.weight"]
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.norm.weight, source.norm.weight)

    with pytest.raises(PretrainedKeyError, match="head.weight"):
        load_pretrained(_tiny(num_classes=7), path, num_classes_changed_ok=False)


def test_unknown_and_missing_keys_are_named(tmp_path):
    state_dict = _trained().state_dict()
    state_dict["blocks.0.attn.extra_scale"] = torch.ones(1)
    del state_dict["blocks.1.mlp.fc1.bias"]
    del state_dict["blocks.0.temporal_fc.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state_dict, path)

    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PretrainedKeyError) as caught:
        load_pretrained(model, path)
    message = str(caught.value)
    for key in (
        "blocks.0.attn.extra_scale",
        "blocks.1.mlp.fc1.bias",
        "blocks.0.temporal_fc.weight",
    ):
        assert key in message
    assert caught.value.unexpected == ["blocks.0.attn.extra_scale"]
    assert caught.value.missing == ["blocks.0.temporal_fc.weight", "blocks.1.mlp.fc1.bias"]
    # Nothing was loaded: the check comes before any copy.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_other_patch_size_is_an_error(tmp_path):
    path = tmp_path / "patch16.pth"
    torch.save(_tiny(patch_size=16).state_dict(), path)
    with pytest.raises(PretrainedKeyError, match=r"patch_embed\.proj\.weight.*patch size"):
        load_pretrained(_tiny(patch_size=8), path)


def _mark_executed() -> dict:
    _EXECUTED.append(True)
    return {}


_EXECUTED: list[bool] = []


class _Payload:
    """Unpickling this object would call ``_mark_executed``: arbitrary code."""

    def __reduce__(self):
        return (_mark_executed, ())


def test_pickled_python_object_is_refused(tmp_path):
    path = tmp_path / "payload.pth"
    torch.save({"model": _tiny().state_dict(), "extra": _Payload()}, path)
    with pytest.raises(ValueError, match="payload.pth"):
        load_pretrained(_tiny(), path)
    assert not _EXECUTED


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/weights.pth"):
        load_pretrained(_tiny(), path)


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown weights format"):
        read_state_dict(path)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face hub cache in ``tmp_path``; ``add(repo, file, state_dict)`` lays a
    file out as the hub client stores it."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def add(repo: str, file: str, state_dict: dict) -> None:
        folder = cache / f"models--{repo.replace('/', '--')}"
        snapshot = folder / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True, exist_ok=True)
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text("0" * 40)
        if file.endswith(".safetensors"):
            save_file(state_dict, str(snapshot / file))
        else:
            torch.save(state_dict, snapshot / file)

    return add


def test_weights_on_the_hub_are_read_from_its_cache(tmp_path, hub_cache):
    source = _trained(seed=3)
    hub_cache("timm/tiny_test.in1k", "model.safetensors", source.state_dict())
    model = _tiny()
    report = load_pretrained(model, "timm:tiny_test.in1k")
    assert report.path == "timm:tiny_test.in1k" and _same_weights(model, source)
    # Any repository's file; without a file name its model.safetensors, else pytorch_model.bin.
    hub_cache("someone/weights", "ours.pth", {"model": source.state_dict()})
    hub_cache("someone/bin-only", "pytorch_model.bin", source.state_dict())
    for spec in ("hf-hub:someone/weights:ours.pth", "hf-hub:someone/bin-only"):
        model = _tiny()
        load_pretrained(model, spec)
        assert _same_weights(model, source), spec


def test_hub_weights_that_are_not_cached_offline_are_named_with_the_fix(
    tmp_path, hub_cache, capsys
):
    from test_train import TINY

    from timematters.cli import main

    with pytest.raises(ValueError, match=r"timm:vit_none: not in the Hugging Face hub cache"):
        load_pretrained(_tiny(), "timm:vit_none")
    out = tmp_path / "run"
    argv = ["train", "synthetic/time", *TINY, "model.pretrained=timm:vit_none", f"train.out={out}"]
    assert main(argv) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith(
        "timematters: error: model.pretrained: timm:vit_none: not in the Hugging Face hub cache"
    )
    assert said.endswith("or give a local file") and not out.exists()  # refused before any work


def test_a_run_initialised_from_the_hub_says_so_and_resumes_without_it(tmp_path, hub_cache, capsys):
    from test_train import _Killed, tiny_config

    from timematters.backbones import create_backbone
    from timematters.engine.train import train

    # Weights of another class count: the load says the classifier is new.
    kwargs = dict(num_classes=7, num_frames=4, img_size=32, embed_dim=24, depth=2, num_heads=2)
    source = create_backbone("timesformer_tiny_patch8_64", **kwargs)
    hub_cache("timm/tiny_video", "model.safetensors", source.state_dict())
    spec = "model.pretrained=timm:tiny_video"

    def kill_at_5(step, record):
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        train(tiny_config(tmp_path / "run", spec), step_callback=kill_at_5)
    assert "[train] timm:tiny_video: " in capsys.readouterr().out
    # A resume takes the checkpoint's weights: the hub file is not needed again.
    for file in (tmp_path / "hub").rglob("model.safetensors"):
        file.unlink()
    result = train(
        tiny_config(tmp_path / "run", spec), resume=tmp_path / "run" / "checkpoints" / "last.pth"
    )
    assert result["metrics"]["all"]["num_clips"] == 8
    # --init-from's weights replace model.pretrained's: the hub file is not needed either.
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    train(tiny_config(tmp_path / "again", spec, "train.epochs=1"), init_from=checkpoint)


def test_the_normalisation_timm_weights_were_trained_with_is_known_without_a_download():
    """A run told so when its data.mean / data.std differ from its timm:NAME weights' own."""
    from timematters.backbones.pretrained import weights_normalisation

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert weights_normalisation("timm:deit_tiny_patch16_224.fb_in1k") == imagenet
    presets = "timm:vit_base_patch16_224.orig_in21k_ft_in1k"  # the SSv2 presets': as their data
    assert weights_normalisation(presets) == ((0.5,) * 3, (0.5,) * 3)
    assert weights_normalisation("timm:no_such_network") is None
    assert weights_normalisation("weights.pth") is None
