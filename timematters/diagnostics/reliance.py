"""Which classes does a model solve without time? Per-class temporal reliance, and a proposed
Temporal / Static split of any dataset.

``class_reliance.csv`` has a row per (model, class): clips, top-1 and mean true-class confidence
on the original clips and, per perturbation, the same on the perturbed clips and their gaps,
ranked by the first perturbation's gap. ``propose_subsets`` turns one model's per-class gaps into
a subsets file (``data.subsets=FILE`` reads it back): its *temporal* classes lose much accuracy
without the order of frames, its *static* classes lose (almost) none.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from timematters.engine.evaluate import EvalResult, gap_key

# A class counts as temporal when its gap is at least this many points (and in the top quarter),
# as static when at most this many (and in the bottom quarter); fewer clips than this are noise.
TEMPORAL_GAP = 10.0
STATIC_GAP = 2.0
MIN_CLIPS = 5


def reliance_rows(results: dict[str, EvalResult]) -> list[dict[str, Any]]:
    """Every model's ``class_reliance`` rows, each with the model's name first."""
    return [{"model": name, **row} for name, r in results.items() for row in r.class_reliance()]


def write_reliance_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _rounded(v) for k, v in row.items()})
    return path


def read_reliance_csv(path: Path) -> list[dict[str, Any]]:
    """The rows ``write_reliance_csv`` wrote, numbers as floats."""
    with path.open() as f:
        return [
            {k: (v if k in ("model", "name") else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def propose_subsets(result: EvalResult, *, min_clips: int = MIN_CLIPS) -> dict[str, Any]:
    """A Temporal / Static split from ``result``'s per-class gaps under its first perturbation.

    Returns ``{"temporal": [names], "static": [names], "thresholds": {...}}``: temporal classes
    have a gap >= max(the 75th percentile, ``TEMPORAL_GAP``), static ones <= min(the 25th
    percentile, ``STATIC_GAP``), among classes with at least ``min_clips`` clips.
    """
    if not result.perturbed:
        raise ValueError("propose_subsets needs an evaluation with a perturbation")
    perturbation = next(iter(result.perturbed))
    key = gap_key(perturbation)
    rows = [r for r in result.class_reliance() if r["clips"] >= min_clips]
    if not rows:  # no threshold: nothing to rank; the file says why
        thresholds = {"perturbation": perturbation, "min_clips": min_clips}
        return {"temporal": [], "static": [], "thresholds": thresholds}
    gaps = np.array([r[key] for r in rows])
    high = max(float(np.percentile(gaps, 75)), TEMPORAL_GAP)
    low = min(float(np.percentile(gaps, 25)), STATIC_GAP)
    return {
        "temporal": [r["name"] for r in rows if r[key] >= high],
        "static": [r["name"] for r in rows if r[key] <= low],
        "thresholds": {
            "perturbation": perturbation,
            "temporal_gap_at_least": round(high, 2),
            "static_gap_at_most": round(low, 2),
            "min_clips": min_clips,
        },
    }


def write_subsets_file(proposal: dict[str, Any], path: Path, model: str) -> Path:
    """The proposal as a subsets file, its thresholds stated in a comment."""
    rule = proposal["thresholds"]
    header = [
        f"# A Temporal / Static split proposed from {model}'s per-class gaps under "
        f"{rule['perturbation']} (timematters diagnose).",
    ]
    if "temporal_gap_at_least" in rule:
        header.append(
            f"# temporal: gap >= {rule['temporal_gap_at_least']} points; static: gap <= "
            f"{rule['static_gap_at_most']} points; classes with >= {rule['min_clips']} clips."
        )
    # An empty subset would read back as a column of nan: it is left out, and said.
    subsets = {name: proposal[name] for name in ("temporal", "static") if proposal[name]}
    if "temporal_gap_at_least" not in rule and "min_clips" in rule:
        header.append(
            f"# No class has {rule['min_clips']} clips or more (fewer are noise): no class was "
            "ranked, and both subsets are left out."
        )
    else:
        for name in ("temporal", "static"):
            if name not in subsets:
                header.append(f"# No class qualified as {name}: the subset is left out.")
    header.append("# Read it back with data.subsets=" + path.name)
    body = yaml.safe_dump(subsets, sort_keys=False, allow_unicode=True)  # {} when none
    path.write_text("\n".join(header) + "\n" + body)
    return path
