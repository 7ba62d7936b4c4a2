"""`timematters diagnose`: does a video model use time? (paper Sec. 3.2, Table 1, Fig. 1, 3, 4)

For each checkpoint, on the config's evaluation split: the shuffle test (top-1 / top-5 on
original and frame-shuffled clips, and the gap, per subset), the confidence-gap histogram, the
per-block temporal-order probe and GradCAM maps of a few clips (the same clips and target classes
for every checkpoint). Writes ``diagnose.json`` and ``gradcam.npz`` (the data), PNG plots drawn from them and
``report.md``, which sets the checkpoints side by side.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import DataLoader, Subset

from timematters.config import Config, validate
from timematters.data.build import build_dataset
from timematters.data.collate import BadVideo, collate_videos
from timematters.diagnostics import plots
from timematters.diagnostics.confidence import confidence_gaps
from timematters.diagnostics.gradcam import video_gradcam
from timematters.diagnostics.order_probe import order_probe
from timematters.engine.distributed import autocast_dtype, resolve_device
from timematters.engine.evaluate import EvalResult, evaluate, format_table
from timematters.engine.metrics import to_json
from timematters.engine.model import check_classes, load_model_from_checkpoint, model_patch_size


def run_diagnose(
    cfg: Config,
    checkpoints: Sequence[str | Path],
    out: str | Path,
    names: Sequence[str] | None = None,
    probe: bool = True,
    probe_fit_clips: int = 128,
    probe_held_out_clips: int = 128,
    gradcam_clips: int = 4,
    gradcam_indices: Sequence[int] | None = None,
    evaluations: Sequence[EvalResult] | None = None,
) -> dict:
    """Diagnose ``checkpoints`` on the evaluation split of ``cfg`` (``eval.split``); write the
    report to ``out``.

    names: row names in the report (default: each checkpoint's run folder).
    probe_fit_clips / probe_held_out_clips: the order probe is fit on the first clips of the
        evaluation split and scored on the next ones (same preprocessing, disjoint clips).
    gradcam_indices: clips to explain (default: ``gradcam_clips`` clips of different classes,
        temporal classes first); each map explains the clip's true class.
    evaluations: shuffle-test results already computed for these checkpoints with this config
        (the training run's final evaluation), so the test set is not run again.
    Returns the data written to ``diagnose.json``.
    """
    validate(cfg)
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else _default_names(checkpoints)
    if len(names) != len(checkpoints) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct name per checkpoint, got {names}")
    device = resolve_device(cfg.train.device)
    amp = autocast_dtype(cfg.train.precision, device)
    split = cfg.eval.split
    test_set = build_dataset(cfg, split, flow_labels=False, patch_size=model_patch_size(cfg))
    subsets = getattr(test_set, "subsets", {})
    models = {}
    for name, path in zip(names, checkpoints, strict=True):
        model, classes = load_model_from_checkpoint(cfg, path)
        check_classes(classes, test_set.classes, path)
        models[name] = model.to(device)

    def loader(dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=cfg.eval.batch_size,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_videos,
        )

    # 1. Shuffle test (Table 1, Fig. 1a) and 2. confidence gap (Fig. 1c): the one evaluation.
    if evaluations is None:
        evaluations = []
        for name, model in models.items():
            print(f"[diagnose] shuffle test: {name} ...", flush=True)
            result = evaluate(
                model,
                loader(test_set),
                classes=test_set.classes,
                subsets=subsets,
                settings=cfg.eval,
                device=device,
                autocast_dtype=amp,
                progress=cfg.train.progress,
            )
            evaluations.append(result)
    evaluations = dict(zip(names, evaluations, strict=True))
    first = next(iter(evaluations.values()))
    first.check_bad(cfg.data.max_bad_fraction, out / "bad_videos.jsonl")
    data = {
        "checkpoints": {name: str(path) for name, path in zip(names, checkpoints, strict=True)},
        "dataset": {
            "name": cfg.data.dataset,
            "split": split,
            "num_clips": len(first.labels),  # scored; the bad ones are not
            "num_bad": len(first.bad),
        },
        "shuffle": cfg.eval.shuffle,
        "shuffle_test": {name: result.metrics() for name, result in evaluations.items()},
        "confidence_gap": {name: confidence_gaps(result) for name, result in evaluations.items()},
    }

    # 3. Per-block temporal-order probe (Fig. 1b), every model reading each batch once.
    if probe:
        print("[diagnose] order probe ...", flush=True)
        fit_count = min(probe_fit_clips, len(test_set) // 2)
        held_out_count = min(probe_held_out_clips, len(test_set) - fit_count)
        accuracies = order_probe(
            list(models.values()),
            fit_loader=loader(Subset(test_set, range(fit_count))),
            held_out_loader=loader(Subset(test_set, range(fit_count, fit_count + held_out_count))),
            device=device,
            autocast_dtype=amp,
            progress=cfg.train.progress,
        )
        data["order_probe"] = {
            "fit_clips": fit_count,
            "held_out_clips": held_out_count,
            "chance": {name: 100.0 / model.token_frames for name, model in models.items()},
            "accuracy": dict(zip(models, accuracies, strict=True)),
        }

    # 4. GradCAM (Fig. 4): the same clips and target classes for every checkpoint.
    labels = next(iter(evaluations.values())).labels
    if gradcam_indices is None:
        gradcam_indices = _pick_clips(labels, gradcam_clips, subsets.get("temporal", []))
    if gradcam_indices:
        print("[diagnose] GradCAM ...", flush=True)
        data["gradcam"] = _gradcam(cfg, models, test_set, gradcam_indices, out)

    data["seconds"] = time.perf_counter() - started
    (out / "diagnose.json").write_text(to_json(data))
    _plot(data, out)
    (out / "report.md").write_text(_report(data))
    print(f"[diagnose] report: {out / 'report.md'}", flush=True)
    return data


def _default_names(checkpoints: Sequence[str | Path]) -> list[str]:
    """A checkpoint's run folder (``RUN/checkpoints/last.pth`` -> ``RUN``), else its file name."""
    names = []
    for path in map(Path, checkpoints):
        resolved = path.resolve()
        name = resolved.parent.parent.name if resolved.parent.name == "checkpoints" else path.stem
        names.append(name if name not in names else f"{name}-{len(names)}")
    return names


def _pick_clips(labels: np.ndarray, count: int, preferred: Sequence[int]) -> list[int]:
    """The first clip of each of ``count`` different classes, ``preferred`` classes first."""
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in preferred)  # stable
    picked, seen = [], set()
    for i in order:
        if len(picked) == count:
            break
        if labels[i] not in seen:
            picked.append(i)
            seen.add(labels[i])
    return picked


def _gradcam(cfg, models, test_set, indices, out: Path) -> dict:
    clips, infos = [], []
    for index in indices:
        item = test_set[index]
        if isinstance(item, BadVideo):
            print(f"[diagnose] GradCAM: skipping clip {index} ({item.reason})", flush=True)
            continue
        video = item["video"]
        clips.append(video[0] if video.ndim == 5 else video)  # [V, C, T, H, W] -> first view
        infos.append(
            {
                "index": int(index),
                "video_id": str(item["video_id"]),
                "label": int(item["label"]),
                "class": test_set.classes[item["label"]],
                "confidence": {},
            }
        )
    if not clips:
        return {"clips": []}
    video = torch.stack(clips)  # [N, C, T, H, W]
    targets = [info["label"] for info in infos]
    maps, skipped = {}, {}
    for name, model in models.items():
        on_device = video.to(next(model.parameters()).device)
        with torch.no_grad():
            probs = model(on_device).float().softmax(dim=-1).cpu()
        for info, p in zip(infos, probs[torch.arange(len(targets)), targets], strict=True):
            info["confidence"][name] = float(p)
        try:
            maps[name] = video_gradcam(model, on_device, targets)
        except RuntimeError as error:  # keep the rest of a long run's report
            print(f"[diagnose] GradCAM: skipping {name}: {error}", flush=True)
            skipped[name] = str(error)
    if not maps:
        return {"clips": [], "skipped": skipped}
    np.savez_compressed(
        out / "gradcam.npz",
        clips=np.array([info["index"] for info in infos]),
        **{f"maps_{name}": m.astype(np.float16) for name, m in maps.items()},
    )
    mean = torch.tensor(cfg.data.mean).view(3, 1, 1, 1)
    std = torch.tensor(cfg.data.std).view(3, 1, 1, 1)
    frames = rearrange((video * std + mean).clamp(0, 1), "n c t h w -> n t h w c").numpy()
    for i, info in enumerate(infos):
        info["image"] = f"gradcam_{info['index']}.png"
        plots.plot_gradcam_grid(
            frames[i],
            {f"{name} (p={info['confidence'][name]:.2f})": m[i] for name, m in maps.items()},
            out / info["image"],
            title=f"{info['video_id']}: {info['class']}",
        )
    return {"clips": infos, "maps": "gradcam.npz", "skipped": skipped}


def _plot(data: dict, out: Path) -> None:
    plots.plot_shuffle_bars(data["shuffle_test"], out / "shuffle_accuracy.png")
    plots.plot_confidence_gap_histogram(data["confidence_gap"], out / "confidence_gap.png")
    probe = data.get("order_probe")
    if probe and any(probe["accuracy"].values()):
        chances = set(probe["chance"].values())
        plots.plot_order_probe(
            {name: acc for name, acc in probe["accuracy"].items() if acc},
            out / "order_probe.png",
            chance=chances.pop() if len(chances) == 1 else None,
        )


def _bad_note(num_bad: int) -> str:
    if not num_bad:
        return ""
    return f", and {num_bad} that could not be decoded and are left out (bad_videos.jsonl)"


def _signed(value: float) -> str:
    return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000" for a rounded-away negative


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _report(data: dict) -> str:
    shuffle_test = data["shuffle_test"]
    subsets = list(next(iter(shuffle_test.values())))
    dataset = data["dataset"]
    lines = [
        "# Does the model use time?",
        "",
        f"`timematters diagnose` on the {dataset['name']} {dataset['split']} split "
        f"({dataset['num_clips']} clips{_bad_note(dataset['num_bad'])}; frames shuffled "
        f"{data['shuffle'].replace('_', ' ')}; {data['seconds']:.0f} s). Checkpoints:",
        "",
        *(f"- **{name}**: `{path}`" for name, path in data["checkpoints"].items()),
        "",
        "## Shuffle test (paper Table 1, Fig. 1a)",
        "",
        "Top-1 (%) on the original clips, on the same clips with their frames shuffled, and the "
        "gap. A model that ignores frame order has a gap of 0; one that uses time loses accuracy "
        "on shuffled clips, above all on temporal classes.",
        "",
        format_table(shuffle_test),
        "",
        "Top-5 (%):",
        "",
        _table(
            ["model", *(f"{s} original / shuffled / gap" for s in subsets)],
            [
                [name]
                + [
                    f"{m[s]['top5']:.1f} / {m[s]['shuffled_top5']:.1f} / {m[s]['gap_top5']:.1f}"
                    for s in subsets
                ]
                for name, m in shuffle_test.items()
            ],
        ),
        "",
        "![accuracy on original and shuffled clips](shuffle_accuracy.png)",
        "",
        "## Confidence gap (paper Fig. 1c)",
        "",
        "Per clip, the confidence in the true class on the original clip minus on the shuffled "
        "clip; probability mass in 20 bins over [-1, 1]. Mass at 0: shuffling changes nothing; "
        "mass to the right: the model is less sure of shuffled clips.",
        "",
        _table(
            ["model", *(f"{s} mean / median" for s in subsets)],
            [
                [name] + [f"{_signed(g[s]['mean'])} / {_signed(g[s]['median'])}" for s in subsets]
                for name, g in data["confidence_gap"].items()
            ],
        ),
        "",
        "![confidence gap histogram](confidence_gap.png)",
        "",
    ]
    probe = data.get("order_probe")
    if probe:
        blocks = list(max(probe["accuracy"].values(), key=len))
        lines += [
            "## Temporal-order probe (paper Fig. 1b)",
            "",
            f"The model frozen, a linear classifier predicts each frame's position from a block's "
            f"spatially averaged tokens (fit on {probe['fit_clips']} clips, scored on "
            f"{probe['held_out_clips']} others). Top-1 (%); chance is 100 / frames. Falling "
            "accuracy in deeper blocks means the order of frames is being lost.",
            "",
            _table(
                ["model", "chance", *blocks],
                [
                    [name, f"{probe['chance'][name]:.1f}"]
                    + [f"{acc[b]:.1f}" if b in acc else "–" for b in blocks]
                    for name, acc in probe["accuracy"].items()
                ],
            ),
            "",
        ]
        if blocks:
            lines += ["![order probe accuracy per block](order_probe.png)", ""]
    gradcam = data.get("gradcam")
    if gradcam and (gradcam["clips"] or gradcam.get("skipped")):
        lines += [
            "## GradCAM (paper Fig. 4)",
            "",
            "Where each model looks for the clip's true class, frame by frame (GradCAM on the "
            "tokens entering the last block; p is the model's confidence in that class).",
            "",
        ]
        for name, reason in gradcam.get("skipped", {}).items():
            lines += [f"No GradCAM for {name}: {reason}.", ""]
        for clip in gradcam["clips"]:
            lines += [f"**{clip['video_id']}**: {clip['class']}", "", f"![]({clip['image']})", ""]
    return "\n".join(lines)
