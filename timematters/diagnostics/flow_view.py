"""`timematters flow`: the flow labels a config makes (paper Eq. 9-10), drawn over the clips.

What the flow loss will be asked to predict, before any training: for a few clips of the config's
dataset, as training sees them (the same sampling, augmentation and final crop; the first epoch's
draw), or for video files taken as at test time, each patch's direction class for every pair of
consecutive frames, with how much of each clip is "still" under the config's threshold
(``flow.threshold``, ``flow.relative_fraction``, ``flow.absolute_tau``) and Farnebäck parameters.
The labels drawn are the config's backend's: OpenCV's (the reference), or with
``flow.backend=torch`` the batched torch Farnebäck's on the training device, with the share of
patches where it gives OpenCV's class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timematters.config import Config, ConfigError, validate
from timematters.data.build import build_dataset, build_flow_labeller
from timematters.data.collate import BadVideo, TooManyBadVideos
from timematters.data.dataset import open_long_enough
from timematters.data.samplers import SeededSamples
from timematters.data.sampling import EvalClip
from timematters.data.text import counted
from timematters.data.transforms import EvalTransform
from timematters.data.video import VideoDecodeError
from timematters.diagnostics.predict import list_videos
from timematters.engine.distributed import resolve_device
from timematters.engine.metrics import to_json
from timematters.engine.model import model_flow_grid
from timematters.engine.runs import claim_folder
from timematters.flow.labels import NUM_FLOW_CLASSES


def view_flow_labels(
    cfg: Config,
    out: str | Path,
    *,
    videos: Sequence[str | Path] = (),
    split: str = "train",
    clips: int = 4,
    indices: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Draw the flow labels of the first ``clips`` of ``videos`` (files, folders or list files),
    or else of clips of ``cfg``'s ``split`` (``indices``, or the first ``clips``), to ``out``: a
    PNG per clip and ``flow_labels.json`` (the settings, and the share of each class per clip
    and over all). Returns what the JSON holds."""
    if cfg.data.dataset == "imagenet9":
        raise ConfigError("data.dataset=imagenet9 holds images: flow labels are for videos")
    validate(cfg)
    out = Path(out)
    # Another command's output is refused now; this command's earlier pictures go only once the
    # new ones are sure to be drawn (a bad --index must not cost them).
    claim = dict(kind="flow labels", overwrite=False, fix="choose another --out")
    claim_folder(out, **claim, remove=False)
    patch_size, frame_step = model_flow_grid(cfg, refuse_unsupported=True)
    labeller = build_flow_labeller(cfg, patch_size, frame_step)
    skipped: list[dict[str, str]] = []  # videos that could not be decoded: said, not drawn
    if videos:
        named = _files(cfg, videos, clips, skipped)
    else:
        named = _dataset_clips(cfg, split, clips, indices, skipped)

    from timematters.diagnostics import plots  # matplotlib, only when drawing

    claim_folder(out, **claim)
    out.mkdir(parents=True, exist_ok=True)
    # The labels training gets: OpenCV's in the loader, or the batched torch Farnebäck on the
    # training device, then said against OpenCV's (the reference) patch by patch.
    on_device = resolve_device(cfg.train.device) if cfg.flow.backend == "torch" else None
    views = []
    for k, (name, clip) in enumerate(named):
        reference = labeller(clip).numpy()
        labels, view = reference, {"clip": name, "picture": f"flow_{k}.png"}
        if on_device is not None:
            labels = labeller.batch(clip[None].to(on_device))[0].cpu().numpy()
            view["agreement_with_opencv"] = float((labels == reference).mean())
        share = np.bincount(labels.ravel(), minlength=NUM_FLOW_CLASSES) / labels.size
        # The frames the labels are between: each token frame's first (every frame, for TIME's).
        frames = plots.denormalise(clip.numpy(), cfg.data.mean, cfg.data.std)[::frame_step]
        title = f"{name}: {100 * share[0]:.0f}% of patches still"
        picture = out / f"flow_{k}.png"
        plots.plot_flow_labels(frames, labels, patch_size, picture, title, frame_step=frame_step)
        views.append({**view, "share": share.tolist()})
        agreement = view.get("agreement_with_opencv")
        said = (
            "" if agreement is None else f"; the same class as OpenCV's for {100 * agreement:.1f}%"
        )
        print(f"{name}: {_shares(share)}{said}", flush=True)
    for video in skipped:
        print(f"skipped {video['clip']}: {video['reason']}", flush=True)
    if not views:
        if skipped:  # the data's fault, not a mistake in the command: exit 1, as predict's
            raise TooManyBadVideos(
                f"no clip to label: none of {counted(len(skipped), 'video')} could be used "
                "(the reasons above)"
            )
        raise ValueError("no clip to label: none given")
    total = np.mean([view["share"] for view in views], axis=0)
    clips_said = f"{len(views)} clip{'s' if len(views) > 1 else ''}"
    agreements = [
        view["agreement_with_opencv"] for view in views if "agreement_with_opencv" in view
    ]
    said = f"; OpenCV's class for {100 * np.mean(agreements):.1f}%" if agreements else ""
    print(f"all {clips_said}: {_shares(total)}{said}")
    result = {
        "settings": {
            "backend": cfg.flow.backend,
            "device": str(on_device or "cpu"),
            "patch_size": patch_size,
            "frame_step": frame_step,
            "num_frames": cfg.model.num_frames,
            "crop_size": cfg.data.crop_size,
            "threshold": cfg.flow.threshold,
            "relative_fraction": cfg.flow.relative_fraction,
            "absolute_tau": cfg.flow.absolute_tau,
            "farneback": asdict(cfg.flow.farneback),
        },
        "share": total.tolist(),
        "clips": views,
        "skipped": skipped,
    }
    (out / "flow_labels.json").write_text(to_json(result))
    print(f"wrote a picture per clip (flow_0.png ...) and flow_labels.json to {out}")
    return result


def _shares(share: np.ndarray) -> str:
    """The class shares of some patches in words: still 61%, moving 39% (1: 5%, 2: 3%, ...)."""
    moving = ", ".join(f"{k}: {100 * s:.0f}%" for k, s in enumerate(share) if k and s)
    return f"still {100 * share[0]:.0f}%, moving {100 * (1 - share[0]):.0f}%" + (
        f" ({moving})" if moving else ""
    )


def _dataset_clips(
    cfg: Config, split: str, clips: int, indices: Sequence[int] | None, skipped: list[dict]
) -> list[tuple[str, torch.Tensor]]:
    """Clips of the config's split, [C, T, H, W]: a training clip as the first epoch draws its
    augmentation, a test clip's first view."""
    dataset = build_dataset(cfg, split)
    if split == "train":
        dataset = SeededSamples(dataset, cfg.train.seed)
    indices = list(indices) if indices else list(range(min(clips, len(dataset))))
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise ConfigError(f"--index {bad[0]}: the {split} split has clips 0 to {len(dataset) - 1}")
    named = []
    source = getattr(dataset, "dataset", dataset)
    for index in indices:
        item = dataset[index]
        if isinstance(item, BadVideo):
            skipped.append({"clip": item.path, "reason": item.reason})
            continue
        video = item["video"]
        clip = video[0] if video.ndim == 5 else video  # a test clip's views: the first
        label = source.classes[item["label"]] if "label" in item else ""
        named.append((f"{item.get('video_id', index)} ({label})", clip))
    return named


def _files(
    cfg: Config, videos: Sequence[str | Path], clips: int, skipped: list[dict]
) -> list[tuple[str, torch.Tensor]]:
    """The first ``clips`` videos that decode, as the config's test clips: its test frames
    (``data.sampling``), the short side resized as evaluation does (``data.eval_short_side``; the
    built-in benchmark's frames are at the crop size) and the centre crop of ``data.crop_size``."""
    transform = EvalTransform(
        crop_size=cfg.data.crop_size,
        short_side=EvalClip.of(cfg.data).short_side,
        num_crops=1,
        mean=cfg.data.mean,
        std=cfg.data.std,
    )
    paths = list_videos(videos, root=cfg.data.root)
    if len(paths) > clips:  # a folder of thousands: a picture each would be hundreds of MB
        print(f"drawing the first {clips} of {len(paths)} videos (--clips N for more)", flush=True)
    named, taken = [], EvalClip.of(cfg.data)
    for path in paths:
        if len(named) == clips:  # a video that cannot be decoded leaves its place to the next
            break
        try:
            # Shorter than the clip: refused as the dataset refuses it in training.
            reader = open_long_enough(path, cfg.data.decoder, cfg.model.num_frames)
            frames = reader.get_frames(taken.indices(reader.num_frames, cfg.model.num_frames))
        except VideoDecodeError as error:
            skipped.append({"clip": str(path), "reason": error.reason})
            continue
        clip = transform(frames)
        named.append((str(path), clip[0] if clip.ndim == 5 else clip))
    return named


__all__ = ["view_flow_labels"]
