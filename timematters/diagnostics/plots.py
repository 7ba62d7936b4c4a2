"""Plots, drawn from the metrics the runs wrote (JSON lines and dicts). The only matplotlib user."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _shown(label: str) -> str:
    """A legend label as given: matplotlib leaves out labels that begin with "_" (a model named
    _baseline), so such a one begins with a zero-width space instead."""
    return f"\u200b{label}" if label.startswith("_") else label


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curves(runs: dict[str, str | Path], out: str | Path) -> Path:
    """Training loss terms per step and test accuracy (original / shuffled) per evaluation."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, path) in enumerate(runs.items()):
        records = read_jsonl(path)
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        color = colors[i % len(colors)]
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["ce_loss"] for r in train], color=color, label=_shown(f"{name}: ce"))
        if (
            train
            and "loss" in train[0]
            and any(k != "ce_loss" and k.endswith("_loss") for k in train[0])
        ):
            ax_loss.plot(
                steps,
                [r["loss"] for r in train],
                color=color,
                ls=":",
                label=_shown(f"{name}: total"),
            )
        if evals:
            eval_steps = [r["step"] for r in evals]
            ax_acc.plot(
                eval_steps,
                [r["all/top1"] for r in evals],
                color=color,
                marker="o",
                label=_shown(f"{name}: original"),
            )
            if "all/shuffled_top1" not in evals[0]:  # one-frame images: nothing was shuffled
                continue
            ax_acc.plot(
                eval_steps,
                [r["all/shuffled_top1"] for r in evals],
                color=color,
                marker="x",
                ls="--",
                label=_shown(f"{name}: shuffled"),
            )
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="step", ylabel="top-1 (%)", title="test accuracy, all classes")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_shuffle_bars(
    rows: dict[str, dict[str, dict[str, float]]], out: str | Path, label: str = "shuffled"
) -> Path:
    """Original vs perturbed (``label``: shuffled, reversed, ...) top-1 per subset, one group of
    bars per model (paper Fig. 1a)."""
    subsets = list(next(iter(rows.values())))
    fig, axes = plt.subplots(1, len(subsets), figsize=(4.2 * len(subsets), 3.8), squeeze=False)
    x = np.arange(len(rows))
    for ax, subset in zip(axes[0], subsets, strict=True):
        original = [m[subset]["top1"] for m in rows.values()]
        shuffled = [m[subset][f"{label}_top1"] for m in rows.values()]
        ax.bar(x - 0.2, original, 0.4, label="original")
        ax.bar(x + 0.2, shuffled, 0.4, label=label)
        for xi, (o, s) in enumerate(zip(original, shuffled, strict=True)):
            ax.text(xi, max(o, s) + 1.5, f"gap {o - s:+.1f}", ha="center", fontsize=8)
        ax.set_xticks(x, list(rows), rotation=20, ha="right", fontsize=8)
        ax.set(title=subset, ylabel="top-1 (%)", ylim=(0, 110))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, out)


def plot_confidence_gap_histogram(
    histograms: dict[str, dict[str, dict]], out: str | Path, label: str = "shuffled"
) -> Path:
    """Probability mass of the per-clip confidence gap, checkpoints overlaid, a panel per subset
    (paper Fig. 1c). ``histograms[name][subset]`` holds ``edges`` and ``mass`` (confidence.py);
    ``label`` names the perturbed clips they were measured on (shuffled, reversed, ...)."""
    subsets = list(next(iter(histograms.values())))
    fig, axes = plt.subplots(1, len(subsets), figsize=(4.2 * len(subsets), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, subset in zip(axes[0], subsets, strict=True):
        for i, (name, per_subset) in enumerate(histograms.items()):
            h = per_subset[subset]
            color = colors[i % len(colors)]
            ax.stairs(h["mass"], h["edges"], fill=True, alpha=0.25, color=color)
            ax.stairs(
                h["mass"],
                h["edges"],
                color=color,
                lw=1.5,
                label=_shown(f"{name}: mean {round(h['mean'], 2) + 0.0:+.2f}"),
            )
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_xticks(np.linspace(-1, 1, 5))
        ax.set(
            title=subset,
            xlim=(-1, 1),
            xlabel=f"confidence gap (original - {label})",
            ylabel="probability mass",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_order_probe(
    curves: dict[str, dict[str, float]], out: str | Path, chance: float | None = None
) -> Path:
    """Frame-order probe accuracy per block, one line per checkpoint (paper Fig. 1b). Each value
    is drawn at its block's name: a model of fewer blocks (or with some skipped) has its
    ``final`` at the others' ``final``, not at their next block."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    longest = max(curves.values(), key=len)
    labels = list(dict.fromkeys([*longest, *(k for acc in curves.values() for k in acc)]))
    for name, accuracy in curves.items():
        x = [labels.index(block) for block in accuracy]
        ax.plot(x, list(accuracy.values()), marker="o", label=_shown(name))
    ax.set_xticks(range(len(labels)), [k.removeprefix("block") for k in labels])
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", label=f"chance ({chance:.1f}%)")
    ax.set(
        xlabel="block",
        ylabel="frame-order accuracy (%)",
        ylim=(0, 105),
        title="temporal order kept by each block",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_gradcam_grid(
    frames: np.ndarray,
    maps: dict[str, np.ndarray],
    out: str | Path,
    title: str = "",
    max_frames: int = 8,
) -> Path:
    """A clip's frames in the top row, then one row of GradCAM heatmaps per model (paper Fig. 4).

    frames: [T, H, W, 3] RGB in [0, 1]; maps[name]: [T, H, W] in [0, 1]. Longer clips show
    ``max_frames`` evenly spaced frames.
    """
    shown = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).round())
    rows, cols = 1 + len(maps), len(shown)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.3 * cols + 0.6, 1.35 * rows + 0.3), squeeze=False
    )
    for col, t in enumerate(shown.astype(int)):
        axes[0][col].imshow(frames[t])
        axes[0][col].set_title(f"t={t}", fontsize=8)
        for row, heatmap in enumerate(maps.values(), start=1):
            axes[row][col].imshow(frames[t])
            axes[row][col].imshow(heatmap[t], cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for row, name in enumerate(["clip", *maps]):
        axes[row][0].set_ylabel(name, fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out, dpi=80)  # smooth heatmaps compress poorly: keep the files small


def denormalise(clips: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised clips [..., C, T, H, W] -> frames [..., T, H, W, C] in [0, 1], to draw."""
    shape = (3, 1, 1, 1)
    pixels = clips * np.asarray(std, np.float32).reshape(shape)
    pixels = pixels + np.asarray(mean, np.float32).reshape(shape)
    return np.moveaxis(pixels.clip(0, 1), -4, -1)


def _save(fig, out: str | Path, dpi: int = 110) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_background_bars(columns: dict[str, dict[str, float]], out: str | Path) -> Path:
    """Top-1 per Backgrounds Challenge variation, a bar per model (paper Table 4), BG-Gap in the title."""
    variations = [v for v in next(iter(columns.values())) if v != "bg_gap"]
    fig, ax = plt.subplots(figsize=(1.3 * len(variations) + 2.5, 3.8))
    width = 0.8 / len(columns)
    x = np.arange(len(variations))
    for i, (name, accuracy) in enumerate(columns.items()):
        values = [accuracy[v] for v in variations]
        label = f"{name} (BG-Gap {accuracy['bg_gap']:.1f})" if "bg_gap" in accuracy else name
        ax.bar(x + (i - (len(columns) - 1) / 2) * width, values, width, label=_shown(label))
    ax.set_xticks(x, variations, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="top-1 (%)", ylim=(0, 105), title="accuracy per test variation")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def save_gradcam_animation(
    frames: np.ndarray, heatmap: np.ndarray, out: str | Path, fps: float = 4.0
) -> Path:
    """An animated GIF of a clip with its GradCAM map blended over every frame (the map in
    matplotlib's "jet" colours at 45%, as in ``plot_gradcam_grid``).

    frames: [T, H, W, 3] RGB in [0, 1]; heatmap: [T, H, W] in [0, 1].
    """
    from PIL import Image  # Pillow comes with matplotlib

    colours = plt.get_cmap("jet")(np.clip(heatmap, 0, 1))[..., :3]  # [T, H, W, 3]
    blended = (0.55 * frames + 0.45 * colours).clip(0, 1)
    images = [Image.fromarray((frame * 255 + 0.5).astype(np.uint8)) for frame in blended]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return out


def plot_class_gaps(rows: list[dict], key: str, out: str | Path, max_classes: int = 40) -> Path:
    """Per-class accuracy gap (``key``, e.g. ``gap``) of each model, classes ordered by the first
    model's gap; the ``max_classes`` largest and smallest when there are more."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    by_model = {m: {r["name"]: r[key] for r in rows if r["model"] == m} for m in models}
    order = sorted(by_model[models[0]], key=lambda name: -by_model[models[0]][name])
    if len(order) > max_classes:
        order = order[: max_classes // 2] + order[-max_classes // 2 :]
    fig, ax = plt.subplots(figsize=(min(0.32 * len(order) + 2.5, 16), 4.2))
    x = np.arange(len(order))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [by_model[model].get(name, np.nan) for name in order]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=_shown(model))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [name[:28] for name in order], rotation=70, ha="right", fontsize=6)
    ax.set(ylabel=f"{key} (top-1 points)", title="per-class accuracy lost without frame order")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


# Flow classes 1..8 are 45° bins of the angle from +x with y down (class 1: [0°, 45°)); an arrow
# points at its bin's centre, coloured by that angle on a cyclic map.
FLOW_BIN_CENTRES = np.deg2rad(22.5 + 45.0 * np.arange(8))


def plot_flow_labels(
    frames: np.ndarray,
    labels: np.ndarray,
    patch_size: int,
    out: str | Path,
    title: str = "",
    frame_step: int = 1,
) -> Path:
    """A clip's frames in the top row; below each frame after the first, the direction label of
    every patch for the pair (previous frame -> this one): an arrow per moving patch, none for
    "still" (class 0).

    frames: [T, H, W, 3] RGB in [0, 1]; labels: [T-1, S] in {0..8}, S row-major patches;
    frame_step: the clip's frames between two of these (a tubelet model's), for the titles.
    """
    T, H, W, _ = frames.shape
    columns = W // patch_size
    rows, cols = np.divmod(np.arange(labels.shape[1]), columns)
    x, y = (cols + 0.5) * patch_size, (rows + 0.5) * patch_size
    colours = plt.get_cmap("hsv")(np.arange(8) / 8)
    fig, axes = plt.subplots(2, T, figsize=(1.4 * T + 0.4, 3.5), squeeze=False)
    for t in range(T):
        axes[0][t].imshow(frames[t])
        axes[0][t].set_title(f"t={t * frame_step}", fontsize=8)
        if t == 0:  # no pair ends here: a key to the eight directions instead
            for k, angle in enumerate(FLOW_BIN_CENTRES, start=1):
                dx, dy = np.cos(angle), np.sin(angle)
                axes[1][0].arrow(0, 0, 0.7 * dx, 0.7 * dy, color=colours[k - 1], width=0.04)
                axes[1][0].text(0.95 * dx, 0.95 * dy, str(k), fontsize=6, ha="center", va="center")
            axes[1][0].set(xlim=(-1.1, 1.1), ylim=(1.1, -1.1), aspect="equal")
            axes[1][0].set_title("class", fontsize=8)
            continue
        pair = labels[t - 1]
        moving = pair > 0
        angle = FLOW_BIN_CENTRES[np.maximum(pair, 1) - 1]
        axes[1][t].imshow(frames[t], alpha=0.45)
        axes[1][t].quiver(
            x[moving],
            y[moving],
            np.cos(angle[moving]),
            np.sin(angle[moving]),
            color=colours[pair[moving] - 1],
            angles="xy",  # in image coordinates: +y is down, as the labels' angles are
            scale_units="xy",
            scale=1 / (0.7 * patch_size),
            pivot="middle",  # centred on its patch
            width=0.018,
        )
        axes[1][t].set_title(f"{100 * (~moving).mean():.0f}% still", fontsize=7)
    axes[0][0].set_ylabel("clip", fontsize=8)
    axes[1][0].set_ylabel("flow labels", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out, dpi=90)
