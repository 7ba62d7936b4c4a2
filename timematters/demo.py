"""`timematters demo`: baseline vs +TIME on the built-in temporal benchmark, in minutes on a CPU.

A thin driver over the training loop: it builds the configs (same seed, data and budget for every
variant), trains and evaluates each, and writes a run folder with a markdown report, JSON metrics
and plots. The benchmark (data/synthetic.py) is a miniature of SSv2's Temporal and Static subsets
with a spatial shortcut in the training split.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timematters.config import Config, check_perturbations, load_config
from timematters.diagnostics.plots import plot_shuffle_bars, plot_training_curves
from timematters.diagnostics.report import run_diagnose
from timematters.engine.evaluate import format_table
from timematters.engine.metrics import to_json


@dataclass(frozen=True)
class Variant:
    """One model of the demo: which TIME losses are on, and Appendix D's re-added time embedding."""

    order: bool = False
    debias: bool = False
    flow: bool = False
    readd_time_embed: bool = False

    @property
    def name(self) -> str:
        losses = [n for n, on in zip(("order", "debias", "flow"), self.losses, strict=True) if on]
        if self.readd_time_embed:
            return "+".join(["re-added", *losses])
        if not losses:
            return "baseline"
        return "+TIME" if len(losses) == 3 else "+" + "+".join(losses)

    @property
    def losses(self) -> tuple[bool, bool, bool]:
        return self.order, self.debias, self.flow


DEFAULT = [Variant(), Variant(order=True, debias=True, flow=True)]
# The paper's Table 3: every combination of the three losses, in its order.
ABLATION = [
    Variant(order=order, debias=debias, flow=flow)
    for order, debias, flow in itertools.product((False, True), repeat=3)
]
# Appendix D: the baseline, its time embedding re-added before every block, and that + order.
APPENDIX_D = [Variant(), Variant(readd_time_embed=True), Variant(order=True, readd_time_embed=True)]


def demo_config(
    variant: Variant,
    *,
    seed: int,
    out: Path,
    quick: bool = False,
    epochs: int | None = None,
    perturbations: Sequence[str] = ("shuffle",),
) -> Config:
    """The demo's recipe: the ``synthetic/time`` preset (a tiny TimeSformer trained from scratch on
    the built-in benchmark) with this variant's losses, seed and run folder."""
    overrides = [
        f"loss.order.weight={float(variant.order)}",
        f"loss.debias.weight={float(variant.debias)}",
        f"loss.flow.weight={float(variant.flow)}",
        f"model.kwargs={{readd_time_embed: {str(variant.readd_time_embed).lower()}}}",
        f"data.synthetic.seed={seed}",
        f"train.seed={seed}",
        f"eval.seed={seed}",
        f"eval.perturbations=[{', '.join(perturbations)}]",
        f"train.out={out}",
        "train.device=cpu",
        "train.tensorboard=false",
    ]
    if quick:
        overrides += [
            "data.synthetic.num_train=256",
            "data.synthetic.num_test=128",
            "train.epochs=2",
            "train.eval_every_epochs=0",
        ]
    if epochs:
        overrides.append(f"train.epochs={epochs}")
    return load_config("synthetic/time", overrides)


def claim_demo_folder(out: Path, *, overwrite: bool, resume: bool) -> None:
    """``out`` for a new demo (an earlier one replaced only with ``overwrite``), or with
    ``resume`` the demo a stop left there."""
    from timematters.engine.runs import claim_folder

    if resume:
        if overwrite:
            raise ValueError(
                "--resume continues the demo in --out, --overwrite replaces it: give one"
            )
        if not any(out.glob("seed*/*/config.yaml")):
            raise ValueError(f"--resume: no demo to continue in {out}; run it without --resume")
        return
    claim_folder(
        out,
        overwrite=overwrite,
        kind="a demo",
        fix="replace it with --overwrite, continue a stopped one with --resume, or choose "
        "another --out",
    )


def train_demo_run(cfg: Config, *, resume: bool) -> dict:
    """One of a demo's runs, trained; with ``resume`` continued from its checkpoint (a finished
    run is read back, one stopped before its first checkpoint starts again). A stop names the
    demo's ``--resume``, not the run's."""
    from timematters.engine.runs import Interrupted
    from timematters.engine.train import train

    checkpoint = Path(cfg.train.out) / "checkpoints" / "last.pth"
    try:
        if resume and checkpoint.is_file():
            return train(cfg, resume=checkpoint)
        return train(cfg, replace_partial=resume)
    except Interrupted as stop:
        raise Interrupted(
            f"{stop.stopped}; the same demo command with --resume continues the demo from there",
            exit_code=stop.exit_code,
            stopped=stop.stopped,
        ) from None


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    seeds: int = 1,
    ablation: bool = False,
    appendix_d: bool = False,
    epochs: int | None = None,
    perturbations: Sequence[str] = ("shuffle",),
    overwrite: bool = False,
    resume: bool = False,
) -> dict:
    """Train the demo's variants for each seed on the miniature benchmark, evaluate them on
    original and perturbed clips, diagnose the first seed's models, and write and print the
    Table 3-style table (``metrics.json``, ``report.md``, plots) in ``out``."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    if ablation and appendix_d:
        raise ValueError("--ablation and --appendix-d are two demos: run one at a time")
    # Before the folder is claimed and the baseline trained.
    check_perturbations(perturbations, where="--perturb")
    variants = ABLATION if ablation else APPENDIX_D if appendix_d else DEFAULT
    claim_demo_folder(out, overwrite=overwrite, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    per_seed: dict[str, list[dict]] = {}
    curves: dict[str, Path] = {}
    checkpoints: dict[str, Path] = {}
    evaluations: dict[str, object] = {}
    options = dict(quick=quick, epochs=epochs, perturbations=perturbations)
    for seed in range(seeds):
        for variant in variants:
            name = variant.name
            run_dir = out / f"seed{seed}" / name.replace("+", "plus_")
            print(f"[demo] seed {seed}: training {name} ...", flush=True)
            cfg = demo_config(variant, seed=seed, out=run_dir, **options)
            result = train_demo_run(cfg, resume=resume)
            per_seed.setdefault(name, []).append(result["metrics"])
            if seed == 0:
                curves[name] = run_dir / "metrics.jsonl"
                checkpoints[name] = run_dir / "checkpoints" / "last.pth"
                evaluations[name] = result["result"]
            print(format_table({name: result["metrics"]}), flush=True)

    rows = {name: _mean_metrics(runs) for name, runs in per_seed.items()}
    print("[demo] diagnosing the seed-0 models ...", flush=True)
    run_diagnose(
        demo_config(Variant(), seed=0, out=out / "diagnose", **options),
        list(checkpoints.values()),
        out / "diagnose",
        names=list(checkpoints),
        # (a run finished before a resumed demo hands back its metrics only: evaluated again)
        evaluations=None if None in evaluations.values() else list(evaluations.values()),
    )
    elapsed = time.perf_counter() - started
    table = format_table(rows)
    (out / "metrics.json").write_text(
        to_json({"mean": rows, "per_seed": per_seed, "seconds": elapsed})
    )
    plot_training_curves(curves, out / "training_curves.png")
    plot_shuffle_bars(rows, out / "shuffle_accuracy.png")
    _write_report(
        out,
        table,
        per_seed,
        seeds=seeds,
        elapsed=elapsed,
        quick=quick,
        spurious_rate=cfg.data.synthetic.spurious_rate,
    )
    print()
    print(
        f"TIME demo: top-1 (%) on original and frame-shuffled test clips, mean over {seeds} seed(s)"
    )
    print(table)
    print(f"\nreport: {out / 'report.md'}  ({elapsed / 60:.1f} min)")
    return {"rows": rows, "per_seed": per_seed, "seconds": elapsed}


def _mean_metrics(runs: list[dict]) -> dict:
    """The seeds' mean of every figure (the per-seed intervals are not averaged: the spread
    over seeds is in the report)."""
    return {
        subset: {
            key: float(np.mean([r[subset][key] for r in runs]))
            for key in runs[0][subset]
            if not key.endswith("_ci")
        }
        for subset in runs[0]
    }


def _write_report(
    out: Path,
    table: str,
    per_seed: dict[str, list[dict]],
    *,
    seeds: int,
    elapsed: float,
    quick: bool,
    spurious_rate: float,
) -> None:
    spread = []
    for name, runs in per_seed.items():
        if len(runs) > 1:
            for subset in runs[0]:
                gaps = [r[subset]["gap"] for r in runs]
                spread.append(
                    f"- {name}, {subset}: gap per seed {', '.join(f'{g:.1f}' for g in gaps)}"
                )
    lines = [
        "# TIME demo: does the model use the order of frames?",
        "",
        f"Tiny TimeSformer trained from scratch on the built-in temporal benchmark "
        f"({'quick smoke run, ' if quick else ''}{seeds} seed(s), {elapsed / 60:.1f} min). "
        "Top-1 (%) on the original test clips, on the same clips with their frames shuffled, and the "
        "gap. Temporal classes come in time-reversed pairs, so only frame order separates them; "
        "static classes differ in appearance. In training, each class shows its own background in "
        f"{spurious_rate:.0%} of its clips (a spatial shortcut; chance is 10%); in the test split "
        "backgrounds are random.",
        "",
        table,
        "",
        "A model that uses time should lose accuracy when frames are shuffled (lower Shuffled, larger "
        "Gap), above all on the temporal classes.",
        "",
        "Seed 0, each figure with its 95% bootstrap interval over the test clips (a difference "
        "between two models smaller than these is within the noise; diagnose/report.md tests the "
        "differences of gaps with paired intervals):",
        "",
        format_table({name: runs[0] for name, runs in per_seed.items()}, intervals=True),
        "",
        *spread,
        "",
        "Diagnostics of the seed-0 models side by side (confidence gap, per-block temporal-order "
        "probe, GradCAM over the frames): [diagnose/report.md](diagnose/report.md).",
        "",
        "![accuracy on original and shuffled clips](shuffle_accuracy.png)",
        "",
        "![confidence gap](diagnose/confidence_gap.png)",
        "",
        "![temporal order per block](diagnose/order_probe.png)",
        "",
        "![training curves](training_curves.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
