"""Evaluation on original and perturbed clips: top-1 / top-5 and their gaps, per subset, with
confidence intervals.

One function serves `eval`, `demo`, `diagnose` and `predict`'s summaries. Each perturbation
(``eval.perturbations``; the paper's is ``shuffle``) runs every clip again with its frames
changed: ``shuffle`` (a random order, one permutation per clip shared by its views), ``reverse``
(the exact time reverse), ``freeze`` (the middle frame repeated), ``freeze_each`` (each frame in
turn repeated, probabilities averaged), ``local`` (neighbouring frames swapped). A batch's video
is [B, C, T, H, W] or, with several test views (temporal clips x spatial crops),
[B, V, C, T, H, W]; the views' logits are aggregated per clip.

Every accuracy and gap comes with a 95% bootstrap interval over clips (``statistics.py``); the
reverse test adds the flip rate when the classes come in time-reversed pairs; ``class_reliance``
gives the same per class.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from einops import rearrange, repeat
from torch import nn
from torch.utils.data import DataLoader, Dataset

from timematters.backbones.adapters.module import as_video_backbone
from timematters.backbones.normalisation import check_normalisation, given_normalisation
from timematters.backbones.protocol import check_clip_sizes, check_clips, model_name
from timematters.config import PERTURBATION_NAMES, EvalConfig, check_perturbations
from timematters.data.collate import BadVideo, collate_videos, list_bad_videos
from timematters.data.subsets import PAIRS_KEY
from timematters.engine.distributed import out_of_memory
from timematters.engine.statistics import bootstrap_interval, half_width
from timematters.losses.shuffle import perturbed_views, sample_frame_permutations
from timematters.progress import progress_bar

# How metric keys name each perturbation's clips: "shuffled_top1", "reversed_gap", ...
METRIC_PREFIX = {
    "shuffle": "shuffled",
    "reverse": "reversed",
    "freeze": "frozen",
    "freeze_each": "frozen_each",
    "local": "swapped",
}


def gap_key(perturbation: str, top: str = "") -> str:
    """The key of a perturbation's gap: the paper's shuffle gap is plain ``gap`` (``gap_top5``)."""
    suffix = f"_{top}" if top else ""
    return (
        f"gap{suffix}"
        if perturbation == "shuffle"
        else f"{METRIC_PREFIX[perturbation]}_gap{suffix}"
    )


@dataclass
class EvalResult:
    """Per-clip outputs of one evaluation; metrics and diagnostics derive from them."""

    labels: np.ndarray  # [N]
    probs: np.ndarray  # [N, K] on the original clips (after view aggregation)
    perturbed: dict[str, np.ndarray]  # perturbation -> [N, K] on the perturbed clips
    classes: list[str]
    subsets: dict[str, list[int]] = field(default_factory=dict)
    bad: list[BadVideo] = field(default_factory=list)  # clips that could not be decoded, skipped
    indices: np.ndarray | None = None  # [N] each clip's dataset index (its position without one)
    pairs: dict[int, int] = field(default_factory=dict)  # class -> its time-reversed partner
    bootstrap_samples: int = 1000
    seed: int = 0

    def subset_masks(self) -> dict[str, np.ndarray]:
        masks = {"all": np.ones(len(self.labels), dtype=bool)}
        for name, class_ids in self.subsets.items():
            masks[name] = np.isin(self.labels, class_ids)
        return masks

    def hits(self) -> dict[str, np.ndarray]:
        """Per clip, 1.0 or 0.0: ``top1``, ``top5`` and each perturbation's, under the keys of
        ``metrics``."""
        out = dict(zip(("top1", "top5"), _hits(self.probs, self.labels), strict=True))
        for name, probs in self.perturbed.items():
            prefix = METRIC_PREFIX[name]
            out[f"{prefix}_top1"], out[f"{prefix}_top5"] = _hits(probs, self.labels)
        return out

    def flips(self) -> np.ndarray | None:
        """Per clip of a paired class: 1.0 when reversing it moves the prediction to its
        partner class (and the original prediction was not the partner); NaN for unpaired. A clip
        with NaN logits, before or after, predicts no class: no flip (argmax would say class 0)."""
        if not self.pairs or "reverse" not in self.perturbed:
            return None
        partner = np.array([self.pairs.get(int(y), -1) for y in self.labels])
        reversed_probs = self.perturbed["reverse"]
        before, after = self.probs.argmax(axis=1), reversed_probs.argmax(axis=1)
        scored = np.isfinite(self.probs).all(axis=1) & np.isfinite(reversed_probs).all(axis=1)
        flipped = ((after == partner) & (before != partner) & scored).astype(np.float64)
        return np.where(partner >= 0, flipped, np.nan)

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per subset (``all`` and the dataset's): accuracies and gaps in percent, each with its
        95% interval (``<key>_ci``); ``num_clips`` were scored and ``num_bad`` could not be
        decoded; the flip rate (0 to 1) when pairs are known and ``reverse`` ran."""
        bad_labels = np.array([video.label for video in self.bad], dtype=np.int64)
        hits = self.hits()
        per_clip = dict(hits)
        for name in self.perturbed:
            prefix = METRIC_PREFIX[name]
            per_clip[gap_key(name)] = hits["top1"] - hits[f"{prefix}_top1"]
            per_clip[gap_key(name, "top5")] = hits["top5"] - hits[f"{prefix}_top5"]
        flips = self.flips()
        out = {}
        for subset, mask in self.subset_masks().items():
            keys = list(per_clip)
            values = np.stack([per_clip[k][mask] for k in keys]) * 100.0  # [metrics, n]
            means = values.mean(axis=1) if mask.any() else np.full(len(keys), np.nan)
            intervals = bootstrap_interval(values, samples=self.bootstrap_samples, seed=self.seed)
            row: dict[str, Any] = {}
            for key, mean, interval in zip(keys, means, intervals, strict=True):
                row[key] = float(mean)
                row[f"{key}_ci"] = [float(interval[0]), float(interval[1])]
            row["num_clips"] = int(mask.sum())
            row["num_bad"] = int(
                len(bad_labels)
                if subset == "all"
                else np.isin(bad_labels, self.subsets[subset]).sum()
            )
            if flips is not None:
                paired = mask & ~np.isnan(flips)
                row["flip_rate"] = float(flips[paired].mean()) if paired.any() else float("nan")
                interval = bootstrap_interval(
                    flips[paired], samples=self.bootstrap_samples, seed=self.seed
                )
                row["flip_rate_ci"] = [float(interval[0]), float(interval[1])]
                row["num_paired"] = int(paired.sum())
            out[subset] = row
        return out

    def class_reliance(self) -> list[dict[str, Any]]:
        """Per class: clips, top-1 and mean confidence in the true class on the original clips,
        and for each perturbation its top-1, gap, confidence and confidence gap; ranked by the
        first perturbation's gap (most reliant on time first)."""
        hits = self.hits()
        rows = np.arange(len(self.labels))
        confidence = self.probs[rows, self.labels]
        out = []
        for k, name in enumerate(self.classes):
            mask = self.labels == k
            if not mask.any():
                continue
            row = {
                "class": k,
                "name": name,
                "clips": int(mask.sum()),
                "top1": float(100 * hits["top1"][mask].mean()),
                "confidence": _finite_mean(confidence[mask]),
            }
            for perturbation, probs in self.perturbed.items():
                prefix = METRIC_PREFIX[perturbation]
                top1 = float(100 * hits[f"{prefix}_top1"][mask].mean())
                perturbed = probs[rows, self.labels][mask]
                row[f"{prefix}_top1"] = top1
                row[gap_key(perturbation)] = row["top1"] - top1
                row[f"{prefix}_confidence"] = _finite_mean(perturbed)
                # Per clip, as the histogram's: a clip NaN on either side is left out of both.
                row[f"{prefix}_confidence_gap"] = _finite_mean(confidence[mask] - perturbed)
            out.append(row)
        if self.perturbed:
            first = gap_key(next(iter(self.perturbed)))
            out.sort(key=lambda r: -r[first])
        return out

    def check_bad(self, limit: float, path: Path | None = None) -> None:
        """Raise ``TooManyBadVideos`` when more than ``limit`` of the clips could not be decoded;
        with ``path``, write them there first as JSON lines (whatever their number)."""
        if self.bad:
            list_bad_videos(self.bad, path).check(limit, total=len(self.labels) + len(self.bad))

    def table(self, name: str) -> str:
        """This result as one row of ``format_table``."""
        return format_table({name: self.metrics()})

    def confidence_gap(self, perturbation: str = "shuffle") -> np.ndarray:
        """Per clip: confidence in the true class on the original minus on the perturbed clip
        (Fig. 1c with ``shuffle``)."""
        if perturbation not in self.perturbed:
            raise ValueError(
                f"no {perturbation} in this evaluation (it scored "
                f"{', '.join(self.perturbed) or 'the original clips only'}): add it to "
                "eval.perturbations"
            )
        rows = np.arange(len(self.labels))
        return self.probs[rows, self.labels] - self.perturbed[perturbation][rows, self.labels]


def _finite_mean(values: np.ndarray) -> float:
    """The mean of the finite values (NaN when none is): a clip with NaN logits has no
    confidence, as it has no confidence gap, while its accuracy counts a miss."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _hits(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per clip, float 1/0: the true class ranked first, and among the first five."""
    if len(labels) == 0:
        return np.zeros(0), np.zeros(0)
    k = min(5, probs.shape[1])
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    # A clip whose probabilities are not finite (NaN logits) ranks no class: a miss, where the
    # sort would put its class 0 first.
    found = (ranked == labels[:, None]) & np.isfinite(probs).all(axis=1, keepdims=True)
    return found[:, 0].astype(np.float64), found.any(axis=1).astype(np.float64)


def aggregate_views(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, V, K] view logits -> [B, K] probabilities."""
    # In float64: float32's softmax rounds every class a logit margin of about 100 below the top
    # one to exactly 0, which top-5 would then rank by class index.
    if mode == "logits":
        return logits.double().mean(dim=1).softmax(dim=-1)  # same ranking as the released sum
    if mode == "softmax":
        return logits.double().softmax(dim=-1).mean(dim=1)
    raise ValueError(f"aggregation must be 'logits' or 'softmax', got {mode!r}")


def evaluate(
    model: nn.Module,
    loader,
    *,
    classes: list[str] | None = None,
    subsets: dict[str, list[int]] | None = None,
    settings: EvalConfig | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> EvalResult:
    """Run ``model`` (video -> logits) on every clip, as it is and under each perturbation.

    loader: a DataLoader of our dict batches or of ``(video, label)`` pairs, or a dataset; clips
        are float ``[B, C, T, H, W]`` (or ``[B, V, C, T, H, W]`` with V views), normalised as the
        model's input expects (mean = std = 0.5 for ours and the adapters, by default).
    classes: the class names (default: the dataset's, else the model's own, else "0".."K-1");
        a zero-shot video-text model (X-CLIP) is given them, as the texts it scores.
    subsets: name -> class indices or names (default: the dataset's ``subsets``). The
        dataset's ``pairs`` (class -> its time-reversed partner) give the reverse test's flip
        rate; ``subsets["pairs"]``, ``[[a, b], ...]`` as in a subsets file, replaces them.
    settings: the ``eval`` section of the config: the perturbations, how clips are shuffled
        (``shuffle``, ``seed``), how views are aggregated, the bootstrap's resamples.
    device: where the model runs (default: where its parameters are).

    Clips normalised otherwise than the model was told (ImageNet's, say): evaluate inside
    ``with clips_normalised({"name": model}, mean, std):`` (``timematters.backbones``), which
    tells the model for the block only.
    """
    return evaluate_models(
        [model],
        loader,
        classes=classes,
        subsets=subsets,
        settings=settings,
        device=device,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )[0]


@torch.no_grad()
def evaluate_models(
    models: list[nn.Module],
    loader,
    *,
    classes: list[str] | None = None,
    subsets: dict[str, list[int]] | None = None,
    settings: EvalConfig | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> list[EvalResult]:
    """``evaluate`` of each of ``models`` in one pass over the clips: every batch is read (decoded,
    on a video dataset) once and scored by all of them, under the same perturbations. On a GPU,
    decoding is most of a video evaluation's time; comparing N models then costs one pass, not N.
    """
    if not models:
        raise ValueError("evaluate_models needs at least one model")
    settings = settings or EvalConfig()
    check_perturbations(settings.perturbations, where="eval.perturbations")
    # A module that returns an object with .logits, or a transformers / torchvision model given
    # as an object, is scored as diagnose scores it.
    models = [as_video_backbone(model, source=type(model).__name__) for model in models]
    for model in models:  # one that cannot convert the clips is refused, as diagnose refuses it
        name = model_name(model)
        check_normalisation(model, *given_normalisation(), name=name)
    loader = as_loader(loader, settings.batch_size)
    dataset = getattr(loader, "dataset", None)
    classes = classes or getattr(dataset, "classes", None)
    for model in models:
        _give_zero_shot_classes(model, classes)
    subsets = getattr(dataset, "subsets", {}) if subsets is None else subsets
    scores = [_Scores(model, device, settings.perturbations) for model in models]
    shuffles = _ClipPermutations(settings.shuffle, settings.seed)
    labels, bad, indices = [], [], []
    seen, count, V = 0, settings.batch_size, 1
    autocast = (
        torch.autocast(scores[0].device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    try:  # an error (a batch in another layout, say) hands the models back in their mode too
        for batch in progress_bar(loader, desc="eval", leave=False, disable=not progress):
            batch = as_batch(batch)
            bad += batch.get("dropped", [])
            if "video" not in batch:  # every clip of the batch failed to decode
                continue
            video = batch["video"]
            # Their values on the first batch only: pixels left in [0, 255] show there, and the
            # pass over every CPU batch would hold up a GPU evaluation.
            check_clips(video, views=True, values=not indices)
            count = len(video)
            index = batch.get("index")
            index = torch.as_tensor(index) if index is not None else torch.arange(count) + seen
            indices.append(index)
            seen += count
            if video.ndim == 5:
                video = video[:, None]  # one view
            B, V, _, T = video.shape[:4]
            views = rearrange(video, "b v c t h w -> (b v) c t h w")
            # One frame order per clip, drawn by its index: every model sees the same shuffle.
            perms = (
                shuffles.of(index, num_frames=T) if "shuffle" in settings.perturbations else None
            )
            label = _as_labels(batch["label"]).cpu()
            for score in scores:
                score.add(
                    views,
                    label,
                    perms=perms,
                    classes=classes,
                    settings=settings,
                    clips_in_batch=B,
                    views_per_clip=V,
                    autocast=autocast,
                )
            labels.append(label)
    except torch.cuda.OutOfMemoryError as error:
        clips = f"{count} clips" + (f" of {V} views" if V > 1 else "") + " a batch"
        fix = f"set eval.batch_size={max(1, count // 2)} (in Python: a loader of smaller batches)"
        raise out_of_memory(error, f"in evaluation ({clips})", fix) from None
    finally:
        for score in scores:
            score.model.train(score.was_training)
    return [
        score.result(
            labels,
            indices,
            bad,
            classes=classes,
            subsets=subsets,
            pairs=getattr(dataset, "pairs", {}),
            settings=settings,
        )
        for score in scores
    ]


def _give_zero_shot_classes(model: nn.Module, classes: list[str] | None) -> None:
    """A zero-shot video-text model (X-CLIP) scores the classes it is given as text: those of
    the data (``classes=``, a dataset's), as the command line does. It keeps them afterwards, so
    that diagnose's probe and GradCAM score the same ones."""
    if not getattr(model, "zero_shot", False) or not classes:
        return  # without classes, one it was not given refuses in its forward, with the fix
    if list(classes) != list(model.class_names or []):
        model.set_class_names(list(classes), prompt=model.prompt)


class _Scores:
    """One model's probabilities on the clips of an evaluation, batch by batch."""

    def __init__(self, model: nn.Module, device: torch.device | None, perturbations) -> None:
        self.model = model
        self.device = device or next(model.parameters(), torch.empty(0)).device
        self.was_training = model.training
        model.eval()
        self.probs: list[torch.Tensor] = []
        self.perturbed: dict[str, list[torch.Tensor]] = {name: [] for name in perturbations}

    def add(
        self,
        views: torch.Tensor,
        label: torch.Tensor,
        *,
        perms: torch.Tensor | None,
        classes: list[str] | None,
        settings: EvalConfig,
        clips_in_batch: int,
        views_per_clip: int,
        autocast,
    ) -> None:
        model = self.model
        views = views.to(self.device, non_blocking=True)
        if not self.probs:
            check_clip_sizes(model, views)
        options = dict(
            clips_in_batch=clips_in_batch, aggregation=settings.aggregation, autocast=autocast
        )
        self.probs.append(_clip_probs(model, views, **options))
        if classes and len(self.probs) == 1 and self.probs[0].shape[1] != len(classes):
            # Scored anyway, the extra outputs would only count as wrong answers, without a word.
            raise ValueError(
                f"{getattr(model, 'source', '') or type(model).__name__} gives "
                f"{self.probs[0].shape[1]} outputs but the data has {len(classes)} classes: give "
                "a model trained on these classes, or data labelled in the model's"
            )
        for name, outputs in self.perturbed.items():
            outputs.append(
                _perturbed_probs(
                    model,
                    views,
                    name,
                    perms=perms if name == "shuffle" else None,
                    views_per_clip=views_per_clip,
                    freeze_frame=settings.freeze_frame,
                    **options,
                )
            )
        _check_labels(label, outputs=self.probs[-1].shape[1])

    def result(
        self,
        labels: list[torch.Tensor],
        indices: list[torch.Tensor],
        bad: list[BadVideo],
        *,
        classes: list[str] | None,
        subsets: dict[str, list],
        pairs: dict[int, int],
        settings: EvalConfig,
    ) -> EvalResult:
        """The evaluation's result: every process's clips, in dataset order."""
        if not classes:
            K = self.probs[0].shape[1] if self.probs else getattr(self.model, "num_classes", 0)
            classes = getattr(self.model, "class_names", None) or [str(k) for k in range(K)]
        K = len(classes)
        empty = np.zeros((0, K), np.float32)
        arrays = {
            "labels": torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
            "indices": torch.cat(indices).numpy() if indices else np.zeros(0, np.int64),
            "probs": torch.cat(self.probs).numpy() if self.probs else empty,
            **{name: torch.cat(p).numpy() if p else empty for name, p in self.perturbed.items()},
        }
        if dist.is_initialized():  # each rank saw its own shard: gather them all
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (arrays, bad))
            arrays = {key: np.concatenate([g[0][key] for g in gathered]) for key in arrays}
            bad = [video for g in gathered for video in g[1]]
        # In dataset order, however the clips were split across processes: the bootstrap
        # resamples the same clips in the same order for any number of them.
        order = np.argsort(arrays["indices"], kind="stable")
        arrays = {key: value[order] for key, value in arrays.items()}
        self._warn_non_finite(arrays, settings.perturbations)
        subsets = dict(subsets or {})
        given_pairs = subsets.pop(PAIRS_KEY, None)  # as a subsets file gives them
        return EvalResult(
            arrays["labels"],
            arrays["probs"],
            {name: arrays[name] for name in settings.perturbations},
            classes=list(classes),
            subsets=_subset_indices(subsets, classes),
            bad=list(bad),
            indices=arrays["indices"],
            pairs=dict(pairs or {}) if given_pairs is None else _pair_indices(given_pairs, classes),
            bootstrap_samples=settings.bootstrap_samples,
            seed=settings.seed,
        )

    def _warn_non_finite(self, arrays: dict[str, np.ndarray], perturbations) -> None:
        counts = {
            name: int((~np.isfinite(arrays[key]).all(axis=1)).sum())
            for name, key in (("original", "probs"), *((p, p) for p in perturbations))
        }
        counts = {name: count for name, count in counts.items() if count}
        if counts:
            where = ", ".join(f"{count} {name}" for name, count in counts.items())
            name = getattr(self.model, "source", "") or type(self.model).__name__
            logging.getLogger(__name__).warning(
                "%s gave non-finite logits on %s of %d clips: counted as misses",
                name,
                where,
                len(arrays["labels"]),
            )


class _ClipPermutations:
    """The shuffle test's frame orders: with ``per_sample`` (the default), clip ``i`` of the
    dataset gets the ``i``-th permutation of one seeded stream, so its shuffle is the same however
    the clips are batched or split across processes (the stream is drawn sequentially, as far
    as the largest index seen). ``per_batch`` draws one per batch, in the order batches come."""

    def __init__(self, mode: str, seed: int):
        self.mode = mode
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn: list[torch.Tensor] = []

    def of(self, index: torch.Tensor, *, num_frames: int) -> torch.Tensor:
        if self.mode != "per_sample":
            return sample_frame_permutations(len(index), num_frames, self.mode, self.generator)
        needed = int(index.max()) + 1 if len(index) else 0
        if needed > len(self.drawn):
            more = sample_frame_permutations(
                needed - len(self.drawn), num_frames, self.mode, self.generator
            )
            self.drawn.extend(more)
        return torch.stack([self.drawn[i] for i in index.tolist()])


def _perturbed_probs(
    model: nn.Module,
    views: torch.Tensor,
    name: str,
    *,
    perms: torch.Tensor | None,
    views_per_clip: int,
    freeze_frame: int | None,
    **options,
) -> torch.Tensor:
    """The model's probabilities per clip on perturbation ``name`` of its ``views``; ``perms``:
    the shuffle's frame order per clip, shared by its views."""
    if perms is not None:
        perms = repeat(perms, "b t -> (b v) t", v=views_per_clip)
    perturbed = perturbed_views(views, name, perms=perms, freeze_frame=freeze_frame)
    return torch.stack([_clip_probs(model, batch, **options) for batch in perturbed]).mean(dim=0)


def _check_labels(label: torch.Tensor, *, outputs: int) -> None:
    """Labels a model of ``outputs`` classes can be scored on: 0-based class indices (scored
    anyway, a label past the outputs would only count as a wrong answer, without a word)."""
    if label.dtype.is_floating_point or label.ndim != 1:
        raise ValueError(
            f"labels must be [B] class indices (int), got {label.dtype} {list(label.shape)}"
        )
    if len(label) and (label.min() < 0 or label.max() >= outputs):
        wrong = label.max().item() if label.max() >= outputs else label.min().item()
        raise ValueError(
            f"label {wrong} but the model has {outputs} outputs: labels are 0-based class "
            f"indices, 0 to {outputs - 1}"
        )


def _subset_indices(subsets: dict[str, list], classes: list[str]) -> dict[str, list[int]]:
    """Each subset's class indices; class names (strings) are looked up in ``classes``."""
    out = {}
    for name, members in subsets.items():
        unknown = [m for m in members if isinstance(m, str) and m not in classes]
        if unknown:
            raise ValueError(
                f"subset {name!r}: {', '.join(map(repr, unknown[:5]))} not among the classes "
                f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
            )
        outside = [m for m in members if not isinstance(m, str) and not 0 <= int(m) < len(classes)]
        if outside:  # its row would be empty, NaN, with nothing said
            raise ValueError(
                f"subset {name!r}: class {outside[0]} is not one of the {len(classes)} classes "
                f"(0 to {len(classes) - 1})"
            )
        out[name] = [classes.index(m) if isinstance(m, str) else int(m) for m in members]
    return out


def _pair_indices(pairs: Any, classes: list[str]) -> dict[int, int]:
    """Time-reversed class pairs, ``[[a, b], ...]`` of names or indices as a subsets file's
    ``pairs``, or class -> partner as a dataset's: class index -> its partner, both ways."""
    items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    out = {}
    for pair in items:
        if isinstance(pair, str) or not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(
                f"subsets['pairs']: {pair!r} is not a pair of classes; give [[a, b], ...], each "
                "two class names or indices that are each other's time reverse"
            )
        a, b = _subset_indices({PAIRS_KEY: list(pair)}, classes)[PAIRS_KEY]
        out[a], out[b] = b, a
    return out


def _clip_probs(
    model: nn.Module, views: torch.Tensor, *, clips_in_batch: int, aggregation: str, autocast
) -> torch.Tensor:
    """The model's probabilities per clip, its views' logits aggregated: [B, K] on the CPU."""
    with autocast:
        logits = model(views)
    per_clip = rearrange(logits, "(b v) k -> b v k", b=clips_in_batch)
    return aggregate_views(per_clip, aggregation).cpu()


def as_batch(batch: dict[str, Any] | tuple | list) -> dict[str, Any]:
    """A loader's batch as our dict: ``(video, label, ...)`` tuples become ``{"video", "label"}``."""
    if isinstance(batch, dict):
        return batch
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return {"video": batch[0], "label": _as_labels(batch[1])}
    raise TypeError(
        f"a batch must be a dict with 'video' and 'label' or a (video, label) pair, got "
        f"{type(batch).__name__}"
    )


def _as_labels(labels: Any) -> torch.Tensor:
    """A batch's labels as a tensor of class indices; class names are refused with the mapping
    (torch would say only "too many dimensions 'str'")."""
    if isinstance(labels, torch.Tensor):
        return labels
    items = [labels] if isinstance(labels, str) else labels
    if isinstance(items, np.ndarray):
        items = items.ravel().tolist() if items.dtype.kind in "USO" else []
    elif not isinstance(items, list | tuple):
        items = []
    name = next((x for x in items if isinstance(x, str)), None)
    if name is not None:
        raise ValueError(
            f"labels are 0-based class indices, got the name {name!r}: map names to indices, "
            "e.g. [classes.index(name) for name in names], and give classes=classes"
        )
    return torch.as_tensor(labels)


def as_loader(data: Any, batch_size: int = 32, num_workers: int = 0) -> Any:
    """A dataset (items: our dicts, or ``(video, label)`` pairs) as a loader; a loader or any
    iterable of batches as it is."""
    if isinstance(data, Dataset):
        return DataLoader(
            data, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_any
        )
    one_batch = isinstance(data, dict) or (
        isinstance(data, tuple) and bool(data) and isinstance(data[0], torch.Tensor)
    )
    if one_batch:  # iterating it would give its keys, or its videos one by one
        raise TypeError("data is one batch: give a list of batches, [batch], or a DataLoader")
    return data


def _collate_any(samples: list) -> dict[str, Any]:
    if samples and isinstance(samples[0], tuple | list):
        videos, labels = zip(*[(s[0], s[1]) for s in samples], strict=True)
        return {"video": torch.stack(list(videos)), "label": _as_labels(labels)}
    return collate_videos(samples)


def format_table(rows: dict[str, dict[str, dict[str, Any]]], *, intervals: bool = False) -> str:
    """Markdown tables in the style of the paper's Table 3: a row per model, original /
    perturbed / gap top-1 for each subset; one table per perturbation (the shuffle test alone
    gives the paper's single table). ``intervals`` adds each figure's 95% half-width
    (``36.7 ± 4.1``)."""
    first = next(iter(rows.values()))
    subsets = list(first)
    perturbations = [p for p in PERTURBATION_NAMES if gap_key(p) in first[subsets[0]]]

    def cell(metrics: dict[str, Any], key: str) -> str:
        text, interval = f"{metrics[key]:.1f}", metrics.get(f"{key}_ci")
        if intervals and interval is not None and np.isfinite(interval).all():
            text += f" ± {half_width(interval):.1f}"
        return text

    def table(columns: list[tuple[str, str]]) -> str:
        """One row per model; ``columns``: (header, metric key), repeated for each subset."""
        header = ["model", *(f"{s} {title}" for s in subsets for title, _ in columns)]
        body = [
            [name, *(cell(metrics[s], key) for s in subsets for _, key in columns)]
            for name, metrics in rows.items()
        ]
        return markdown_table(header, body)

    if not perturbations:  # scored as they are only (one-frame images: nothing to perturb)
        return table([("top-1 ↑", "top1"), ("top-5 ↑", "top5")])
    tables = []
    for perturbation in perturbations:
        prefix = METRIC_PREFIX[perturbation]
        text = table(
            [
                ("original ↑", "top1"),
                (f"{prefix} ↓", f"{prefix}_top1"),
                ("gap ↑", gap_key(perturbation)),
            ]
        )
        if len(perturbations) > 1:
            text = f"**{perturbation}** (top-1, %)\n\n{text}"
        tables.append(text)
    return "\n\n".join(tables)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of ``header`` and ``rows`` of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


# Fewer clips in a subset than this get an interval but no verdict on two models' gaps.
MIN_VERDICT_CLIPS = 20


def compare_gaps(reference: EvalResult, other: EvalResult) -> dict[str, dict[str, dict]]:
    """Per subset and perturbation: ``other``'s gap minus ``reference``'s, with a paired 95%
    interval (both models' outcomes on the same clip resampled together) and whether it lies
    outside the noise (the interval excludes 0; None without an interval). Both results must
    cover the same clips."""
    if not np.array_equal(reference.labels, other.labels):
        raise ValueError("compare_gaps needs two evaluations of the same clips, in the same order")
    ref_hits, other_hits = reference.hits(), other.hits()
    out: dict[str, dict[str, dict]] = {}
    for subset, mask in reference.subset_masks().items():
        out[subset] = {}
        for perturbation in reference.perturbed:
            if perturbation not in other.perturbed:
                continue
            key = f"{METRIC_PREFIX[perturbation]}_top1"
            ref_gap = ref_hits["top1"] - ref_hits[key]
            other_gap = other_hits["top1"] - other_hits[key]
            difference = (other_gap - ref_gap)[mask] * 100.0
            interval = bootstrap_interval(
                difference, samples=reference.bootstrap_samples, seed=reference.seed
            )
            # No interval (eval.bootstrap_samples=0, or no clips): no verdict, where a NaN bound
            # would read as "inside the noise". Nor on a few clips, where the percentile
            # bootstrap's interval is too narrow (3 clips all alike: a width of 0).
            verdict = bool(interval[0] > 0 or interval[1] < 0)
            judged = np.isfinite(interval).all() and mask.sum() >= MIN_VERDICT_CLIPS
            out[subset][perturbation] = {
                "difference": float(difference.mean()) if mask.any() else float("nan"),
                "ci": [float(interval[0]), float(interval[1])],
                "outside_noise": verdict if judged else None,
            }
    return out
