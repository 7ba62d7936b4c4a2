"""The Backgrounds Challenge evaluation (paper Table 4): top-1 per ImageNet-9 test variation and
BG-Gap = acc(mixed_same) - acc(mixed_rand), how much a background of another class costs when the
foreground stays.

Every variation folder runs through the one evaluation (``evaluate.py``), without its
perturbations: images have one frame, whose shuffle is the identity. An image that cannot be
decoded is not scored; it is listed, and each variation's share of them is held to
``data.max_bad_fraction``, as a video evaluation's (each row of the table is its own accuracy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from timematters.backbones.normalisation import clips_normalised
from timematters.config import Config, ConfigError
from timematters.data.build import build_eval_loader, build_variation_dataset
from timematters.data.collate import BadVideo, check_bad_share, list_bad_videos
from timematters.data.imagenet9 import layout_hint, read_class_folders
from timematters.engine.distributed import autocast_dtype, is_main_process, resolve_device
from timematters.engine.evaluate import evaluate, markdown_table

log = logging.getLogger(__name__)


def bg_gap(accuracy: dict[str, float]) -> float:
    """BG-Gap (Table 4): top-1 on mixed_same minus top-1 on mixed_rand, in points."""
    return accuracy["mixed_same"] - accuracy["mixed_rand"]


@dataclass
class BackgroundsResult:
    """Top-1 per ImageNet-9 variation and BG-Gap (Table 4), shaped like an ``EvalResult``."""

    accuracy: dict[str, float]
    bad: list[BadVideo] = field(default_factory=list)  # images no variation could decode
    # Per variation: (images scored, images that could not be decoded).
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return dict(self.accuracy)

    def check_bad(self, limit: float, path: Path | None = None) -> None:
        """Raise ``TooManyBadVideos`` when more than ``limit`` of a variation's images could not
        be decoded; with ``path``, list them there first as JSON lines (whatever their number)."""
        if not self.bad:
            return
        list_bad_videos(self.bad, path)
        for variation, (scored, bad) in self.counts.items():
            what = f"{variation} images"
            check_bad_share(bad, scored + bad, limit, listed=path, what=what)

    def table(self, name: str) -> str:
        return format_backgrounds_table({name: self.accuracy})


def evaluate_backgrounds(
    model: nn.Module,
    cfg: Config,
    classes: list[str],
    device: torch.device | str = "cpu",
    variations: tuple[str, ...] | None = None,
) -> BackgroundsResult:
    """Top-1 (%) of ``model`` on each variation (``data.imagenet9.variations``), and BG-Gap."""
    device = torch.device(device)
    variations = tuple(variations or cfg.data.imagenet9.variations)
    accuracy, bad, counts = {}, [], {}
    # One frame has no order to perturb: each image is scored once, as it is.
    original_only = replace(cfg.eval, perturbations=())
    # Under torchrun each process scores its share; evaluate gathers them.
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with clips_normalised({"the model": model}, cfg.data.mean, cfg.data.std):
        for variation in variations:
            dataset = build_variation_dataset(cfg.data, variation, classes)
            loader = build_eval_loader(cfg, dataset, rank=rank, world_size=world)
            result = evaluate(
                model,
                loader,
                classes=classes,
                settings=original_only,
                device=device,
                # in the run's precision, as its eval.json's original top-1
                autocast_dtype=autocast_dtype(cfg.train.precision, device),
            )
            accuracy[variation] = result.metrics()["all"]["top1"]
            bad += result.bad
            counts[variation] = (len(result.labels), len(result.bad))
    if {"mixed_same", "mixed_rand"} <= set(accuracy):
        accuracy["bg_gap"] = bg_gap(accuracy)
    totals = {variation: scored + unread for variation, (scored, unread) in counts.items()}
    if len(set(totals.values())) > 1 and rank == 0:
        listed = ", ".join(f"{variation} {total}" for variation, total in totals.items())
        log.warning(
            f"the ImageNet-9 variations hold different numbers of images ({listed}): their "
            "top-1 and BG-Gap compare different images (the release has 4,185 in each: a partial "
            "download or extraction?)"
        )
    return BackgroundsResult(accuracy, bad=bad, counts=counts)


def evaluate_backgrounds_checkpoint(
    cfg: Config, checkpoint: str | Path, device: torch.device | str | None = None
) -> BackgroundsResult:
    """``evaluate_backgrounds`` for a saved run (``checkpoints/last.pth`` of ``train``) or any
    model spec, on the variations under ``data.root``; the device defaults to ``train.device``
    ("auto": CUDA when available)."""
    from timematters.engine.model import load_model

    present, absent = present_variations(cfg)
    if not present:
        first = Path(cfg.data.root) / absent[0] / "val"
        raise FileNotFoundError(
            f"no ImageNet-9 test variation under data.root={cfg.data.root}: expected "
            f"<variation>/val/<NN_class>/ folders for {', '.join(absent)}{layout_hint(first)}"
        )
    if absent and is_main_process():  # as a run's own Table 4: the variations there
        print(f"[eval] {absent_variations_note(cfg, absent)}")
    folders = read_class_folders(Path(cfg.data.root) / present[0] / "val")
    model = load_model(checkpoint, cfg, untrained_classes=len(folders))
    classes = list(model.class_names or folders)  # unnamed: the folders name them
    if device is None:
        device = resolve_device(cfg.train.device)
    return evaluate_backgrounds(model.to(device), cfg, classes, device, variations=tuple(present))


# The Backgrounds Challenge's test variations, in the order of its table.
VARIATIONS = (
    "original",
    "only_bg_b",
    "only_bg_t",
    "no_fg",
    "only_fg",
    "mixed_same",
    "mixed_rand",
    "mixed_next",
)
_ROW_NAMES = {
    "original": "Original ↑",
    "only_fg": "Only-FG ↑",
    "no_fg": "No-FG",
    "only_bg_b": "Only-BG-B",
    "only_bg_t": "Only-BG-T",
    "mixed_same": "Mixed-Same ↑",
    "mixed_rand": "Mixed-Rand ↑",
    "mixed_next": "Mixed-Next ↑",
    "bg_gap": "BG-Gap ↓",
}


def present_variations(cfg: Config) -> tuple[list[str], list[str]]:
    """(the test variations under ``data.root``, the configured ones that are not there). A name
    that is neither one of the challenge's variations nor a folder there is refused: a typo
    (``Mixed-Same``) would otherwise only drop its row."""
    root = Path(cfg.data.root)
    variations = list(cfg.data.imagenet9.variations)
    present = [v for v in variations if (root / v / "val").is_dir()]
    absent = [v for v in variations if v not in present]
    unknown = [v for v in absent if v not in VARIATIONS]
    if unknown:
        raise ConfigError(
            f"data.imagenet9.variations: {', '.join(unknown)} is no Backgrounds Challenge "
            f"variation and has no {root / unknown[0] / 'val'} folder; the variations are "
            f"{', '.join(VARIATIONS)}"
        )
    return present, absent


def absent_variations_note(cfg: Config, absent: list[str]) -> str:
    """What a Table 4 without ``absent`` lacks, and how to ask only for the variations there."""
    root = Path(cfg.data.root)
    lacks = " (so no BG-Gap)" if {"mixed_same", "mixed_rand"} & set(absent) else ""
    present = [v for v in cfg.data.imagenet9.variations if v not in absent]
    return (
        f"Table 4 without {', '.join(absent)}: no {root / absent[0] / 'val'}{lacks}; to score "
        f"only the variations there, set data.imagenet9.variations=[{', '.join(present)}]"
    )


def format_backgrounds_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown in the layout of the paper's Table 4: a row per variation (and BG-Gap), a column per
    model; later columns show their difference to the first in brackets, and a variation a
    model was not scored on shows a dash."""
    names = list(columns)
    first = columns[names[0]]
    rows = list(dict.fromkeys(row for column in columns.values() for row in column))
    rows.sort(key=lambda row: row == "bg_gap")  # stable: the variations as they come, then it

    def cell(name: str, row: str) -> str:
        value = columns[name].get(row)
        if value is None:
            return "—"
        if name == names[0] or row not in first:
            return f"{value:.1f}"
        return f"{value:.1f} ({value - first[row]:+.1f})"

    body = [[_ROW_NAMES.get(row, row), *(cell(name, row) for name in names)] for row in rows]
    return markdown_table(["Dataset", *names], body)
