"""`timematters diagnose`: does a video model use time? (paper Sec. 3.2, Table 1, Fig. 1, 3, 4)

Model-first: ``diagnose(models, data, out)`` takes modules (ours, adapted Hugging Face or
torchvision models, a user's own) and any clip source (a dataset, a loader of dict batches or of
``(video, label)`` pairs); ``run_diagnose`` is the CLI's thin layer that loads models from specs
and the data from a config. For each model: the shuffle test (top-1 / top-5 on original and
frame-shuffled clips, and the gap, per subset), the confidence-gap histogram, the per-block
temporal-order probe and GradCAM maps of a few clips (the same clips and target classes for every
model). A model that cannot give a diagnostic (no tokens, one token frame) gets the reason in the
report. Writes ``diagnose.json`` and ``gradcam.npz`` (the data), PNG plots drawn from them and
``report.md``, which sets the models side by side.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from timematters.backbones.adapters.module import as_video_backbone
from timematters.backbones.normalisation import DEFAULT_INPUT, clips_normalised
from timematters.config import Config, EvalConfig
from timematters.data.build import build_dataset, build_eval_loader
from timematters.diagnostics.confidence import confidence_gaps
from timematters.diagnostics.gradcam import gradcam_unsupported, video_gradcam
from timematters.diagnostics.order_probe import order_probe
from timematters.diagnostics.reliance import (
    propose_subsets,
    read_reliance_csv,
    reliance_rows,
    write_reliance_csv,
    write_subsets_file,
)
from timematters.diagnostics.report_text import report_markdown
from timematters.engine.distributed import (
    DistInfo,
    autocast_dtype,
    cleanup_distributed,
    on_main_for_all,
    out_of_memory,
    setup_distributed,
)
from timematters.engine.evaluate import (
    METRIC_PREFIX,
    EvalResult,
    as_batch,
    as_loader,
    compare_gaps,
    evaluate_models,
    gap_key,
)
from timematters.engine.metrics import to_json
from timematters.engine.model import (
    check_classes,
    class_names_of,
    describe_model,
    in_model_classes,
    load_model,
    validate_for_given_model,
)
from timematters.engine.runs import claim_folder

# A run's or a demo's folder is never a report's; an earlier report there is replaced whole.
_CLAIM = dict(kind="a diagnose report", overwrite=False, fix="choose another --out")


def diagnose(
    models: dict[str, nn.Module],
    data: Any,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    subsets: dict[str, list[int]] | None = None,
    settings: EvalConfig | None = None,
    probe_clips: tuple[int, int] | int | None = (128, 128),
    gradcam_clips: int = 4,
    gradcam_indices: Sequence[int] | None = None,
    evaluations: Sequence[EvalResult] | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    max_bad_fraction: float = 1.0,
    about: dict[str, Any] | None = None,
) -> dict:
    """Diagnose ``models`` (name -> module, video -> logits) on ``data``; write the report to
    ``out``; return what ``diagnose.json`` holds.

    data: a dataset, a DataLoader of dict batches, or one of ``(video, label)`` pairs (or a list
        of such batches: it is read several times, so not a generator); clips [B, C, T, H, W].
    mean, std: the clips' normalisation (default 0.5, 0.5): the models are told it
        (``set_input_normalisation``) for this call and convert the clips to their own, ours and
        adapted alike. The GradCAM pictures are un-normalised with it.
    classes, subsets: class names (default: ``data.classes``, else the models' ``class_names``,
        else "0".."K-1") and named subsets of class indices (default: ``data.subsets``).
    settings: the ``eval`` config (shuffle, seed, aggregation, batch size for a dataset).
    probe_clips: (fit, held out): the order probe is fit on the first clips and scored on the
        next ones (N: N and N, as ``--probe-clips N``); None skips it.
    gradcam_indices: clip positions to explain (default: ``gradcam_clips`` clips of different
        classes, temporal classes first); each map explains the clip's true class.
    evaluations: shuffle-test results already computed for these models on these clips (the
        training run's final evaluation), so they are not run again.
    max_bad_fraction: stop when more of the clips than this could not be decoded.
    about: what to print about the data (name, split) and the models (their sources).
    """
    started = time.perf_counter()
    out = Path(out)
    # A run's or a demo's folder is refused before any work; an earlier report there is replaced
    # whole (no stale GradCAM of other clips) once this one is sure to be written.
    claim_folder(out, **_CLAIM, remove=False)
    settings = settings or EvalConfig()
    _check_arguments(models, data, mean=mean, std=std)
    probe_clips = _probe_counts(probe_clips)
    _check_evaluations(evaluations, settings)
    # A plain module (clips -> logits) gets the logits-only adapter: the report names its limits.
    models = {name: as_video_backbone(model, source=name) for name, model in models.items()}
    one_frame = [name for name, model in models.items() if describe_model(model)["num_frames"] == 1]
    if one_frame:  # its shuffle test, probe and gap would be a report of nothing
        raise ValueError(
            f"{one_frame[0]} takes one frame: it has no frame order for diagnose to test; an "
            "ImageNet-9 model's test is the Backgrounds Challenge (timematters eval, Table 4)"
        )
    # The models convert the clips to their own normalisation while they are diagnosed here.
    with clips_normalised(models, mean, std):
        normalised = (mean, std) if mean is not None else DEFAULT_INPUT  # for the GradCAM pictures
        first_model = next(iter(models.values()))
        if device is None:  # where the models are (one without parameters: the CPU)
            device = _one_device(models)
        source = getattr(data, "dataset", data)  # a DataLoader's dataset names the classes
        # Class names for data that has none: the first model's, or "0".."K-1".
        classes = list(classes or getattr(source, "classes", []) or class_names_of(first_model))
        subsets = dict(subsets if subsets is not None else getattr(source, "subsets", {}))
        loader = as_loader(data, settings.batch_size)
        about = about or {}
        running = dict(device=device, autocast_dtype=autocast_dtype, progress=progress)

        # 1. Shuffle test (Table 1, Fig. 1a) and 2. confidence gap (Fig. 1c): the one evaluation.
        if evaluations is None:
            evaluations = _shuffle_test(
                models, loader, classes=classes, subsets=subsets, settings=settings, **running
            )
        evaluations = dict(zip(models, evaluations, strict=True))
        first = next(iter(evaluations.values()))
        if gradcam_indices is None:  # the evaluation's subsets: class indices, names resolved
            temporal = first.subsets.get("temporal", [])
            gradcam_indices = _pick_clips(first.labels, gradcam_clips, temporal)
        _check_positions(gradcam_indices, len(first.labels))
        claim_folder(out, **_CLAIM)
        out.mkdir(parents=True, exist_ok=True)
        first.check_bad(max_bad_fraction, out / "bad_videos.jsonl")
        report = _shuffle_section(
            models, evaluations, source=source, about=about, settings=settings
        )
        report.update(_reliance_section(evaluations, out, num_classes=len(classes)))

        # 3. Per-block temporal-order probe (Fig. 1b), every model reading each batch once.
        if probe_clips is not None:
            print("[diagnose] order probe ...", flush=True)
            scored = len(first.labels)
            fix = (
                f"set eval.batch_size={max(1, settings.batch_size // 2)} (every block's tokens of a "
                "batch are kept), or leave the probe out (--no-probe; probe_clips=None in Python)"
            )
            with _advice_on_out_of_memory("in the order probe", fix):
                report["order_probe"] = _probe_section(
                    models, loader, probe_clips, scored, **running
                )

        # 4. GradCAM (Fig. 4): the same clips and target classes for every model.
        if gradcam_indices:
            print("[diagnose] GradCAM ...", flush=True)
            fix = "leave GradCAM out (--gradcam-clips 0; gradcam_clips=0 in Python)"
            with _advice_on_out_of_memory("in GradCAM (one clip at a time)", fix):
                report["gradcam"] = _gradcam(
                    models, loader, gradcam_indices, evaluations, out, *normalised
                )

        report["seconds"] = time.perf_counter() - started
        (out / "diagnose.json").write_text(to_json(report))
        _plot(report, out)
        (out / "report.md").write_text(report_markdown(report))
        print(f"[diagnose] report: {out / 'report.md'}", flush=True)
        return report


@contextlib.contextmanager
def _advice_on_out_of_memory(doing: str, fix: str) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        raise out_of_memory(error, doing, fix) from None


def _check_arguments(models: dict[str, nn.Module], data: Any, *, mean, std) -> None:
    if not models:
        raise ValueError("diagnose needs at least one model")
    if isinstance(data, Iterator):  # the probe and GradCAM would get no clips
        raise ValueError(
            f"data is a one-shot iterator ({type(data).__name__}) but diagnose reads the clips "
            "for the shuffle test and again for the probe and GradCAM; pass a list of batches, a "
            "Dataset or a DataLoader"
        )
    if (mean is None) != (std is None):
        raise ValueError("diagnose: give the clips' mean and std together, or neither (0.5)")


def _check_evaluations(evaluations: Sequence[EvalResult] | None, settings: EvalConfig) -> None:
    """Refuse evaluations that lack a perturbation of ``settings``: the report reads every one
    of them (and would fail after writing ``diagnose.json``)."""
    for result in evaluations or []:
        missing = [p for p in settings.perturbations if p not in result.perturbed]
        if missing:
            raise ValueError(
                f"evaluations: one scored {', '.join(result.perturbed) or 'no perturbation'} but "
                f"settings.perturbations asks for {', '.join(missing)} too; evaluate with these "
                "settings, or give settings the evaluations' perturbations"
            )


def _check_positions(positions: Sequence[int], scored: int) -> None:
    """Refuse GradCAM positions past the scored clips: no map would explain them, silently."""
    outside = [i for i in positions if not 0 <= i < scored]
    if outside:
        raise ValueError(f"--gradcam-index {outside[0]}: the clips are numbered 0 to {scored - 1}")


def _one_device(models: dict[str, nn.Module]) -> torch.device:
    """The device every model is on: the clips go to one, and each batch serves all models."""
    where = {
        name: next((p.device for p in model.parameters()), torch.device("cpu"))
        for name, model in models.items()
    }
    if len(set(where.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in where.items())
        raise ValueError(
            f"the models are on different devices ({listed}): each batch of clips serves them "
            "all, so move them to one (model.to(device))"
        )
    return next(iter(where.values()))


def _shuffle_test(models: dict[str, nn.Module], loader: Any, **evaluation: Any) -> list[EvalResult]:
    """The one evaluation of each model, original and perturbed clips: all models in one pass
    over the clips, each batch read once."""
    print(f"[diagnose] shuffle test: {', '.join(models)} ...", flush=True)
    return evaluate_models(list(models.values()), loader, **evaluation)


def _shuffle_section(
    models: dict[str, nn.Module],
    evaluations: dict[str, EvalResult],
    *,
    source: Any,
    about: dict[str, Any],
    settings: EvalConfig,
) -> dict[str, Any]:
    """The report's head: the models, the data, the shuffle test and the confidence gap."""
    first = next(iter(evaluations.values()))
    data_info = {
        "name": about.get("dataset", type(source).__name__),
        "split": about.get("split", ""),
        "num_clips": len(first.labels),  # scored; the bad ones are not
        "num_bad": len(first.bad),
    }
    report: dict[str, Any] = {
        "models": {name: describe_model(model) for name, model in models.items()},
        "dataset": data_info,
        "shuffle_test": {name: result.metrics() for name, result in evaluations.items()},
        "confidence_gap": {
            name: confidence_gaps(result, perturbation=settings.perturbations[0])
            for name, result in evaluations.items()
        },
    }
    for name, where in about.get("sources", {}).items():
        report["models"][name]["source"] = where
    report["perturbations"] = list(settings.perturbations)
    # How the clips were perturbed and the intervals made, for the report's wording.
    report["eval"] = {
        "shuffle": settings.shuffle,
        "freeze_frame": settings.freeze_frame,
        "bootstrap_samples": settings.bootstrap_samples,
    }
    return report


def _reliance_section(
    evaluations: dict[str, EvalResult], out: Path, *, num_classes: int
) -> dict[str, Any]:
    """Per-class reliance on time, a proposed Temporal / Static split (both written to ``out``),
    and each model's gaps compared with the first's."""
    first_name, first = next(iter(evaluations.items()))
    write_reliance_csv(reliance_rows(evaluations), out / "class_reliance.csv")
    proposal = propose_subsets(first)
    write_subsets_file(proposal, out / "proposed_subsets.yaml", model=first_name)
    section: dict[str, Any] = {
        "class_reliance": {"file": "class_reliance.csv", "classes": num_classes},
        "proposed_subsets": {"file": "proposed_subsets.yaml", "model": first_name, **proposal},
        "compared": {},
        "not_compared": {},
    }
    for name, result in list(evaluations.items())[1:]:
        reason = _unpaired_reason(first, result)
        if reason:
            section["not_compared"][name] = reason
        else:
            section["compared"][name] = compare_gaps(first, result)
    return section


def _probe_counts(probe_clips: tuple[int, int] | int | None) -> tuple[int, int] | None:
    """``probe_clips`` as (fit, held out), checked before the shuffle test's work."""
    if probe_clips is None:
        return None
    counts = (probe_clips, probe_clips) if isinstance(probe_clips, int) else probe_clips
    try:
        fit, held_out = (int(count) for count in counts)
    except (TypeError, ValueError):
        fit = held_out = -1
    if fit < 1 or held_out < 1:
        raise ValueError(
            f"probe_clips={probe_clips!r}: give (clips to fit, clips held out), each at least 1, "
            "or one number for both; None leaves the probe out"
        )
    return fit, held_out


def _probe_section(
    models: dict[str, nn.Module],
    loader: Any,
    probe_clips: tuple[int, int],
    scored: int,
    **running: Any,
) -> dict[str, Any]:
    """The order probe of every model, fit on the first of the ``scored`` clips and scored on
    the next ones (half of them each at most)."""
    fit_count = min(probe_clips[0], scored // 2)
    held_out_count = min(probe_clips[1], scored - fit_count)
    results = order_probe(
        list(models.values()),
        loader,
        fit_clips=fit_count,
        held_out_clips=held_out_count,
        **running,
    )
    tables = _split_probe_results(dict(zip(models, results, strict=True)))
    # Chance is 100 / frames per block: a 3-D network's blocks halve the frames as they go.
    chance = {
        name: {block: 100.0 / by_block[block] for block in tables["accuracy"][name]}
        for name, by_block in tables["frames"].items()
    }
    return {"fit_clips": fit_count, "held_out_clips": held_out_count, "chance": chance, **tables}


def run_diagnose(
    cfg: Config,
    specs: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    probe_clips: tuple[int, int] | int | None = (128, 128),
    gradcam_clips: int = 4,
    gradcam_indices: Sequence[int] | None = None,
    evaluations: Sequence[EvalResult] | None = None,
) -> dict:
    """``diagnose`` the models ``specs`` name (timematters checkpoints, ``hf:...``,
    ``torchvision:...``, ``pkg.module:factory``) on the evaluation split of ``cfg``
    (``eval.split``).

    names: row names in the report (default: each checkpoint's run folder, or the spec).
    probe_clips, gradcam_clips, gradcam_indices: as ``diagnose`` takes them.
    evaluations: the runs' own final evaluations with this config, not run again.
    Under torchrun the processes share the shuffle test; rank 0 writes the report (the others
    return {}).
    """
    validate_for_given_model(cfg)  # the models come from the specs, not from cfg.model
    names = list(names) if names is not None else _default_names(specs)
    if len(names) != len(specs):
        raise ValueError(
            f"{len(specs)} models but {len(names)} names ({', '.join(names)}): give one name per "
            "model, in order (--name once per --model), or none for the default names"
        )
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(
            f"the models' names must differ: {', '.join(repeated)} is given to several models"
        )
    report_options = dict(
        probe_clips=probe_clips,
        gradcam_clips=gradcam_clips,
        gradcam_indices=gradcam_indices,
    )
    info = setup_distributed(cfg.train.device)
    try:
        return _run_diagnose(cfg, info, specs, out, names, evaluations, **report_options)
    finally:
        cleanup_distributed()


def _run_diagnose(
    cfg: Config,
    info: DistInfo,
    specs: Sequence[str | Path],
    out: str | Path,
    names: list[str],
    evaluations: Sequence[EvalResult] | None,
    **report_options: Any,
) -> dict:
    device = info.device
    test_set = build_dataset(cfg, cfg.eval.split)
    # Before the shuffle test, the long part (a clip that cannot be decoded only lowers the count).
    _check_positions(report_options["gradcam_indices"] or [], len(test_set))
    models, scored_in, own_order = {}, {}, list(test_set.classes)
    for name, spec in zip(names, specs, strict=True):
        model = load_model(spec, cfg, untrained_classes=len(test_set.classes))
        test_set = in_model_classes(cfg, cfg.eval.split, model, test_set)
        check_classes(model, test_set.classes, spec)
        named = bool(getattr(model, "class_names", None))
        # A model that names no classes scores in the data's own order, as it would alone.
        models[name], scored_in[name] = model.to(device), test_set.classes if named else own_order
    # The clips are labelled in the last naming model's classes (a video list is read in each
    # model's classes in turn): every model must score in those, or its labels are another's.
    reader = next((s for n, s in zip(names, specs, strict=True) if scored_in[n] != own_order), "")
    for name, spec in zip(names, specs, strict=True):
        if list(scored_in[name]) != list(test_set.classes):
            named = "" if getattr(models[name], "class_names", None) else " names no classes and"
            raise ValueError(
                f"--model {spec}{named} numbers the classes otherwise than --model {reader}, "
                "in whose class order the video list is read: diagnose them one at a time (or "
                "fix the order with data.class_list)"
            )
    # Decoded in the loader's workers: the shuffle test, the probe and GradCAM each read the clips.
    loader = build_eval_loader(cfg, test_set)
    if info.enabled and evaluations is None:
        # Under torchrun the processes share the shuffle test, the long part (every clip, every
        # perturbation, every model); rank 0 then probes and draws alone. A folder that cannot
        # take the report is refused before any of it.
        on_main_for_all(lambda: claim_folder(Path(out), **_CLAIM, remove=False))
        if info.is_main:
            print(f"[diagnose] shuffle test: {', '.join(models)} on {info.world_size} processes")
        with clips_normalised(models, cfg.data.mean, cfg.data.std):
            evaluations = evaluate_models(
                list(models.values()),
                build_eval_loader(cfg, test_set, rank=info.rank, world_size=info.world_size),
                classes=test_set.classes,
                subsets=getattr(test_set, "subsets", {}),
                settings=cfg.eval,
                device=device,
                autocast_dtype=autocast_dtype(cfg.train.precision, device),
                progress=cfg.train.progress and info.is_main,
            )  # every process's clips, gathered on each
        if not info.is_main:
            return {}
    return diagnose(
        models,
        loader,
        out,
        classes=test_set.classes,
        subsets=getattr(test_set, "subsets", {}),
        settings=cfg.eval,
        evaluations=evaluations,
        device=device,
        autocast_dtype=autocast_dtype(cfg.train.precision, device),
        progress=cfg.train.progress,
        **report_options,
        mean=cfg.data.mean,
        std=cfg.data.std,
        max_bad_fraction=cfg.data.max_bad_fraction,
        about={
            "dataset": cfg.data.dataset,
            "split": cfg.eval.split,
            "sources": {name: str(spec) for name, spec in zip(names, specs, strict=True)},
        },
    )


def _unpaired_reason(first: EvalResult, other: EvalResult) -> str:
    """Why two evaluations cannot be compared clip by clip ("" when they can)."""
    if len(first.labels) != len(other.labels):
        return f"the models scored different clips ({len(first.labels)} and {len(other.labels)})"
    same_order = np.array_equal(first.labels, other.labels)
    if first.indices is not None and other.indices is not None:
        same_order = same_order and np.array_equal(first.indices, other.indices)
    if not same_order:
        return (
            "the models saw their clips in different orders (a shuffling DataLoader?); no "
            "paired comparison"
        )
    return ""


def _split_probe_results(results: dict[str, dict]) -> dict[str, dict]:
    """Per-model probe results -> the report's tables: accuracy, frames, skipped, unsupported."""
    tables: dict[str, dict] = {"accuracy": {}, "frames": {}, "skipped": {}, "unsupported": {}}
    for name, result in results.items():
        if "unsupported" in result:
            tables["unsupported"][name] = result["unsupported"]
            tables["accuracy"][name] = {}
            continue
        for key in ("accuracy", "frames", "skipped"):
            tables[key][name] = result[key]
    return tables


def _default_names(specs: Sequence[str | Path]) -> list[str]:
    """A checkpoint's run folder (``RUN/checkpoints/last.pth`` -> ``RUN``), else its file name;
    a foreign spec's last part (``hf:/models/videomae`` -> ``videomae``)."""
    names = []
    for spec in specs:
        path = Path(str(spec).split(":", 1)[-1]) if ":" in str(spec) else Path(spec)
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


def _clips_at(
    loader: Any, wanted: dict[int, int], classes: Sequence[str]
) -> tuple[dict[int, torch.Tensor], dict[int, dict]]:
    """The clips of ``wanted`` (dataset index -> position in the evaluation) by position (their
    first view) and what the report says of each, read in one pass that stops once all are in.

    Matched by dataset index, as the evaluation orders its clips: a loader that shuffles, or a
    subset listed in another order, gives the same clips. A batch without indices counts its
    clips in loader order, as the evaluation then does too."""
    clips, infos, seen = {}, {}, 0
    for batch in loader:
        batch = as_batch(batch)
        if "video" not in batch:
            continue
        for j in range(len(batch["video"])):
            index = int(batch["index"][j]) if "index" in batch else seen
            seen += 1
            if index not in wanted:
                continue
            position = wanted[index]
            video = batch["video"][j]
            clips[position] = video[0] if video.ndim == 5 else video  # first view
            label = int(batch["label"][j])
            infos[position] = {
                "index": index,
                "video_id": str(batch["video_id"][j]) if "video_id" in batch else str(index),
                "label": label,
                "class": classes[label] if label < len(classes) else str(label),
                "confidence": {},
            }
        if len(clips) == len(wanted):
            break
    return clips, infos


def _gradcam(
    models, loader, positions, evaluations: dict[str, EvalResult], out: Path, mean, std
) -> dict:
    """GradCAM of the clips at ``positions`` (in the evaluation's order of scored clips), each
    of its first view; p is each model's confidence as evaluated (all of the clip's views)."""
    evaluation = next(iter(evaluations.values()))
    indices = (
        evaluation.indices if evaluation.indices is not None else range(len(evaluation.labels))
    )
    wanted = {int(indices[p]): p for p in positions}
    clips, infos = _clips_at(loader, wanted, evaluation.classes)
    order = [p for p in positions if p in clips]
    if not order:
        return {"clips": []}
    video = torch.stack([clips[p] for p in order])  # [N, C, T, H, W]
    infos = [infos[p] for p in order]
    targets = [info["label"] for info in infos]
    maps, skipped = {}, {}
    for name, model in models.items():
        on_device = video.to(next(model.parameters()).device)
        # The evaluation's probability, its views aggregated: the first view's alone would
        # differ from what the tables score with several test views.
        probs = evaluations[name].probs
        for info, position in zip(infos, order, strict=True):
            info["confidence"][name] = float(probs[position, info["label"]])
        reason = gradcam_unsupported(model)
        if reason:
            skipped[name] = reason
            continue
        try:
            maps[name] = video_gradcam(model, on_device, targets)
        # A model's stated limits (no GradCAM layer, one block, tokens off the graph): keep the
        # rest of a long run's report, which names the reason. Anything else is a bug: raised.
        except (RuntimeError, NotImplementedError, ValueError) as error:
            print(f"[diagnose] GradCAM: skipping {name}: {error}", flush=True)
            skipped[name] = str(error)
    if not maps:
        return {"clips": [], "skipped": skipped}
    np.savez_compressed(
        out / "gradcam.npz",
        clips=np.array([info["index"] for info in infos]),
        **{f"maps_{name}": m.astype(np.float16) for name, m in maps.items()},
    )
    from timematters.diagnostics import plots

    frames = plots.denormalise(video.numpy(), mean, std)  # [N, T, H, W, C]
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
    from timematters.diagnostics import plots  # matplotlib, only when drawing

    first = data["perturbations"][0]
    plots.plot_shuffle_bars(
        data["shuffle_test"], out / "shuffle_accuracy.png", label=METRIC_PREFIX[first]
    )
    plots.plot_confidence_gap_histogram(
        data["confidence_gap"], out / "confidence_gap.png", label=METRIC_PREFIX[first]
    )
    rows = read_reliance_csv(out / "class_reliance.csv")
    if rows:
        plots.plot_class_gaps(rows, gap_key(first), out / "class_gaps.png")
    probe = data.get("order_probe")
    if probe and any(probe["accuracy"].values()):
        chances = {chance for by_block in probe["chance"].values() for chance in by_block.values()}
        plots.plot_order_probe(
            {name: acc for name, acc in probe["accuracy"].items() if acc},
            out / "order_probe.png",
            chance=chances.pop() if len(chances) == 1 else None,  # no one line for them all
        )
