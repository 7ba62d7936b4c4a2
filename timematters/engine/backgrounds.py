"""The Backgrounds Challenge evaluation (paper Table 4): top-1 per ImageNet-9 test variation and
BG-Gap = acc(mixed_same) - acc(mixed_rand), how much a background of another class costs when the
foreground stays.

Every variation folder runs through the one evaluation (``evaluate.py``), without its
perturbations: images have one frame, whose shuffle is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from timematters.config import Config
from timematters.data.build import build_variation_dataset, loader_workers
from timematters.data.collate import collate_videos
from timematters.data.imagenet9 import read_class_folders
from timematters.data.samplers import Shard
from timematters.engine.evaluate import evaluate


def bg_gap(accuracy: dict[str, float]) -> float:
    """BG-Gap (Table 4): top-1 on mixed_same minus top-1 on mixed_rand, in points."""
    return accuracy["mixed_same"] - accuracy["mixed_rand"]


@dataclass
class BackgroundsResult:
    """Top-1 per ImageNet-9 variation and BG-Gap (Table 4), shaped like an ``EvalResult``."""

    accuracy: dict[str, float]

    def metrics(self) -> dict[str, float]:
        return dict(self.accuracy)

    def table(self, name: str) -> str:
        return format_backgrounds_table({name: self.accuracy})


def evaluate_backgrounds(
    model: nn.Module,
    cfg: Config,
    classes: list[str],
    device: torch.device | str = "cpu",
    variations: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """Top-1 (%) of ``model`` on each variation (``data.imagenet9.variations``), and BG-Gap."""
    device = torch.device(device)
    variations = tuple(variations or cfg.data.imagenet9.variations)
    accuracy = {}
    # One frame has no order to perturb: each image is scored once, as it is.
    original_only = replace(cfg.eval, perturbations=())
    for variation in variations:
        dataset = build_variation_dataset(cfg.data, variation, classes)
        # Under torchrun each process scores its share; evaluate gathers them.
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        loader = DataLoader(
            dataset,
            batch_size=cfg.eval.batch_size,
            sampler=Shard(len(dataset), rank, world),
            num_workers=loader_workers(cfg.data.num_workers),
            collate_fn=collate_videos,
        )
        result = evaluate(model, loader, classes=classes, settings=original_only, device=device)
        accuracy[variation] = result.metrics()["all"]["top1"]
    if {"mixed_same", "mixed_rand"} <= set(accuracy):
        accuracy["bg_gap"] = bg_gap(accuracy)
    return accuracy


def evaluate_backgrounds_checkpoint(
    cfg: Config, checkpoint: str | Path, device: torch.device | str | None = None
) -> dict[str, float]:
    """``evaluate_backgrounds`` for a saved run (``checkpoints/last.pth`` of ``train``) or any
    model spec, on the variations under ``data.root``; the device defaults to ``train.device``
    ("auto": CUDA when available)."""
    from timematters.engine.distributed import is_main_process, resolve_device
    from timematters.engine.model import load_model

    present, absent = present_variations(cfg)
    if not present:
        raise FileNotFoundError(
            f"no ImageNet-9 test variation under data.root={cfg.data.root}: expected "
            f"<variation>/val/<NN_class>/ folders for {', '.join(absent)}"
        )
    if absent and is_main_process():  # as a run's own Table 4: the variations there
        print(f"[eval] Table 4 without {', '.join(absent)}: no <variation>/val under data.root")
    folders = read_class_folders(Path(cfg.data.root) / present[0] / "val")
    model = load_model(checkpoint, cfg, untrained_classes=len(folders))
    classes = list(model.class_names or folders)  # unnamed: the folders name them
    if device is None:
        device = resolve_device(cfg.train.device)
    return evaluate_backgrounds(model.to(device), cfg, classes, device, variations=tuple(present))


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
    """(the test variations under ``data.root``, the configured ones that are not there)."""
    root = Path(cfg.data.root)
    variations = list(cfg.data.imagenet9.variations)
    present = [v for v in variations if (root / v / "val").is_dir()]
    return present, [v for v in variations if v not in present]


def format_backgrounds_table(columns: dict[str, dict[str, float]]) -> str:
    """Markdown in the layout of the paper's Table 4: a row per variation (and BG-Gap), a column per
    model; later columns show their difference to the first in brackets."""
    names = list(columns)
    first = columns[names[0]]
    lines = ["| Dataset | " + " | ".join(names) + " |", "|" + " --- |" * (1 + len(names))]
    for row in first:
        cells = [f"{first[row]:.1f}"]
        for name in names[1:]:
            value = columns[name][row]
            cells.append(f"{value:.1f} ({value - first[row]:+.1f})")
        lines.append(f"| {_ROW_NAMES.get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
