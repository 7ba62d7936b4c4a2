"""`timematters predict`: what a model says about one video, and how that changes when its frames
are shuffled or reversed (the shuffle test of one clip).

``predict(model, video)`` takes a file path or the decoded video as a uint8 array (numpy or torch)
``[frames, H, W, 3]``, samples the model's number of frames (segment centres, as at test time),
resizes the short side and centre-crops to the model's frame size, and returns the top-k classes
with their probabilities on the clip and on each perturbation of it. ``explain_prediction``
writes GradCAM of the clip for the predicted class as an animated GIF and a PNG strip.
``predict_windows`` does it for each consecutive window of a long video (a clip sampled over a
whole film says little): a timeline of predictions and of what shuffling each window does.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timematters.backbones.adapters.module import as_video_backbone
from timematters.backbones.normalisation import declared_normalisation
from timematters.backbones.protocol import model_name
from timematters.config import check_perturbations
from timematters.data.dataset import VIDEO_EXTENSIONS
from timematters.data.sampling import EvalClip
from timematters.data.transforms import EvalTransform
from timematters.data.video import (
    IMAGE_EXTENSIONS,
    VideoDecodeError,
    VideoReader,
    is_frame_folder,
    open_video,
)
from timematters.data.videolist import split_path_and_label
from timematters.engine.evaluate import aggregate_views
from timematters.engine.model import class_names_of, describe_model
from timematters.losses.shuffle import perturbed_views, sample_frame_permutations

Video = str | os.PathLike | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """Top-k (class, probability) on the clip and on each perturbation of it."""

    source: str
    top: list[tuple[str, float]]
    perturbed: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    # The probability of the clip's top-1 class under each perturbation.
    top1_probability: dict[str, float] = field(default_factory=dict)
    # The frames the clip was made of: every temporal view's in turn, when evaluation takes
    # several; views counts temporal views x spatial crops.
    frames: list[int] = field(default_factory=list)
    views: int = 1
    # predict_windows: the window's frames [start, stop) and, where the frame rate is known, its
    # seconds [start, stop).
    window: list[int] | None = None
    seconds: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """A few lines for the terminal."""

        def ranked(top: list[tuple[str, float]]) -> str:
            return ", ".join(f"{name} ({p:.2f})" for name, p in top)

        first, p = self.top[0]
        lines = [self.source + self._where(), f"  original:  {ranked(self.top)}"]
        for name, top in self.perturbed.items():
            after = self.top1_probability[name]
            lines.append(
                f"  {name + ':':<10} {ranked(top)}   [{first}: {p:.2f} -> {after:.2f}, "
                f"{after - p:+.2f}]"
            )
        distinct = len(set(self.frames))
        if self.perturbed and self.frames and distinct < 2:
            lines.append(
                f"  note: the clip repeats {distinct} frame of the video, so no perturbation can "
                "change it: the test says nothing here (left out of the summary)"
            )
        elif distinct < len(self.frames):  # a video shorter than the clip (training refuses it)
            lines.append(
                f"  note: the video is shorter than the clip: {distinct} different frames of its "
                f"{len(self.frames)} (training and eval skip such videos as too short)"
            )
        return "\n".join(lines)

    @property
    def perturbable(self) -> bool:
        """Whether a perturbation could change the clip: it holds two different frames."""
        return len(set(self.frames)) > 1 if self.frames else True

    def _where(self) -> str:
        if self.seconds is not None:
            return f" [{self.seconds[0]:.1f}-{self.seconds[1]:.1f} s]"
        if self.window is not None:
            return f" [frames {self.window[0]}-{self.window[1] - 1}]"
        return ""


def clip_of(
    model: nn.Module,
    video: Video | VideoReader,
    *,
    num_frames: int | None = None,
    frame_size: int | None = None,
    window: tuple[int, int] | None = None,
    eval_clip: EvalClip | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """The model's input for a video, one clip: [1, C, T, S, S] normalised as the model takes
    clips, and the indices of the frames it holds. num_frames, frame_size: the clip for a model
    that does not fix its own (a user's module, a 3-D CNN); the model's own otherwise. window:
    sample the frames [start, stop) only (default: the whole video). eval_clip: which frames and
    what short side (default: the model's ``eval_clip``, a checkpoint's run's; else the segment
    centres and the crop size); the middle view, one centre crop (``views_of`` makes them all).
    ``video`` may be an open reader."""
    one_view = replace(_recipe(model, eval_clip), temporal_views=1, spatial_crops=1)
    return views_of(
        model,
        video,
        num_frames=num_frames,
        frame_size=frame_size,
        window=window,
        eval_clip=one_view,
    )


def views_of(
    model: nn.Module,
    video: Video | VideoReader,
    *,
    num_frames: int | None = None,
    frame_size: int | None = None,
    window: tuple[int, int] | None = None,
    eval_clip: EvalClip | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Every view evaluation makes of a video, as ``clip_of`` makes one: [V, C, T, S, S] with
    V = temporal views x spatial crops (a view's crops together, as a dataset gives them), and
    the frames of every temporal view in turn."""
    info = describe_model(_as_backbone(model))
    num_frames = num_frames or info["num_frames"]
    size = frame_size or info["frame_size"]
    if not (num_frames and size):
        raise ValueError(
            f"{info.get('source') or type(model).__name__} takes clips of any size: give "
            "num_frames and frame_size (on the command line: --config CONFIG -o "
            "model.num_frames=T -o data.crop_size=S)"
        )
    mean, std = _input_normalisation(model)
    if _is_array(video):
        array = _uint8_frames(video)
        count, read = len(array), array.__getitem__
    else:
        reader = video if hasattr(video, "get_frames") else None
        if reader is None and not isinstance(video, str | os.PathLike):
            raise TypeError(f"{_EXPECTED}; got {_described(video)}")  # not its whole repr
        reader = reader or open_video(video)
        count, read = reader.num_frames, reader.get_frames
    recipe = _recipe(model, eval_clip)
    start, stop = window or (0, count)
    transform = EvalTransform(
        crop_size=size,
        short_side=max(recipe.short_side or size, size),
        num_crops=recipe.spatial_crops,
        mean=mean,
        std=std,
        interpolation=recipe.interpolation,
    )
    views, indices = [], []
    for taken in recipe.view_indices(stop - start, num_frames):
        views.append(transform(read(start + taken)))
        indices += [int(i) for i in start + taken]
    return torch.cat(views), indices


def _recipe(model: nn.Module, eval_clip: EvalClip | None) -> EvalClip:
    """How the model's clips are made: as given, as its run was evaluated, or one view."""
    return eval_clip or getattr(model, "eval_clip", None) or EvalClip()


_EXPECTED = "expected a video file path or a uint8 [T, H, W, 3] array"


def _is_array(video: object) -> bool:
    return isinstance(video, np.ndarray | torch.Tensor)


def _uint8_frames(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """Decoded frames [T, H, W, 3] as the numpy uint8 array the transforms take."""
    if video.dtype not in (np.uint8, torch.uint8) or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{_EXPECTED}; got {_described(video)}")
    return video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else video


def _described(video: object) -> str:
    """What was passed, in a few words (never the values: a tensor's repr is thousands)."""
    if _is_array(video):
        return f"{type(video).__name__} of shape {list(video.shape)} ({video.dtype})"
    if isinstance(video, list | tuple):
        return f"a {type(video).__name__} of {len(video)} items (stack frames into one array)"
    return type(video).__name__


def _as_backbone(model: nn.Module) -> nn.Module:
    """A plain module gets the logits-only adapter, as in ``diagnose``: it then says what it
    needs (a clip size) or cannot do (GradCAM) instead of failing on a missing attribute."""
    return as_video_backbone(model, source=model_name(model))


@contextlib.contextmanager
def _in_eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as a backbone in eval mode, handed back in the caller's mode: predict may run
    inside a training loop, whose dropout and drop-path must stay on."""
    was_training = model.training
    backbone = _as_backbone(model).eval()
    try:
        yield backbone
    finally:
        model.train(was_training)


def _input_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """How clips must be normalised for ``model``: an adapter takes ours (and renormalises);
    our backbones take what they were trained with."""
    if hasattr(model, "input_mean"):
        return model.input_mean, model.input_std
    return declared_normalisation(model)


@torch.no_grad()
def predict(
    model: nn.Module,
    video: Video,
    *,
    classes: Sequence[str] | None = None,
    top_k: int = 5,
    perturbations: Sequence[str] = ("shuffle", "reverse"),
    seed: int = 0,
    generator: torch.Generator | None = None,
    num_frames: int | None = None,
    frame_size: int | None = None,
    window: tuple[int, int] | None = None,
    eval_clip: EvalClip | None = None,
) -> Prediction:
    """The top ``top_k`` classes of ``model`` on ``video`` and on its ``perturbations``.

    seed: the shuffled frame order's; generator: draws it instead, for many videos (or windows)
    each shuffled by its own permutation, as evaluate shuffles each clip by its own.
    num_frames, frame_size: the clip to make (default: the model's own; a model that takes any
    needs them). window: the frames [start, stop) to sample from (default: all). eval_clip: the
    views and how they are aggregated, and the frame the freeze test repeats (default: as the
    model's run was evaluated, ``views_of``; else one view and the middle frame), so that a
    checkpoint's probabilities are its evaluation's. The model runs in eval mode and is handed
    back in its own mode."""
    check_perturbations(perturbations, where="perturbations")
    with _in_eval_mode(model) as backbone:
        recipe = _recipe(backbone, eval_clip)
        views, indices = views_of(
            backbone,
            video,
            num_frames=num_frames,
            frame_size=frame_size,
            window=window,
            eval_clip=recipe,
        )
        views = views.to(_device_of(backbone))
        generator = generator or torch.Generator().manual_seed(seed)

        def probabilities(batches: list[torch.Tensor]) -> torch.Tensor:
            """[K]: each batch's view logits aggregated as evaluation does, then averaged."""
            return (
                torch.stack(
                    [aggregate_views(backbone(b)[None], recipe.aggregation)[0] for b in batches]
                )
                .mean(dim=0)
                .cpu()
            )

        def perturbed(name: str) -> list[torch.Tensor]:
            """A shuffle moves every view's frames alike, as evaluate's one order per clip."""
            perms = None
            if name == "shuffle":
                order = sample_frame_permutations(1, views.shape[2], "per_sample", generator)
                perms = order.expand(len(views), -1)
            return perturbed_views(views, name, perms=perms, freeze_frame=recipe.freeze_frame)

        probs = torch.stack(
            [probabilities([views])] + [probabilities(perturbed(name)) for name in perturbations]
        )
    names = list(classes or class_names_of(backbone, num_classes=probs.shape[1]))
    if len(names) != probs.shape[1]:
        raise ValueError(
            f"{len(names)} class names for a model of {probs.shape[1]} outputs: give one name "
            "per output, in the model's order"
        )
    k = min(top_k, probs.shape[1])

    def top(p: torch.Tensor) -> list[tuple[str, float]]:
        values, ids = p.topk(k)
        return [(names[i], float(v)) for v, i in zip(values, ids.tolist(), strict=True)]

    best = int(probs[0].argmax())
    return Prediction(
        source="<array>" if _is_array(video) else str(getattr(video, "path", video)),
        top=top(probs[0]),
        perturbed={name: top(p) for name, p in zip(perturbations, probs[1:], strict=True)},
        top1_probability={
            name: float(p[best]) for name, p in zip(perturbations, probs[1:], strict=True)
        },
        frames=indices,
        views=len(views),
        window=list(window) if window else None,
    )


def predict_windows(
    model: nn.Module,
    video: str | os.PathLike,
    *,
    seconds: float,
    fps: float | None = None,
    **options,
) -> list[Prediction]:
    """``predict`` on each consecutive window of ``seconds`` of a video (a last, shorter window is
    kept when it spans half a window or more): a timeline, at ``fps`` frames per second when
    given, else the video's own rate (frame folders carry none). ``options`` are
    ``predict``'s."""
    if seconds <= 0:
        raise ValueError(f"the window must be positive, got {seconds} s")
    if fps is not None and fps <= 0:
        raise ValueError(f"--fps {fps}: give the frames' rate per second, a positive number")
    reader = open_video(video)  # once: a long video is not scanned again for every window
    rate = fps or reader.fps  # given: the rate the user knows (a file may declare a wrong one)
    if not rate:
        raise ValueError(f"{video} has no frame rate (a folder of frames): give it, --fps N")
    length = round(seconds * rate)
    if length < 2:  # one frame (or none) has no order for a perturbation to change
        raise ValueError(
            f"--window {seconds} s holds {seconds * rate:.2g} frames of {video} at {rate:g} fps: "
            f"give at least {2 / rate:.2g} s (two frames)"
        )
    predictions = []
    for start in range(0, reader.num_frames, length):
        stop = min(start + length, reader.num_frames)
        if predictions and 2 * (stop - start) < length:  # a tail too short to stand alone
            break
        prediction = predict(model, reader, window=(start, stop), **options)
        prediction.seconds = [start / rate, stop / rate]
        predictions.append(prediction)
    return predictions


def summarise(predictions: Sequence[Prediction], unit: str = "videos") -> str:
    """What the perturbations did over many videos (or windows), without labels: per
    perturbation, how many top classes changed and the mean probability of the original top
    class before and after. A model that ignores frame order changes nothing under shuffle."""
    if not predictions:
        return f"no {unit} predicted"
    still = sum(not p.perturbable for p in predictions)
    predictions = [p for p in predictions if p.perturbable]
    if not predictions:
        return f"no {unit} with two different frames: nothing a perturbation could change"
    left_out = f", {still} of one frame left out" if still else ""
    lines = [f"over {len(predictions)} {unit} (no labels needed{left_out}):"]
    before = float(np.mean([p.top[0][1] for p in predictions]))
    for name in predictions[0].perturbed:
        changed = sum(p.perturbed[name][0][0] != p.top[0][0] for p in predictions)
        after = float(np.mean([p.top1_probability[name] for p in predictions]))
        share = 100 * changed / len(predictions)
        lines.append(
            f"  {name + ':':<10} top class changed for {changed} ({share:.0f}%); "
            f"its mean probability {before:.2f} -> {after:.2f}"
        )
    return "\n".join(lines)


def explain_prediction(
    model: nn.Module,
    video: Video,
    out: str | Path,
    *,
    label: int | None = None,
    name: str | None = None,
    num_frames: int | None = None,
    frame_size: int | None = None,
    eval_clip: EvalClip | None = None,
) -> list[Path]:
    """GradCAM of the clip for ``label`` (default: the predicted class): ``out/<name>_gradcam.gif``
    (the clip with the map over it) and ``out/<name>_gradcam.png`` (a strip of its frames);
    ``name`` defaults to the video's file name without its extension. The clip is ``predict``'s
    (``num_frames``, ``frame_size``, ``eval_clip`` as there). A model that cannot give GradCAM
    raises ``NotImplementedError`` with the reason."""
    from timematters.diagnostics import plots
    from timematters.diagnostics.gradcam import gradcam_unsupported, video_gradcam

    with _in_eval_mode(model) as backbone:
        source = getattr(backbone, "source", "") or "this model"
        reason = gradcam_unsupported(backbone)
        if reason:
            raise NotImplementedError(f"no GradCAM for {source}: {reason}")
        clip, _ = clip_of(
            backbone, video, num_frames=num_frames, frame_size=frame_size, eval_clip=eval_clip
        )
        clip = clip.to(_device_of(backbone))
        with torch.no_grad():
            label = int(backbone(clip).argmax()) if label is None else label
        try:
            heatmap = video_gradcam(backbone, clip, [label])[0]  # [T, H, W]
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError) as error:
            # Limits found only on a pass (fewer than two blocks, per-block tokens the logits do
            # not depend on), which diagnose skips too: the caller says why and goes on.
            raise NotImplementedError(f"no GradCAM for {source}: {error}") from error
    mean, std = _input_normalisation(backbone)
    frames = plots.denormalise(clip[0].cpu().numpy(), mean, std)  # [T, H, W, 3]
    stem = name or ("array" if _is_array(video) else Path(video).stem)
    out = Path(out)
    names = getattr(backbone, "class_names", None)
    title = f"{stem}: {names[label] if names else label}"
    return [
        plots.save_gradcam_animation(frames, heatmap, out / f"{stem}_gradcam.gif"),
        plots.plot_gradcam_grid(frames, {"GradCAM": heatmap}, out / f"{stem}_gradcam.png", title),
    ]


def list_videos(
    inputs: Sequence[str | Path],
    root: str | Path | None = None,
    *,
    images: bool = False,
    left_out: list[Path] | None = None,
) -> list[Path]:
    """The videos ``inputs`` name: files (an image file is a one-frame video), a folder of frame
    images only (one video), every video of a folder (sorted: its video files and its subfolders
    of frame images only), or the paths a list file holds (one per line, its first field;
    relative to ``root``, a config's ``data.root`` as in training, else to the list's folder).
    ``images``: for a model of one frame, every image of a folder and its subfolders (an
    ImageNet-9 class folder, a variation's) is an input of its own. ``left_out`` gathers a
    folder's files that are no videos (not hidden ones), for the caller to say."""
    videos: list[Path] = []
    for item in map(Path, inputs):
        if images and item.is_dir():
            found = sorted(p for p in item.rglob("*") if _is_image_file(p))
            if not found:
                raise ValueError(f"{item} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            videos += found
        elif is_frame_folder(item):
            videos.append(item)  # its frames: one video
        elif item.is_dir():
            entries = sorted(item.iterdir())
            found = [
                p for p in entries if p.suffix.lower() in VIDEO_EXTENSIONS or is_frame_folder(p)
            ]
            if left_out is not None:
                left_out += [
                    p
                    for p in entries
                    if p.is_file() and p not in found and not p.name.startswith(".")
                ]
            if not found:  # named, so not passed over beside the other inputs
                raise ValueError(
                    f"{item} holds no videos (video files, or folders of frame images only) at "
                    "its top level: name the folders below it, or list the videos in a file"
                )
            videos += found
        elif item.suffix.lower() in IMAGE_EXTENSIONS:
            if not item.is_file():
                raise FileNotFoundError(f"no image at {item}")
            videos.append(item)
        elif item.suffix.lower() in VIDEO_EXTENSIONS:
            if not item.is_file():
                raise FileNotFoundError(f"no video at {item}")
            videos.append(item)
        elif item.is_file():
            try:
                lines = item.read_text(encoding="utf-8-sig").splitlines()
            except UnicodeDecodeError:  # no text: a video of another extension, or a mistake
                if item.suffix.lower() in WEIGHTS_EXTENSIONS:
                    raise ValueError(
                        f"{item} is a model's weights, not a video: a checkpoint goes in "
                        "--checkpoint, other weights in --model"
                    ) from None
                videos.append(item)  # tried as a video: one that cannot be decoded is skipped
                continue
            if lines and lines[0].replace(" ", "") == "path,label":  # quoted paths hold commas
                lines = [row["path"] for row in csv.DictReader(lines) if row.get("path")]
            base = Path(root) if root else item.parent
            listed = [_listed_path(line, base) for line in lines if line.strip()]
            missing = [path for path in listed if not path.exists()]  # files or frame folders
            # None there: the paths are read against the wrong folder. (Some missing: they are
            # skipped and counted as videos that cannot be read, as a dataset counts them.)
            if missing and len(missing) == len(listed):
                relative = f"data.root={root}" if root else f"its folder, {base}"
                raise FileNotFoundError(
                    f"{item}: none of its {len(listed)} videos is there, the first "
                    f"{missing[0]}; its paths are read relative to {relative}"
                    + ("" if root else " (a config's data.root names another folder)")
                )
            videos += listed
        else:
            raise FileNotFoundError(f"{item} is neither a video, a folder nor a list of videos")
    if not videos:
        raise ValueError(f"no videos found in {', '.join(map(str, inputs))}")
    return videos


WEIGHTS_EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors", ".bin", ".pkl", ".pyth")


def _is_image_file(path: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.parts[-2:])  # ._ copies, checkpoints
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not hidden


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _listed_path(line: str, base: Path) -> Path:
    """A list line's video: the whole line, or the path before its label (which may hold
    spaces: "clip 1.mp4 air drumming"), the longest such path that is there first."""
    text = line.strip()
    for end in [len(text), *(i for i in range(len(text) - 1, 0, -1) if text[i] == " ")]:
        if (base / text[:end].rstrip()).exists():
            return base / text[:end].rstrip()
    return base / split_path_and_label(text)[0]  # not there: named as training would read it


__all__ = [
    "Prediction",
    "VideoDecodeError",
    "explain_prediction",
    "list_videos",
    "predict",
    "summarise",
]
