"""Plots, drawn from the metrics the runs wrote (JSON lines and dicts). The only matplotlib user."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
        ax_loss.plot(steps, [r["ce_loss"] for r in train], color=color, label=f"{name}: ce")
        if (
            train
            and "loss" in train[0]
            and any(k != "ce_loss" and k.endswith("_loss") for k in train[0])
        ):
            ax_loss.plot(
                steps, [r["loss"] for r in train], color=color, ls=":", label=f"{name}: total"
            )
        if evals:
            eval_steps = [r["step"] for r in evals]
            ax_acc.plot(
                eval_steps,
                [r["all/top1"] for r in evals],
                color=color,
                marker="o",
                label=f"{name}: original",
            )
            ax_acc.plot(
                eval_steps,
                [r["all/shuffled_top1"] for r in evals],
                color=color,
                marker="x",
                ls="--",
                label=f"{name}: shuffled",
            )
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_acc.set(xlabel="step", ylabel="top-1 (%)", title="test accuracy, all classes")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_shuffle_bars(rows: dict[str, dict[str, dict[str, float]]], out: str | Path) -> Path:
    """Original vs shuffled top-1 per subset, one group of bars per model (paper Fig. 1a)."""
    subsets = list(next(iter(rows.values())))
    fig, axes = plt.subplots(1, len(subsets), figsize=(4.2 * len(subsets), 3.8), squeeze=False)
    x = np.arange(len(rows))
    for ax, subset in zip(axes[0], subsets, strict=True):
        original = [m[subset]["top1"] for m in rows.values()]
        shuffled = [m[subset]["shuffled_top1"] for m in rows.values()]
        ax.bar(x - 0.2, original, 0.4, label="original")
        ax.bar(x + 0.2, shuffled, 0.4, label="shuffled")
        for xi, (o, s) in enumerate(zip(original, shuffled, strict=True)):
            ax.text(xi, max(o, s) + 1.5, f"gap {o - s:+.1f}", ha="center", fontsize=8)
        ax.set_xticks(x, list(rows), rotation=20, ha="right", fontsize=8)
        ax.set(title=subset, ylabel="top-1 (%)", ylim=(0, 110))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
