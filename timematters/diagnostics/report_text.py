"""The diagnose report in words: ``report.md`` written from the data of ``diagnose.json``
alone, so that the numbers and the text can never disagree (the plots are ``plots.py``'s)."""

from __future__ import annotations

from typing import Any

import numpy as np

from timematters.engine.evaluate import METRIC_PREFIX, format_table, gap_key, markdown_table
from timematters.engine.statistics import half_width

_PERTURBATION_TEXT = {
    "shuffle": "shuffle: the frames in a random order ({order})",
    "reverse": "reverse: the exact time reverse",
    "freeze": "freeze: {frame} repeated (what one image tells)",
    "freeze_each": "freeze_each: each frame repeated in turn, probabilities averaged",
    "local": "local: neighbouring frames swapped (fine order only)",
}
# eval.shuffle: how the frame orders are drawn (losses/shuffle.py).
_SHUFFLE_ORDER = {
    "per_sample": "one per clip, never the identity",
    "per_batch": "one for each batch, shared by its clips; possibly the identity",
}


def _perturbation_notes(perturbations: list[str], settings: dict[str, Any]) -> str:
    """What each perturbation did, as ``settings`` (the report's ``eval``) made it."""
    frame = settings.get("freeze_frame")
    named = {0: "the first frame", -1: "the last frame", None: "the middle frame"}
    words = {
        "order": _SHUFFLE_ORDER[settings.get("shuffle", "per_sample")],
        "frame": named.get(frame, f"frame {frame}"),
    }
    notes = (_PERTURBATION_TEXT[p].format(**words) for p in perturbations)
    return "Perturbations: " + "; ".join(notes) + "."


def _flip_rates(metrics: dict) -> list[str]:
    """The reverse test's flip rate, when the classes come in time-reversed pairs."""
    first = next(iter(metrics.values()))
    if "flip_rate" not in first["all"]:
        return []
    cells = []
    for name, m in metrics.items():
        row = m["all"]
        interval = row["flip_rate_ci"]  # NaN with eval.bootstrap_samples=0: no "± nan"
        spread = f" ± {half_width(interval):.2f}" if np.isfinite(interval).all() else ""
        cells.append(f"{name} {row['flip_rate']:.2f}{spread} ({row['num_paired']} clips)")
    return [
        "Flip rate under reverse (the share of clips of time-reversed class pairs whose "
        "prediction moves to the partner class; near 1 = the model reads the direction of time, "
        "0 = reversing never moves it there, as for a model blind to frame order; a model that "
        "reads single frames moves some there by chance): "
        f"{'; '.join(cells)}.",
        "",
    ]


def _comparisons(data: dict) -> list[str]:
    """Each model's gaps against the first's, with paired intervals."""
    compared = data.get("compared") or {}
    not_compared = data.get("not_compared") or {}
    if not (compared or not_compared):
        return []
    reference = next(iter(data["models"]))
    if data.get("eval", {}).get("bootstrap_samples", 1) > 0:
        method = (
            "with a paired 95% bootstrap interval (both models' outcomes on a clip resampled "
            "together); a difference whose interval contains 0 is inside the noise"
        )
    else:  # a NaN interval would read as "inside the noise"
        method = (
            "without intervals (eval.bootstrap_samples=0 turns them off), so no difference is "
            "judged against the noise"
        )
    lines = [
        "## Is the difference real?",
        "",
        f"Each model's gap minus {reference}'s, {method}.",
        "",
        *(f"- {name} vs {reference}: {why}." for name, why in not_compared.items()),
    ]
    for name, per_subset in compared.items():
        for subset, per_perturbation in per_subset.items():
            for perturbation, d in per_perturbation.items():
                lines.append(f"- {name} vs {reference}, {subset}, {perturbation}: {_difference(d)}")
    return [*lines, ""]


def _difference(d: dict) -> str:
    """A difference of gaps with its interval and verdict; without an interval, alone."""
    if np.isnan(d["difference"]):  # the subset has no clips
        return "no clips"
    if d["outside_noise"] is None:
        low, high = d["ci"]
        if np.isfinite([low, high]).all():  # an interval, on too few clips for a verdict
            return f"{d['difference']:+.1f} points [{low:+.1f}, {high:+.1f}], too few clips to tell"
        return f"{d['difference']:+.1f} points (no interval)"
    verdict = "outside the noise" if d["outside_noise"] else "inside the noise"
    return f"{d['difference']:+.1f} points [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}], {verdict}"


def _reliance(data: dict) -> list[str]:
    """The classes most and least reliant on time, and the proposed split."""
    proposal = data.get("proposed_subsets")
    if not proposal:
        return []
    rule = proposal["thresholds"]
    lines = [
        "## Which classes need time?",
        "",
        f"Per class and model, accuracy and confidence on original and perturbed clips: "
        f"[class_reliance.csv](class_reliance.csv), ranked by the {rule['perturbation']} gap.",
        "",
        "![per-class gaps](class_gaps.png)",
        "",
    ]
    if "temporal_gap_at_least" in rule:
        lines += [
            f"A Temporal / Static split proposed from {proposal['model']}'s gaps "
            f"([proposed_subsets.yaml](proposed_subsets.yaml); temporal: gap >= "
            f"{rule['temporal_gap_at_least']:.1f} points, static: gap <= "
            f"{rule['static_gap_at_most']:.1f}, classes with >= {rule['min_clips']} clips; pass it "
            "back with `data.subsets=`): temporal "
            f"{', '.join(proposal['temporal']) or '(none)'}; static "
            f"{', '.join(proposal['static']) or '(none)'}.",
            "",
        ]
    elif "min_clips" in rule:
        lines += [
            f"No Temporal / Static split proposed: no class has {rule['min_clips']} clips or "
            "more (fewer are noise).",
            "",
        ]
    return lines


def _model_line(name: str, info: dict) -> str:
    """One model in the report: where it came from and what it takes."""
    mean = ", ".join(f"{m:g}" for m in info["mean"])
    std = ", ".join(f"{v:g}" for v in info["std"])
    frames = f"{info['num_frames'] or 'any number of'} frames"
    size = f" of {info['frame_size']}²" if info["frame_size"] else ""  # 0: any size
    token_frames = f"{info['token_frames']} token frame{'s' if info['token_frames'] != 1 else ''}"
    line = (
        f"- **{name}**: `{info['source']}` ({info['family']}; {frames}{size}, "
        f"{token_frames}; normalised with mean ({mean}), std ({std}))"
    )
    if "trained_with" in info and info["trained_with"] is None:  # torchvision without WEIGHTS
        line += (
            f". **Random weights** (torchvision's default when the spec names none): its scores "
            f"say nothing of a trained network; `{info['source']}:DEFAULT` loads torchvision's "
            "own Kinetics-400 weights"
        )
    if "blocks" in info:  # what its probe's blocks are, where they are not plain layers
        line += f". Its blocks for the order probe: {info['blocks']}"
    if "zero_shot_prompt" in info:  # a video-text model
        line += (
            ". Zero-shot: each class scored by the model's similarity between the clip and the "
            f"text `{info['zero_shot_prompt']}`, the class's name in place of {{}} (model.prompt)"
        )
    return line


def _probe_chance(probe: dict, name: str) -> str:
    """A model's chance column: one figure, or "100 / fr." when its blocks have fewer and fewer
    frames (then each cell names its frames)."""
    chances = set(probe["chance"][name].values())
    if len(chances) > 1:
        return "100 / fr."
    return f"{chances.pop():.1f}" if chances else "–"


def _probe_cell(probe: dict, name: str, block: str) -> str:
    accuracy = probe["accuracy"][name]
    if block in accuracy:
        uniform = len(set(probe["chance"][name].values())) == 1
        extra = "" if uniform else f" ({probe['frames'][name][block]} fr.)"
        return f"{accuracy[block]:.1f}{extra}"
    return "–"


def _probe_notes(probe: dict) -> list[str]:
    """Why a model or a block has no probe figure."""
    notes = [f"- {name}: no order probe, {why}." for name, why in probe["unsupported"].items()]
    for name, skipped in probe["skipped"].items():
        by_reason: dict[str, list[str]] = {}
        for block, why in skipped.items():
            by_reason.setdefault(why, []).append(block)
        notes += [f"- {name}, {', '.join(bs)}: {why}." for why, bs in by_reason.items()]
    return [*notes, ""] if notes else []


def _left_out_note(gaps: dict) -> str:
    """The clips without a confidence gap (non-finite confidences), per model."""
    left_out = {name: g["all"].get("num_left_out", 0) for name, g in gaps.items()}
    cells = [f"{name} {count}" for name, count in left_out.items() if count]
    if not cells:
        return ""
    return (
        " Clips whose confidences are not finite (NaN logits) have no gap and are left out "
        f"(the accuracies count them as misses): {', '.join(cells)}."
    )


def _bad_note(num_bad: int) -> str:
    if not num_bad:
        return ""
    return f", and {num_bad} that could not be decoded and are left out (bad_videos.jsonl)"


def _signed(value: float) -> str:
    return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000" for a rounded-away negative


def report_markdown(data: dict) -> str:
    """``report.md``: the diagnosis in ``data`` (what ``diagnose.json`` holds), in words and
    tables, with the plots beside it."""
    shuffle_test = data["shuffle_test"]
    subsets = list(next(iter(shuffle_test.values())))
    dataset = data["dataset"]
    first_label = METRIC_PREFIX[data["perturbations"][0]]
    lines = [
        "# Does the model use time?",
        "",
        f"`timematters diagnose` on the {dataset['name']}"
        f"{' ' + dataset['split'] + ' split' if dataset['split'] else ''} "
        f"({dataset['num_clips']} clips{_bad_note(dataset['num_bad'])}; "
        f"{data['seconds']:.0f} s). Models:",
        "",
        *(_model_line(name, info) for name, info in data["models"].items()),
        "",
        "## Shuffle test, and the other perturbations (paper Table 1, Fig. 1a)",
        "",
        "Top-1 (%) on the original clips, on the same clips perturbed, and the gap, each ± half "
        "the width of its 95% bootstrap interval over clips (diagnose.json has the bounds, "
        "which near 0 or 100 are not symmetric). A model that ignores frame order has a gap of 0; "
        "one that uses time loses accuracy when the order goes, above all on temporal classes. "
        + _perturbation_notes(data["perturbations"], data.get("eval", {})),
        "",
        format_table(shuffle_test, intervals=True),
        "",
        *_flip_rates(shuffle_test),
        f"Top-5 (%), {data['perturbations'][0]}:",
        "",
        markdown_table(
            ["model", *(f"{s} original / perturbed / gap" for s in subsets)],
            [
                [name]
                + [
                    f"{m[s]['top5']:.1f} / {m[s][first_label + '_top5']:.1f} / "
                    f"{m[s][gap_key(data['perturbations'][0], 'top5')]:.1f}"
                    for s in subsets
                ]
                for name, m in shuffle_test.items()
            ],
        ),
        "",
        "![accuracy on original and perturbed clips](shuffle_accuracy.png)",
        "",
        *_comparisons(data),
        *_reliance(data),
        "## Confidence gap (paper Fig. 1c)",
        "",
        "Per clip, the confidence in the true class on the original clip minus on the "
        f"{first_label} clip ({data['perturbations'][0]}); probability mass in 20 bins over "
        "[-1, 1]. Mass at 0: the perturbation changes nothing; mass to the right: the model is "
        f"less sure of the perturbed clips.{_left_out_note(data['confidence_gap'])}",
        "",
        markdown_table(
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
        by_model = list(probe["frames"].values())
        longest = max(by_model, key=len) if by_model else {}
        # The longest model's blocks, then any other's: each column one block name.
        blocks = list(dict.fromkeys([*longest, *(b for frames in by_model for b in frames)]))
        lines += [
            "## Temporal-order probe (paper Fig. 1b)",
            "",
            f"The model frozen, a linear classifier predicts each frame's position from a block's "
            f"spatially averaged tokens (fit on {probe['fit_clips']} clips, scored on "
            f"{probe['held_out_clips']} others). Top-1 (%); chance is 100 / frames. Falling "
            "accuracy in deeper blocks means the order of frames is being lost.",
            "",
            markdown_table(
                ["model", "chance", *blocks],
                [
                    [name, _probe_chance(probe, name)]
                    + [_probe_cell(probe, name, b) for b in blocks]
                    for name in probe["accuracy"]
                    if name not in probe["unsupported"]
                ],
            ),
            "",
            *_probe_notes(probe),
        ]
        if any(probe["accuracy"].values()):
            lines += ["![order probe accuracy per block](order_probe.png)", ""]
    gradcam = data.get("gradcam")
    if gradcam and (gradcam["clips"] or gradcam.get("skipped")):
        lines += [
            "## GradCAM (paper Fig. 4)",
            "",
            "Where in each frame the features that speak for the clip's true class are (GradCAM "
            "on a transformer's tokens entering its last block, a 3-D CNN's last stage, of the "
            "clip's first view; p is the model's "
            "confidence in that class as evaluated, its test views aggregated). "
            "GradCAM weighs each feature channel by its gradient averaged over the whole clip, "
            "so a map shows where those features appear in each frame, not which frames the "
            "decision rests on: the perturbation tests above answer that.",
            "",
        ]
        for name, reason in gradcam.get("skipped", {}).items():
            lines += [f"No GradCAM for {name}: {reason}.", ""]
        for clip in gradcam["clips"]:
            lines += [f"**{clip['video_id']}**: {clip['class']}", "", f"![]({clip['image']})", ""]
    return "\n".join(lines)
