"""Evaluation on original and frame-shuffled clips: top-1 / top-5 and their gap, per subset.

One function serves `eval`, `demo` and `diagnose`. A batch's video is [B, C, T, H, W] or, with
several test views (temporal clips x spatial crops), [B, V, C, T, H, W]; the views' logits are
aggregated per clip. Each clip's frames are shuffled with one permutation shared by its views.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from einops import rearrange, repeat
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from timematters.config import EvalConfig
from timematters.data.collate import BadVideo, BadVideoLog, collate_videos
from timematters.losses.shuffle import sample_frame_permutations, shuffle_frames


@dataclass
class EvalResult:
    """Per-clip outputs of one evaluation; metrics and diagnostics derive from them."""

    labels: np.ndarray  # [N]
    probs: np.ndarray  # [N, K] on the original clips (after view aggregation)
    shuffled_probs: np.ndarray  # [N, K] on the frame-shuffled clips
    classes: list[str]
    subsets: dict[str, list[int]] = field(default_factory=dict)
    bad: list[BadVideo] = field(default_factory=list)  # clips that could not be decoded, skipped
    indices: np.ndarray | None = None  # [N] each clip's dataset index (its position without one)

    def subset_masks(self) -> dict[str, np.ndarray]:
        masks = {"all": np.ones(len(self.labels), dtype=bool)}
        for name, class_ids in self.subsets.items():
            masks[name] = np.isin(self.labels, class_ids)
        return masks

    def metrics(self) -> dict[str, dict[str, float]]:
        """Accuracies in percent for all clips and each subset; ``num_clips`` were scored and
        ``num_bad`` could not be decoded (not scored)."""
        bad_labels = np.array([video.label for video in self.bad], dtype=np.int64)
        out = {}
        for name, mask in self.subset_masks().items():
            labels = self.labels[mask]
            top1, top5 = _topk(self.probs[mask], labels)
            s_top1, s_top5 = _topk(self.shuffled_probs[mask], labels)
            out[name] = {
                "top1": top1,
                "top5": top5,
                "shuffled_top1": s_top1,
                "shuffled_top5": s_top5,
                "gap": top1 - s_top1,
                "gap_top5": top5 - s_top5,
                "num_clips": int(mask.sum()),
                "num_bad": int(
                    len(bad_labels)
                    if name == "all"
                    else np.isin(bad_labels, self.subsets[name]).sum()
                ),
            }
        return out

    def check_bad(self, limit: float, path: Path | None = None) -> None:
        """Raise ``TooManyBadVideos`` when more than ``limit`` of the clips could not be decoded;
        with ``path``, write them there first as JSON lines (whatever their number)."""
        if not self.bad:
            return
        log = BadVideoLog(path)
        log.merge(self.bad)
        if path is not None:
            log.write()
        log.check(limit, total=len(self.labels) + len(self.bad))

    def table(self, name: str) -> str:
        """This result as one row of ``format_table``."""
        return format_table({name: self.metrics()})

    def confidence_gap(self) -> np.ndarray:
        """Per clip: confidence in the true class on the original minus on the shuffled clip (Fig. 1c)."""
        rows = np.arange(len(self.labels))
        return self.probs[rows, self.labels] - self.shuffled_probs[rows, self.labels]


def _topk(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    k = min(5, probs.shape[1])
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    hits = ranked == labels[:, None]
    return float(100.0 * hits[:, 0].mean()), float(100.0 * hits.any(axis=1).mean())


def _aggregate(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, V, K] view logits -> [B, K] probabilities."""
    if mode == "logits":
        return logits.float().mean(dim=1).softmax(dim=-1)  # same ranking as the released sum
    if mode == "softmax":
        return logits.float().softmax(dim=-1).mean(dim=1)
    raise ValueError(f"aggregation must be 'logits' or 'softmax', got {mode!r}")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    classes: list[str],
    subsets: dict[str, list[int]] | None = None,
    settings: EvalConfig | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> EvalResult:
    """Run ``model`` (video -> logits) on every clip, in order and frame-shuffled.

    loader: a DataLoader of our dict batches or of ``(video, label)`` pairs, or a dataset.
    settings: how clips are shuffled (``shuffle``, ``seed``) and views aggregated
        (``aggregation``); the ``eval`` section of the config.
    device: where the model runs (default: where its parameters are).
    """
    settings = settings or EvalConfig()
    loader = as_loader(loader, settings.batch_size)
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(settings.seed)
    labels, probs, shuffled_probs, bad, indices = [], [], [], [], []
    seen = 0
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        batch = as_batch(batch)
        bad += batch.get("dropped", [])
        if "video" not in batch:  # every clip of the batch failed to decode
            continue
        video = batch["video"].to(device, non_blocking=True)
        count = len(video)
        index = batch.get("index")
        indices.append(torch.as_tensor(index) if index is not None else torch.arange(count) + seen)
        seen += count
        if video.ndim == 5:
            video = video[:, None]  # one view
        B, V, _, T = video.shape[:4]
        views = rearrange(video, "b v c t h w -> (b v) c t h w")
        perms = sample_frame_permutations(B, T, settings.shuffle, generator)
        perms = repeat(perms, "b t -> (b v) t", v=V)
        with autocast:
            logits = model(views)
            shuffled_logits = model(shuffle_frames(views, perms=perms)[0])
        for out, view_logits in ((probs, logits), (shuffled_probs, shuffled_logits)):
            per_clip = rearrange(view_logits, "(b v) k -> b v k", b=B)
            out.append(_aggregate(per_clip, settings.aggregation).cpu())
        labels.append(torch.as_tensor(batch["label"]).cpu())
    model.train(was_training)

    K = len(classes)
    result = [
        torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
        torch.cat(probs).numpy() if probs else np.zeros((0, K), np.float32),
        torch.cat(shuffled_probs).numpy() if shuffled_probs else np.zeros((0, K), np.float32),
        torch.cat(indices).numpy() if indices else np.zeros(0, np.int64),
    ]
    if dist.is_initialized():  # each rank saw its own shard: gather them all
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (result, bad))
        result = [np.concatenate([g[0][i] for g in gathered]) for i in range(4)]
        bad = [video for g in gathered for video in g[1]]
    labels, probs, shuffled_probs, indices = result
    return EvalResult(
        labels,
        probs,
        shuffled_probs,
        classes=list(classes),
        subsets=dict(subsets or {}),
        bad=bad,
        indices=indices,
    )


def as_batch(batch: dict[str, Any] | tuple | list) -> dict[str, Any]:
    """A loader's batch as our dict: ``(video, label, ...)`` tuples become ``{"video", "label"}``."""
    if isinstance(batch, dict):
        return batch
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return {"video": batch[0], "label": torch.as_tensor(batch[1])}
    raise TypeError(
        f"a batch must be a dict with 'video' and 'label' or a (video, label) pair, got "
        f"{type(batch).__name__}"
    )


def as_loader(data: Any, batch_size: int = 32, num_workers: int = 0) -> Any:
    """A dataset (items: our dicts, or ``(video, label)`` pairs) as a loader; a loader or any
    iterable of batches as it is."""
    if isinstance(data, Dataset):
        return DataLoader(
            data, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_any
        )
    return data


def _collate_any(samples: list) -> dict[str, Any]:
    if samples and isinstance(samples[0], tuple | list):
        videos, labels = zip(*[(s[0], s[1]) for s in samples], strict=True)
        return {"video": torch.stack(list(videos)), "label": torch.as_tensor(labels)}
    return collate_videos(samples)


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table in the style of the paper's Table 3: a row per model, Original / Shuffled /
    Gap top-1 for each subset."""
    subsets = list(next(iter(rows.values())))
    header = "| model | " + " | ".join(
        f"{s} original ↑ | {s} shuffled ↓ | {s} gap ↑" for s in subsets
    )
    lines = [header + " |", "|" + " --- |" * (1 + 3 * len(subsets))]
    for name, metrics in rows.items():
        cells = []
        for s in subsets:
            m = metrics[s]
            cells += [f"{m['top1']:.1f}", f"{m['shuffled_top1']:.1f}", f"{m['gap']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
