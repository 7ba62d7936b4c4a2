"""Zero-shot video-text models (Hugging Face X-CLIP): each class scored by the text of its name,
the classes those of the data; evaluated, diagnosed and predicted like any classifier. A tiny
random X-CLIP with a tiny tokenizer, written by the test."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import timematters  # noqa: E402
from timematters.cli import main  # noqa: E402
from timematters.config import load_config  # noqa: E402
from timematters.data.synthetic import SyntheticVideoDataset  # noqa: E402

IMG, T = 64, 8
DATA = [
    "data.synthetic.num_train=16",
    "data.synthetic.num_test=12",
    "data.num_workers=0",
    "eval.batch_size=6",
    "train.progress=false",
    "train.device=cpu",
    "train.precision=fp32",
]
CLASSES = list(SyntheticVideoDataset("test", 1).classes)
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
VOCAB = 2 + 2 * 26  # the tiny tokenizer's: its special tokens, and each letter twice


def _tokenizer(folder: Path):
    """A CLIP tokenizer over single letters: enough to tell class names apart."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def _tiny_xclip(vocab_size: int):
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.XCLIPConfig(
        text_config=transformers.XCLIPTextConfig(
            vocab_size=vocab_size, max_position_embeddings=77, **sizes
        ).to_dict(),
        vision_config=transformers.XCLIPVisionConfig(
            image_size=IMG,
            patch_size=16,
            num_frames=T,
            mit_hidden_size=32,
            mit_intermediate_size=64,
            mit_num_hidden_layers=1,
            mit_num_attention_heads=2,
            **sizes,
        ).to_dict(),
        projection_dim=32,
        prompt_layers=1,
        prompt_attention_heads=2,
    )
    torch.manual_seed(0)
    return transformers.XCLIPModel(config)


@pytest.fixture(scope="module")
def xclip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("xclip")
    tokenizer = _tokenizer(folder)
    _tiny_xclip(len(tokenizer)).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def test_a_zero_shot_model_scores_the_datas_classes_by_their_names(xclip):
    model = timematters.load_model(f"hf:{xclip}")
    assert model.zero_shot and model.num_classes == 0
    # CLIP's statistics when the folder names none; 8 frames of 64² from its vision config.
    assert model.mean == (0.48145466, 0.4578275, 0.40821073)
    assert (model.num_frames, model.img_size) == (T, IMG)
    with pytest.raises(ValueError, match="none were given"):
        model(torch.zeros(1, 3, T, IMG, IMG))

    model.set_class_names(CLASSES, prompt="a video of {}")
    video = torch.randn(2, 3, T, IMG, IMG).clamp(-1, 1)
    with torch.no_grad():
        logits = model(video)
        # The same as X-CLIP's own zero-shot classification of the renormalised frames.
        xclip_model = transformers.XCLIPModel.from_pretrained(xclip).eval()
        texts = [f"a video of {name}" for name in CLASSES]
        tokens = model.tokenizer(texts, padding=True, return_tensors="pt")
        mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (model.mean, model.std))
        pixels = rearrange(((video * 0.5 + 0.5) - mean) / std, "b c t h w -> b t c h w")
        expected = xclip_model(**tokens, pixel_values=pixels).logits_per_video
    assert logits.shape == (2, len(CLASSES))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)  # logit scale 100
    assert logits.std(dim=1).min() > 0  # the class names give different scores

    # The class texts are encoded once, not on every batch, and again for new classes; the text
    # encoder is the model's own again between calls (its weights are saved and loaded as ever).
    encoded = []
    text_model = model.model.text_model
    text_model.register_forward_hook(lambda *_: encoded.append(1))
    with torch.no_grad():
        again = [model(video), model(video[:1])]
        torch.testing.assert_close(again[0], logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again[1], logits[:1], rtol=1e-5, atol=1e-5)
        assert encoded == [] and model.model.text_model is text_model  # encoded above, once
        model.set_class_names(CLASSES[:3])
        assert model(video).shape == (2, 3) and len(encoded) == 1


def test_eval_and_diagnose_score_a_zero_shot_model_on_the_datas_classes(xclip, tmp_path):
    spec = f"hf:{xclip}"
    out = tmp_path / "eval"
    assert main(["eval", "synthetic/time", *DATA, "--model", spec, "--out", str(out)]) == 0
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["all"]["num_clips"] == 12

    report = tmp_path / "diagnose"
    code = main(
        [
            "diagnose",
            "--config",
            "synthetic/time",
            *DATA,
            "model.prompt=a video of {}",
            "--model",
            spec,
            "--out",
            str(report),
        ]
    )
    assert code == 0
    data = json.loads((report / "diagnose.json").read_text())
    (name,) = data["models"]
    assert data["models"][name]["zero_shot_prompt"] == "a video of {}"
    # The order probe reads its frame encoder's layers and the per-frame output of its
    # multi-frame integration transformer (one layer here).
    assert set(data["order_probe"]["accuracy"][name]) == {"block1", "final"}
    assert data["order_probe"]["chance"][name] == {"block1": 100 / T, "final": 100 / T}
    # GradCAM on its last frame-encoder layer: a map per frame for each explained clip.
    assert data["gradcam"]["skipped"] == {} and len(data["gradcam"]["clips"]) == 4
    maps = np.load(report / "gradcam.npz")
    assert maps[f"maps_{name}"].shape == (4, T, IMG, IMG) and maps[f"maps_{name}"].max() > 0
    text = (report / "report.md").read_text()
    assert "Zero-shot: each class scored" in text and "`a video of {}`" in text


def test_predict_needs_the_classes_and_train_refuses(xclip, tmp_path, capsys):
    from videos import moving_square_frames, write_video

    video = write_video(tmp_path / "clip.mp4", moving_square_frames(12, 64, 80))
    spec = f"hf:{xclip}"
    assert main(["predict", str(video), "--model", spec]) == 2
    assert "--classes FILE" in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text("opening a door\nclosing a door\n")
    assert (
        main(["predict", str(video), "--model", spec, "--classes", str(tmp_path / "classes.txt")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "opening a door" in printed and "closing a door" in printed

    out = f"train.out={tmp_path / 'run'}"
    assert main(["train", "synthetic/time", *DATA, f"model.name={spec}", out]) == 2
    assert "training it is not supported" in capsys.readouterr().err


def test_a_prompt_without_a_place_for_the_name_is_refused():
    from timematters.config import ConfigError, validate

    with pytest.raises(ConfigError, match="must hold one"):
        validate(load_config("synthetic/time", ["model.prompt=a video"]))


def test_a_folder_without_its_tokenizer_is_refused(xclip, tmp_path, capsys):
    # transformers 5 makes a tokenizer of the two special tokens alone from a folder without
    # tokenizer files: every class text would get the same score, and class 0 always win.
    bare = tmp_path / "bare"
    _tiny_xclip(VOCAB).save_pretrained(bare)
    with pytest.raises(ValueError, match="has no tokenizer") as refused:
        timematters.load_model(f"hf:{bare}")
    message = str(refused.value)
    assert str(bare) in message and "XCLIPProcessor.from_pretrained" in message
    out = str(tmp_path / "eval")
    assert main(["eval", "synthetic/time", *DATA, "--model", f"hf:{bare}", "--out", out]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "no tokenizer" in line]
    assert f"save_pretrained({bare})" in error  # the reason and the fix, on one line

    # A hub repository without one (here from the hub cache, offline): refused by what it gave.
    import huggingface_hub.constants

    repo = tmp_path / "cache" / "models--someone--tiny-xclip"
    (repo / "snapshots").mkdir(parents=True)
    bare.rename(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        with pytest.raises(ValueError, match="hf:someone/tiny-xclip has no tokenizer"):
            timematters.load_model("hf:someone/tiny-xclip")


def test_class_names_the_tokenizer_cannot_tell_apart_are_refused(xclip):
    # The tiny tokenizer knows letters only: "door 1" and "door 2" are the same text to it.
    model = timematters.load_model(f"hf:{xclip}")
    with pytest.raises(ValueError, match="'door 1' and 'door 2'.* the same tokens"):
        model.set_class_names(["door 1", "door 2", "window"], prompt="a video of {}")
    # A video list labelled by index has classes "0", "1", ...: no names to score.
    with pytest.raises(ValueError, match=r"these are numbers \(0, 1, 2, ...\).*data.class_list"):
        model.set_class_names(["0", "1", "2", "3"], prompt="a video of {}")


def _network_input(model, network: torch.nn.Module, frames: np.ndarray) -> torch.Tensor:
    """The pixel values the adapter gives ``network`` for uint8 frames [T, H, W, C]."""
    video = torch.from_numpy(frames).float() / 255  # ours: [0, 1] pixels, mean = std = 0.5
    video = rearrange((video - 0.5) / 0.5, "t h w c -> 1 c t h w")
    given = []

    def keep(module, args, kwargs):
        given.append(kwargs.get("pixel_values", args[0] if args else None))

    handle = network.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        model(video)
    handle.remove()
    return given[0]


def test_the_normalisation_of_a_transformers_5_processor_is_read(xclip, tmp_path):
    # transformers 5 saves a processor as one processor_config.json, its image (or video)
    # processor nested in it; the adapter's input must be the processor's own.
    frames = np.random.default_rng(0).integers(0, 256, (T, IMG, IMG, 3), dtype=np.uint8)
    size = dict(do_resize=False, do_center_crop=False, return_tensors="pt")

    folder = tmp_path / "xclip"
    tokenizer = transformers.AutoTokenizer.from_pretrained(xclip)
    # X-CLIP's own checkpoints name VideoMAE's image processor, which takes clips.
    image_processor = transformers.VideoMAEImageProcessor(
        image_mean=IMAGENET[0], image_std=IMAGENET[1]
    )
    transformers.XCLIPProcessor(image_processor, tokenizer).save_pretrained(folder)
    transformers.XCLIPModel.from_pretrained(xclip).save_pretrained(folder)
    assert "image_processor" in json.loads((folder / "processor_config.json").read_text())
    model = timematters.load_model(f"hf:{folder}").eval()
    model.set_class_names(CLASSES[:2])
    processor = transformers.XCLIPProcessor.from_pretrained(folder)
    expected = processor(videos=[list(frames)], **size)["pixel_values"]
    pixels = _network_input(model, model.model, frames)
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)

    # A VideoMAE folder with a processor holding its video processor, as transformers 5 saves
    # any processor (here a minimal one): nested under "video_processor".
    class Clips(transformers.ProcessorMixin):
        def __init__(self, video_processor):
            super().__init__(video_processor)

    folder = tmp_path / "videomae"
    config = transformers.VideoMAEConfig(
        image_size=IMG, patch_size=16, num_frames=T, num_labels=2, hidden_size=32,
        intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    )  # fmt: skip
    transformers.VideoMAEForVideoClassification(config).save_pretrained(folder)
    video_processor = transformers.VideoMAEVideoProcessor(
        image_mean=IMAGENET[0], image_std=IMAGENET[1]
    )
    Clips(video_processor).save_pretrained(folder)
    assert "video_processor" in json.loads((folder / "processor_config.json").read_text())
    model = timematters.load_model(f"hf:{folder}").eval()
    processor = transformers.AutoVideoProcessor.from_pretrained(folder)
    expected = processor(videos=[frames], **size)["pixel_values"]
    pixels = _network_input(model, model.model.videomae, frames)
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)


def test_an_xclip_model_object_is_refused_with_how_to_save_it():
    from timematters.backbones.adapters.module import as_video_backbone

    with pytest.raises(ValueError, match=r"XCLIPProcessor.save_pretrained\(DIR\)"):
        as_video_backbone(_tiny_xclip(VOCAB), source="XCLIPModel")


def test_a_frame_size_other_than_the_models_is_refused_with_the_override(xclip, capsys):
    model = timematters.load_model(f"hf:{xclip}")
    model.set_class_names(CLASSES)
    with pytest.raises(ValueError, match=f"data.crop_size={IMG}"):
        model(torch.zeros(1, 3, T, 32, 32))
    argv = ["eval", "synthetic/time", *DATA, "data.crop_size=32", "--model", f"hf:{xclip}"]
    assert main(argv) == 2
    assert f"(in a config: data.crop_size={IMG})" in capsys.readouterr().err
