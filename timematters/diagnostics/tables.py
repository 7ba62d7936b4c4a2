"""`timematters table`: evaluations already made, side by side, as the paper's Tables 2 and 3.

Reads what the other commands wrote: a run folder's final ``eval.json`` (``train``), an
``<checkpoint>_eval/eval.json`` (``eval``), or a diagnose report's ``diagnose.json`` (a row per
model). Nothing is evaluated again. Rows keep the subsets and perturbations every one of them has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from timematters.config import PERTURBATION_NAMES
from timematters.engine.backgrounds import format_backgrounds_table
from timematters.engine.evaluate import format_table, gap_key

RESULT_FILES = ("eval.json", "diagnose.json")


def results_table(
    paths: Sequence[str | Path], *, names: Sequence[str] | None = None, intervals: bool = False
) -> str:
    """The markdown table (one per perturbation) of the evaluations found at ``paths``; for
    ImageNet-9 runs (each with its ``backgrounds.json``), the paper's Table 4 instead: a column
    per run (one-frame clips have no order to shuffle)."""
    backgrounds = _backgrounds(paths, names=names)
    if backgrounds:
        return format_backgrounds_table(backgrounds)
    rows = collect_rows(paths, names=names)
    return format_table(_common_part(rows), intervals=intervals)


def _backgrounds(
    paths: Sequence[str | Path], *, names: Sequence[str] | None
) -> dict[str, dict[str, float]]:
    """Run name -> its Backgrounds Challenge accuracies, when every path is a run's or an
    evaluation's folder that has them, or their ``backgrounds.json`` ({} otherwise)."""
    files = [
        Path(path) if Path(path).name == "backgrounds.json" else Path(path) / "backgrounds.json"
        for path in paths
    ]
    if not files or not all(file.is_file() for file in files):
        return {}
    labels = list(names) if names else _labels([file.parent for file in files])
    if len(labels) != len(files):
        raise ValueError(f"{len(files)} runs but {len(labels)} names: give one --name per run")
    columns = {}
    for file, label in zip(files, labels, strict=True):
        try:
            columns[_unique(label, columns)] = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{file} is not valid JSON ({error.msg})") from None
    return columns


def collect_rows(
    paths: Sequence[str | Path], *, names: Sequence[str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Row name -> per-subset metrics, in the order given. A row is named by its folder's path
    below the folder the paths share (``ablation/order``), a diagnose report's rows by their
    models; ``names`` replaces them, one per row."""
    if not paths:
        raise ValueError("table needs the runs or evaluations to put side by side")
    files = [_result_file(Path(path)) for path in paths]
    labels = _labels([file.parent for file in files])
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for file, label in zip(files, labels, strict=True):
        for name, metrics in _read(file).items():
            row = name if name is not None else label
            if name is not None and len(files) > 1:
                row = f"{label}: {name}"
            rows[_unique(row, rows)] = metrics
    if names is not None:
        if len(names) != len(rows):
            raise ValueError(
                f"{len(rows)} rows ({', '.join(rows)}) but {len(names)} names: give one --name "
                "per row, in order, or none"
            )
        twice = sorted({name for name in names if list(names).count(name) > 1})
        if twice:  # a row per name: one would replace the other
            raise ValueError(f"--name {twice[0]!r} is given twice: give each row its own name")
        rows = dict(zip(names, rows.values(), strict=True))
    return rows


def _result_file(path: Path) -> Path:
    if path.is_file():
        if path.name not in RESULT_FILES:
            raise ValueError(f"{path} is not an eval.json or a diagnose.json")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    for name in RESULT_FILES:
        if (path / name).is_file():
            return path / name
    raise ValueError(
        f"{path} holds no evaluation (eval.json) or diagnose report (diagnose.json): a run writes "
        "eval.json when it ends; for a checkpoint run timematters eval CONFIG --checkpoint CHECKPOINT"
    )


def _read(file: Path) -> dict[str | None, dict[str, dict[str, Any]]]:
    """{None: metrics} of an eval.json, {model: metrics} of a diagnose.json."""
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON ({error.msg}, line {error.lineno})") from None
    results = data.get("shuffle_test") if file.name == "diagnose.json" else {None: data}
    if not isinstance(results, dict) or not all(_is_metrics(m) for m in results.values()):
        raise ValueError(
            f"{file} holds no shuffle-test results (an ImageNet-9 run's Backgrounds Challenge "
            "table is its backgrounds.md)"
        )
    if not results or not all(results.values()):
        raise ValueError(f"{file} holds no results: its command did not finish?")
    return results


def _is_metrics(metrics: Any) -> bool:
    return isinstance(metrics, dict) and all(
        isinstance(m, dict) and "top1" in m for m in metrics.values()
    )


def _labels(folders: list[Path]) -> list[str]:
    """Each folder's path below the one they share (its own name when alone); an evaluation of a
    run's checkpoint (``<run>/checkpoints/last_eval``) is named by its run: ``<run> (last)``."""
    places, suffixes = [], []
    for folder in (folder.resolve() for folder in folders):
        if folder.name.endswith("_eval") and folder.parent.name == "checkpoints":
            places.append(folder.parent.parent)
            suffixes.append(f" ({folder.name.removesuffix('_eval')})")
        else:
            places.append(folder)
            suffixes.append("")
    shared = Path(os.path.commonpath(places)) if len(set(places)) > 1 else None
    return [
        (place.name if shared is None or place == shared else str(place.relative_to(shared)))
        + suffix
        for place, suffix in zip(places, suffixes, strict=True)
    ]


def _unique(name: str, taken: dict[str, Any]) -> str:
    if name not in taken:
        return name
    count = 2
    while f"{name} ({count})" in taken:
        count += 1
    return f"{name} ({count})"


def _common_part(rows: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict]]:
    """The subsets and figures every row has (a run on SSv2's Temporal subset has no Static row;
    one tested under reverse as well has more columns than one tested under shuffle alone)."""
    metrics = list(rows.values())
    subsets = [s for s in metrics[0] if all(s in m for m in metrics)]
    if not subsets:
        raise ValueError(
            "the evaluations share no subset (all, temporal, static ...) to set side by side"
        )
    keys = {s: set.intersection(*(set(m[s]) for m in metrics)) for s in subsets}
    if not any(gap_key(name) in keys[subsets[0]] for name in PERTURBATION_NAMES):
        raise ValueError(
            "the evaluations share no perturbation (shuffle, reverse, ...) to set side by side: "
            "evaluate them under the same ones (eval.perturbations)"
        )
    return {
        name: {s: {k: v for k, v in m[s].items() if k in keys[s]} for s in subsets}
        for name, m in rows.items()
    }
