"""The training loop: ``setup_run``, ``train_one_epoch``, ``train_step``, evaluation and
checkpoints, in the spirit of MAE's ``engine_finetune.py``: setup, one epoch, one step.

One loop serves `timematters train`, the demo and the benchmarks. It runs alone or as one of N
torchrun processes (DistributedDataParallel); rank 0 writes the run folder. Everything a run holds
lives in one ``Run``, built once by ``setup_run``; the functions below take it.

Exact resume: every random draw of a step is a pure function of (seed, rank, step) — dropout and
drop-path reseed at the start of each step, frame shuffles use a generator seeded the same way,
each clip's augmentation is seeded by (seed, epoch, index) — so a run resumed from any checkpoint
computes the very losses an uninterrupted one does, and no RNG state needs saving.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from timematters.backbones.adapters import is_foreign_spec
from timematters.backbones.pretrained import load_pretrained, weights_normalisation
from timematters.config import Config, ConfigError, config_to_dict, save_config, validate
from timematters.data.build import (
    build_dataset,
    build_eval_loader,
    build_flow_labeller,
    ignore_stop_signals,
    loader_workers,
)
from timematters.data.collate import (
    BadVideo,
    BadVideoLog,
    batch_size,
    check_bad_share,
    collate_videos,
)
from timematters.data.samplers import SeededSamples, SkipFirst
from timematters.engine.backgrounds import (
    BackgroundsResult,
    absent_variations_note,
    evaluate_backgrounds,
    format_backgrounds_table,
    present_variations,
)
from timematters.engine.checkpoint import (
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from timematters.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    all_reduce_sum,
    autocast_dtype,
    broadcast_buffers,
    cleanup_distributed,
    on_main_for_all,
    out_of_memory,
    setup_distributed,
)
from timematters.engine.evaluate import EvalResult, evaluate, format_table
from timematters.engine.metrics import RunLog, copy_output, flatten_metrics, to_json
from timematters.engine.model import align_classifier, build_model, model_flow_grid
from timematters.engine.optim import build_optimizer, lr_at, set_lr
from timematters.engine.prefetch import FlowLabelPrefetcher
from timematters.engine.runs import (
    Interrupted,
    RunShape,
    StopSignals,
    check_resume,
    claim_folder,
    claim_run_folder,
    discard_aside,
    first_new_folder,
    hold_run_folder,
    labels_digest,
    refuse_inside_a_run,
    remove_run_files,
    restore_aside,
    resume_notes,
)
from timematters.flow.farneback import configure_opencv_threads
from timematters.flow.labeller import FlowLabeller
from timematters.losses.mixing import mix_clips
from timematters.losses.objective import TimeModel, objective_for_model
from timematters.progress import progress_bar

StepCallback = Callable[[int, dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Progress:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    nonfinite_steps: int = 0
    saved_step: int = -1  # the step of the last checkpoint written
    # The log's length before the final evaluation, once it is done (at this step): a resume that
    # trains further cuts it away, a resume with nothing left to do keeps it.
    final_eval_lines: int | None = None
    best_top1: float = -math.inf  # the best evaluation's top-1 (all clips) so far, and when
    best_epoch: int = -1


@dataclass
class Run:
    """One training run: the config, the model and its optimiser, the data, the logs."""

    cfg: Config
    info: DistInfo
    run_dir: Path
    model: TimeModel
    ddp_model: nn.Module  # ``model``, wrapped for DDP when there are several processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_set: SeededSamples
    sampler: DistributedSampler
    eval_loader: DataLoader
    classes: list[str]
    subsets: dict[str, list[int]]
    local_batch: int  # clips per process and micro-batch
    steps_per_epoch: int
    flow_on_device: FlowLabeller | None  # flow.backend=torch: labels made on the device
    log: RunLog
    bad_log: BadVideoLog
    shape: RunShape
    progress: Progress = field(default_factory=Progress)
    step_callback: StepCallback | None = None
    stop: StopSignals = field(default_factory=StopSignals)
    # The weights --init-from started the run from ("" for none): a resumed run's from its
    # checkpoint, so that an export's model card can say where the training began.
    init_from: str = ""

    @property
    def max_steps(self) -> float:
        return self.cfg.train.max_steps or math.inf


def train(
    cfg: Config,
    *,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    step_callback: StepCallback | None = None,
    overwrite: bool = False,
    replace_partial: bool = False,
) -> dict[str, Any]:
    """Train (and evaluate) as ``cfg`` says; returns the final metrics and the run folder.

    resume: a checkpoint to continue exactly (weights, optimizer, schedule, data position); the
        run's config must match the checkpoint's (``runs.RESUME_FREE`` lists what may change).
    init_from: a checkpoint or weights file to start from (weights only, embeddings resized).
    step_callback(step, record): called after every optimizer step (tests, the demo's progress).
    overwrite: replace a run already in ``train.out`` (refused otherwise).
    replace_partial: replace only a run that left no checkpoint (``--resume auto``); another
        command's output is refused as without ``overwrite``.
    While the run lives its folder is locked: a second command for it is refused.
    SIGINT / SIGTERM stop the run after the current step with a checkpoint (``Interrupted``).
    """
    validate(cfg)
    if resume is not None:
        _check_resume_folder(Path(resume), Path(cfg.train.out))
    info = setup_distributed(cfg.train.device)
    out, fresh = Path(cfg.train.out), resume is None
    created = first_new_folder(out)
    try:
        with (
            StopSignals() as stop,
            contextlib.ExitStack() as lock,
            contextlib.ExitStack() as log_copy,
        ):
            replaced: list[Path] = []  # an overwritten run, set aside until this one begins

            def claim() -> None:  # locked, then refused before anything in it is touched
                if fresh:
                    refuse_inside_a_run(out)
                lock.enter_context(hold_run_folder(out))
                if fresh:
                    aside = claim_run_folder(
                        out, overwrite=overwrite or replace_partial, partial_only=replace_partial
                    )
                    replaced.extend([aside] if aside is not None else [])

            on_main_for_all(claim)
            if fresh:  # logged from the first line on
                log_copy.enter_context(copy_output(out / "train.log", enabled=info.is_main))
            try:
                run = setup_run(
                    cfg, info, resume=resume, init_from=init_from, step_callback=step_callback
                )
            except BaseException:
                # A new run that failed before its first step (a wrong list, a model that does
                # not fit) trained nothing: its files go, so the corrected command is not refused.
                log_copy.close()
                if fresh and info.is_main:
                    lock.close()
                    remove_run_files(out, created=created)
                    for aside in replaced:  # --overwrite of a command that never began
                        restore_aside(aside)
                raise
            for aside in replaced:
                discard_aside(aside)
            unreached = _unreached_milestones(cfg)
            if unreached and info.is_main:  # a shortened run of a step-schedule preset, say
                print(
                    f"[train] note: optim.milestones {', '.join(map(str, unreached))} are not "
                    f"before train.epochs={cfg.train.epochs}: the lr does not fall there"
                )
            if not fresh:  # a refused resume must not touch the run's log: only now
                log_copy.enter_context(copy_output(out / "train.log", enabled=info.is_main))
                if info.is_main:
                    progress = run.progress
                    print(f"[train] resumed {resume}: step {progress.step}, epoch {progress.epoch}")
            run.stop = stop
            try:
                result = fit(run)
            except Interrupted as error:  # the CLI says it once the copy is closed: log it here
                if info.is_main:
                    sys.stdout.flush()
                    with (out / "train.log").open("a") as log_file:
                        log_file.write(f"timematters: {error}\n")
                raise
            if stop.requested is not None and info.is_main:  # no step was left to stop after
                print(f"[train] {stop.requested.name} came after the last step: the run finished")
            log_copy.close()
            result["summary"] = run_summary(run)
            if info.is_main:  # the closing screen in the log too, though the caller prints it
                table = format_table({cfg.model.name: result["metrics"]})
                with (run.run_dir / "train.log").open("a") as log_file:
                    log_file.write(f"{table}\n{result['summary']}\n")
            return result
    finally:
        cleanup_distributed()


def _check_resume_folder(checkpoint: Path, out: Path) -> None:
    """A resumed run continues in its own folder: its metrics, best.pth and logs are there."""
    if checkpoint.parent.name != "checkpoints":
        if not checkpoint.is_file():
            return  # not a checkpoint: loading it says what it is
        # A loose checkpoint file: the run goes on in train.out, which must hold no other run
        # (its log, best.pth and config would mix with this one's).
        own = out / "checkpoints" / "last.pth"
        continue_it = f"resume its own checkpoint, {own}, or " if own.is_file() else ""
        claim_folder(
            out,
            kind="a run",
            overwrite=False,
            remove=False,
            fix=f"--resume {checkpoint} continues a run in a folder of its own: {continue_it}"
            "choose another train.out",
        )
        return
    run_folder = checkpoint.parent.parent
    if run_folder.resolve() != out.resolve():
        raise ConfigError(
            f"--resume {checkpoint} continues the run in {run_folder}, but train.out={out}: set "
            f"train.out={run_folder} (or copy the run folder to {out} and resume the copy's "
            f"checkpoint, {out / 'checkpoints' / checkpoint.name}, with train.out={out})"
        )


def setup_run(
    cfg: Config,
    info: DistInfo,
    *,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    step_callback: StepCallback | None = None,
) -> Run:
    """Build everything a run needs, in the order that fixes its random draws (a new run's
    folder is claimed by ``train`` first)."""
    run_dir = Path(cfg.train.out)
    state = load_checkpoint(resume) if resume else None
    device = info.device
    torch.manual_seed(cfg.train.seed)

    # Data. Flow labels come from the loader (OpenCV) or from the training step (torch).
    # A resumed foreign model is rebuilt from what its checkpoint recorded, not from its source.
    architecture = state and state.get("architecture")
    needs_flow = cfg.loss.flow.weight != 0
    patch_size, frame_step = (
        model_flow_grid(cfg, architecture=architecture) if needs_flow else (1, 1)
    )
    flow_in_loader = needs_flow and cfg.flow.backend == "opencv"
    if flow_in_loader:
        configure_opencv_threads(1)  # once, in the parent: forked workers would deadlock
    train_set = build_dataset(
        cfg, "train", flow_labels=flow_in_loader, patch_size=patch_size, frame_step=frame_step
    )
    test_set = build_dataset(cfg, cfg.eval.split)
    if cfg.data.dataset == "imagenet9":  # said now, not after the training: a typo is refused
        absent = present_variations(cfg)[1]
        if absent and info.is_main:
            print(f"[train] {absent_variations_note(cfg, absent)}")
    num_classes = cfg.model.num_classes or len(train_set.classes)
    if num_classes != len(train_set.classes):  # labels past the outputs fail in the loss
        raise ConfigError(
            f"model.num_classes={num_classes} but the data has {len(train_set.classes)} classes: "
            f"set model.num_classes={len(train_set.classes)} (or 0, the data's)"
        )

    backbone = build_model(cfg, num_classes, architecture=architecture)
    if state is None and align_classifier(backbone, list(train_set.classes)) and info.is_main:
        print(
            f"[train] {cfg.model.name} names the data's {num_classes} classes in another order: "
            "its classifier's outputs are put in the data's order"
        )
    if getattr(backbone, "zero_shot", False):
        raise ConfigError(
            f"{cfg.model.name} is a zero-shot video-text model: eval, diagnose and predict score "
            "it on a dataset's classes; training it is not supported"
        )
    if hasattr(backbone, "check_input"):  # a foreign model built for another clip: said now,
        # while the new run's folder is still removed, not at its first step
        size = cfg.data.crop_size
        backbone.check_input(torch.empty(1, 3, cfg.model.num_frames, size, size, device="meta"))
    try:
        objective = objective_for_model(backbone, cfg.loss)
    except ValueError as error:  # a loss the model cannot give: the message names the key
        raise ConfigError(str(error)) from None
    # A foreign model came with its weights; the TIME heads of a checkpoint go into the objective.
    # A resumed run's weights are its checkpoint's, and --init-from's replace model.pretrained:
    # then the latter (a file, a hub download) is not read.
    replaced = is_foreign_spec(cfg.model.name) or state is not None or bool(init_from)
    pretrained = "" if replaced else cfg.model.pretrained
    for key, weights in (("model.pretrained", pretrained), ("--init-from", init_from)):
        if not weights:
            continue
        try:
            report = load_pretrained(backbone, weights, objective=objective)
        except (FileNotFoundError, ValueError) as error:  # which setting named the weights
            raise ConfigError(f"{key}: {error}") from None
        for line in report.describe() if info.is_main else []:  # printed: in train.log too
            print(f"[train] {weights}: {line}")
        trained_on = weights_normalisation(weights)
        given = (tuple(cfg.data.mean), tuple(cfg.data.std))
        if trained_on is not None and trained_on != given and info.is_main:
            print(
                f"[train] note: {weights} was trained on images normalised with mean "
                f"{trained_on[0]}, std {trained_on[1]}, the data with data.mean={given[0]}, "
                f"data.std={given[1]}; set those to its own unless you mean to fine-tune across"
            )
    model = TimeModel(backbone, objective).to(device)
    ddp_model = model
    if info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=device_ids)
    if cfg.train.compile:
        # The step's module only: checkpoints, evaluation and diagnostics use ``model`` as built.
        ddp_model = torch.compile(ddp_model, backend=cfg.train.compile_backend)
    optimizer = build_optimizer(model, cfg.optim)
    if cfg.optim.layer_decay != 1 and info.is_main:
        lowest = min(group["lr_scale"] for group in optimizer.param_groups)
        print(
            f"[train] optim.layer_decay={cfg.optim.layer_decay}: lr x {lowest:.3g} for the "
            "embeddings, rising block by block to x 1 for the final norm, classifier and TIME heads"
        )
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    world, accumulation = info.world_size, cfg.train.accumulation
    if cfg.train.batch_size % (world * accumulation):  # every process meets it: rank 0 says it
        parts = world * accumulation
        lower = cfg.train.batch_size // parts * parts
        fits = f"{lower} or {lower + parts}" if lower else str(parts)
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by processes x "
            f"train.accumulation = {world} x {accumulation}: set train.batch_size={fits}"
        )
    local_batch = cfg.train.batch_size // (world * accumulation)
    seeded_train = SeededSamples(train_set, cfg.train.seed)
    sampler = DistributedSampler(
        seeded_train,
        num_replicas=world,
        rank=info.rank,
        shuffle=True,
        seed=cfg.train.seed,
        drop_last=True,
    )
    steps_per_epoch = len(sampler) // local_batch // accumulation
    if steps_per_epoch == 0:
        largest = len(sampler) // accumulation * world * accumulation  # a whole step per rank
        fix = f"set train.batch_size={largest} or lower" if largest else "give it more clips"
        raise ConfigError(  # every rank meets it: rank 0 says it
            f"the training set ({len(train_set)} clips) is smaller than one global batch "
            f"(train.batch_size={cfg.train.batch_size}): {fix}"
        )

    shape = RunShape(
        train_clips=len(train_set),
        world_size=world,
        # A dataset that names no labels (a user's wrapper) is not checked.
        train_labels=labels_digest(getattr(train_set, "labels", None)),
    )
    progress = Progress()
    if state is not None:
        check_resume(state, cfg, shape, Path(resume))
        for note in resume_notes(state["config"], cfg) if info.is_main else []:
            print(f"[train] note: {note}")
        model.backbone.load_state_dict(state["model"])
        model.objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(
            epoch=state["epoch"],
            step=state["step"],
            nonfinite_steps=state["nonfinite_steps"],
            saved_step=state["step"],
            final_eval_lines=state["final_eval_lines"],
            best_top1=state.get("best_top1", -math.inf),
            best_epoch=state.get("best_epoch", -1),
        )
        keep_lines = state["log_lines"]
        if progress.final_eval_lines is not None and _steps_left(cfg, progress):
            keep_lines, progress.final_eval_lines = progress.final_eval_lines, None
    if info.is_main:  # only now: a refused resume must not touch the run's files
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    bad_log = BadVideoLog(run_dir / "bad_videos.jsonl")
    if state is not None:
        bad_log.merge([BadVideo(**video) for video in state["bad_videos"]])
        last = run_dir / "checkpoints" / "last.pth"
        if Path(resume).resolve() != last.resolve():
            # A resume from an earlier checkpoint (best.pth) takes the run back there, its log
            # cut to match: a newer last.pth left in place would be what a kill before the next
            # checkpoint resumes from, past the end of the cut log.
            on_main_for_all(lambda: copy_checkpoint(resume, last))

    eval_loader = build_eval_loader(cfg, test_set, rank=info.rank, world_size=world)
    flow_on_device = None
    if objective.needs_flow_labels and cfg.flow.backend == "torch":
        flow_on_device = build_flow_labeller(cfg, patch_size, frame_step)
    return Run(
        cfg=cfg,
        info=info,
        run_dir=run_dir,
        model=model,
        ddp_model=ddp_model,
        optimizer=optimizer,
        scaler=scaler,
        amp_dtype=amp_dtype,
        train_set=seeded_train,
        sampler=sampler,
        eval_loader=eval_loader,
        classes=list(train_set.classes),
        subsets=getattr(train_set, "subsets", {}),
        local_batch=local_batch,
        steps_per_epoch=steps_per_epoch,
        flow_on_device=flow_on_device,
        log=RunLog(
            run_dir,
            enabled=info.is_main,
            tensorboard=cfg.train.tensorboard,
            keep_lines=keep_lines if state is not None else None,
            wandb=cfg.train.wandb,
            config=config_to_dict(cfg),
        ),
        bad_log=bad_log,
        shape=shape,
        progress=progress,
        step_callback=step_callback,
        init_from=str(init_from or (state or {}).get("init_from", "")),
    )


def fit(run: Run) -> dict[str, Any]:
    """Epochs until ``train.epochs`` (or ``train.max_steps``), then the final evaluation.

    At each epoch's end the evaluation (when due) comes before the checkpoint, so a run killed
    during it redoes it after the resume instead of losing its record.
    """
    cfg, progress = run.cfg, run.progress
    if progress.final_eval_lines is not None:
        if run.info.is_main:
            print(f"[train] {run.run_dir} finished at step {progress.step}: nothing left to do")
        metrics = _final_evaluation(run)
        # A run its final evaluation stopped (too many undecodable test videos) stays stopped.
        row = metrics.get("all", {})
        scored, bad = row.get("num_clips", 0), row.get("num_bad", 0)
        listed = run.run_dir / EVAL_BAD_VIDEOS
        check_bad_share(
            bad, scored + bad, cfg.data.max_bad_fraction, listed=listed if bad else None
        )
        # Table 4 comes after the last checkpoint: a run killed during it, or stopped by its
        # undecodable images, does it again (deterministic: the same table, the same stop).
        folder = run.run_dir
        if cfg.data.dataset == "imagenet9" and (
            not (folder / "backgrounds.json").is_file() or (folder / TABLE4_BAD_IMAGES).is_file()
        ):
            _table4(run)
        return {"run_dir": run.run_dir, "metrics": metrics, "result": None, "steps": progress.step}
    while _steps_left(cfg, progress):
        epoch = progress.epoch
        train_one_epoch(run, epoch_loader(run))
        if progress.step - epoch * run.steps_per_epoch < run.steps_per_epoch:
            break  # stopped by max_steps inside the epoch
        progress.epoch += 1
        every = cfg.train.eval_every_epochs
        best = False
        if every and progress.epoch % every == 0 and progress.epoch < cfg.train.epochs:
            result = evaluate_run(run)
            # Too many undecodable test videos stop the run at its first evaluation, not after
            # all the training (before the checkpoint: a resume stops here again).
            result.check_bad(cfg.data.max_bad_fraction, _eval_bad_path(run))
            best = _record_if_best(run, result)
        _save_epoch_checkpoints(run, best=best)
        _stop_if_asked(run)

    if progress.saved_step != progress.step:
        save_run_checkpoint(run, "last.pth")
    lines_before = run.log.lines
    result = evaluate_run(run)
    metrics = result.metrics()

    def write() -> None:  # on rank 0; a failed write is raised on every rank
        (run.run_dir / "eval.json").write_text(to_json(metrics))
        (run.run_dir / "eval.md").write_text(format_table({cfg.model.name: metrics}) + "\n")
        if run.bad_log.bad:
            run.bad_log.write()

    on_main_for_all(write)
    progress.final_eval_lines = lines_before
    # A train.max_steps stop before train.epochs is no epoch's end: a resume cuts its evaluation
    # from the log and trains on, so it may not become best.pth, which would then differ from
    # the run never stopped.
    finished = progress.epoch >= cfg.train.epochs
    best = finished and _record_if_best(run, result)
    _save_epoch_checkpoints(run, best=best)
    run.log.close()
    result.check_bad(cfg.data.max_bad_fraction, _eval_bad_path(run))
    if cfg.data.dataset == "imagenet9":  # images: Table 4's variations, not a frame shuffle
        _table4(run)
    return {"run_dir": run.run_dir, "metrics": metrics, "result": result, "steps": progress.step}


def _table4(run: Run) -> None:
    """Table 4 of an ImageNet-9 run, stopped (after its table is written) by too many
    undecodable images in a variation."""
    backgrounds = _evaluate_backgrounds(run)
    listed = run.run_dir / TABLE4_BAD_IMAGES if run.info.is_main else None
    if listed is not None:
        listed.unlink(missing_ok=True)  # a resume's list replaces the one before
    if backgrounds is not None:
        backgrounds.check_bad(run.cfg.data.max_bad_fraction, listed)


TABLE4_BAD_IMAGES = "backgrounds_bad_images.jsonl"  # Table 4's images that could not be decoded


def _evaluate_backgrounds(run: Run) -> BackgroundsResult | None:
    """The Backgrounds Challenge (Table 4) on the test variations under ``data.root``:
    ``backgrounds.json`` and ``backgrounds.md`` (variations not there are named)."""
    cfg = run.cfg
    present, absent = present_variations(cfg)
    if absent and run.info.is_main:
        print(f"[train] {absent_variations_note(cfg, absent)}")
    if not present:
        return None
    result = evaluate_backgrounds(
        run.model.backbone, cfg, run.classes, run.info.device, variations=tuple(present)
    )
    if run.info.is_main:
        table = format_backgrounds_table({cfg.model.name: result.accuracy})
        (run.run_dir / "backgrounds.json").write_text(to_json(result.accuracy))
        (run.run_dir / "backgrounds.md").write_text(table + "\n")
    return result


EVAL_BAD_VIDEOS = "eval_bad_videos.jsonl"  # the test videos an evaluation could not decode


def _eval_bad_path(run: Run) -> Path | None:
    """Where the test videos that could not be decoded are listed (rank 0 writes it)."""
    return run.run_dir / EVAL_BAD_VIDEOS if run.info.is_main else None


def _record_if_best(run: Run, result: EvalResult) -> bool:
    """Whether ``result``'s top-1 over all clips is the best so far (then recorded in the run's
    progress, so that the checkpoint written next carries it)."""
    top1 = result.metrics()["all"]["top1"]
    progress = run.progress
    if not math.isfinite(top1) or top1 <= progress.best_top1:
        return False
    progress.best_top1, progress.best_epoch = top1, progress.epoch
    return True


def _save_epoch_checkpoints(run: Run, *, best: bool) -> None:
    """``last.pth``, and ``best.pth`` (the same) when this evaluation is the best so far.

    ``best.pth`` is written first: a kill between the two leaves the previous ``last.pth``, whose
    resume redoes this epoch and its evaluation (exactly) and writes both again. The other order
    could leave a ``last.pth`` that records a best which ``best.pth`` does not hold, for good."""
    if not best:
        save_run_checkpoint(run, "last.pth")
        return
    save_run_checkpoint(run, "best.pth")
    folder = run.run_dir / "checkpoints"
    on_main_for_all(lambda: copy_checkpoint(folder / "best.pth", folder / "last.pth"))


def run_summary(run: Run) -> str:
    """One screen: where everything the run wrote is, and what is off."""
    progress, folder = run.progress, run.run_dir
    lines = [f"run folder: {folder}"]

    def line(name: str, note: str) -> None:
        lines.append(f"  {name:<24} {note}")

    line("config.yaml", "the resolved config (what --resume and eval read)")
    line("checkpoints/last.pth", f"step {progress.step}, epoch {progress.epoch}")
    if progress.best_epoch >= 0:
        line("checkpoints/best.pth", f"epoch {progress.best_epoch}, top-1 {progress.best_top1:.1f}")
    images = run.cfg.data.dataset == "imagenet9"  # one frame: no order to shuffle
    line(
        "eval.json, eval.md",
        f"the final evaluation ({'original images' if images else 'original / shuffled / gap'})",
    )
    if (folder / "backgrounds.json").is_file():
        line("backgrounds.json, .md", "the Backgrounds Challenge (Table 4) and its BG-Gap")
    line("metrics.jsonl", f"{run.log.lines} records (every {run.cfg.train.log_every} steps)")
    line("train.log", "what was printed")
    if run.log.writer is not None:
        line("tensorboard/", f"tensorboard --logdir {folder}")
    else:
        line("TensorBoard", run.log.tensorboard_status)
    if run.log.wandb is not None:
        line("Weights & Biases", run.log.wandb_status)
    if run.bad_log.bad:
        line("bad_videos.jsonl", f"{run.bad_log.bad} training videos could not be used")
    if (folder / EVAL_BAD_VIDEOS).is_file():
        line(EVAL_BAD_VIDEOS, "test videos that could not be decoded (not scored)")
    if (folder / TABLE4_BAD_IMAGES).is_file():
        line(TABLE4_BAD_IMAGES, "Table 4's images that could not be decoded")
    if progress.nonfinite_steps:  # their updates were not applied: a run that learned nothing?
        line(
            "skipped steps",
            f"{progress.nonfinite_steps} of {progress.step} had a non-finite loss or gradient",
        )
    return "\n".join(lines)


def _unreached_milestones(cfg: Config) -> list[int]:
    """The step schedule's milestones that the run never reaches (none for other schedules)."""
    if cfg.optim.schedule != "step" or cfg.optim.gamma == 1:
        return []
    return [m for m in cfg.optim.milestones if m >= cfg.train.epochs]


def _steps_left(cfg: Config, progress: Progress) -> bool:
    max_steps = cfg.train.max_steps or math.inf
    return progress.epoch < cfg.train.epochs and progress.step < max_steps


def _stop_if_asked(run: Run) -> None:
    """``_stop`` on every rank when any rank caught a stop signal."""
    asked = float(run.stop.requested is not None)
    if all_reduce_sum(torch.tensor([asked])).item() > 0:
        _stop(run)


def _stop(run: Run) -> None:
    """Write the checkpoint of the current step (unless written) and raise ``Interrupted``."""
    if run.progress.saved_step != run.progress.step:
        save_run_checkpoint(run, "last.pth")
    name = run.stop.requested.name if run.stop.requested else "a signal on another rank"
    stopped = f"stopped by {name} after step {run.progress.step}"
    raise Interrupted(
        f"{stopped}; the checkpoint {run.run_dir / 'checkpoints' / 'last.pth'} continues it "
        "with --resume",
        exit_code=128 + int(run.stop.requested or signal.SIGTERM),
        stopped=stopped,
    )


def _final_evaluation(run: Run) -> dict[str, Any]:
    """A finished run's ``eval.json``, or a one-line error naming it and how to remake it."""
    path = run.run_dir / "eval.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        last = run.run_dir / "checkpoints" / "last.pth"
        raise ConfigError(
            f"the run in {run.run_dir} is finished but its {path.name} cannot be read "
            f"({getattr(error, 'strerror', None) or error}): `timematters eval "
            f"{run.run_dir / 'config.yaml'} --checkpoint {last}` evaluates it again, into "
            f"{last.with_suffix('')}_eval/ (its eval.json copied here makes the run whole)"
        ) from None


def epoch_loader(run: Run) -> DataLoader:
    """The training batches of the current epoch, from where a resumed run left off."""
    epoch = run.progress.epoch
    run.train_set.epoch = epoch
    run.sampler.set_epoch(epoch)
    done_in_epoch = run.progress.step - epoch * run.steps_per_epoch
    skip = done_in_epoch * run.cfg.train.accumulation * run.local_batch
    return DataLoader(
        run.train_set,
        batch_size=run.local_batch,
        sampler=SkipFirst(run.sampler, skip),
        num_workers=loader_workers(run.cfg.data.num_workers),
        collate_fn=collate_videos,
        drop_last=True,
        pin_memory=run.info.device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals,
        # Its own generator: the loader's worker seeds do not draw from the global RNG.
        generator=torch.Generator().manual_seed(run.cfg.train.seed * 1_000_003 + epoch),
    )


def train_one_epoch(run: Run, loader: DataLoader) -> None:
    """Optimizer steps over ``loader`` until the epoch (or ``train.max_steps``) is done."""
    cfg, progress = run.cfg, run.progress
    epoch_end = min((progress.epoch + 1) * run.steps_per_epoch, run.max_steps)
    bar = progress_bar(
        total=epoch_end - progress.step,
        desc=f"epoch {progress.epoch + 1}/{cfg.train.epochs}",
        disable=not (cfg.train.progress and run.info.is_main),
        leave=False,
    )
    run.ddp_model.train()
    batches: Iterable[dict[str, Any]] = loader
    if run.flow_on_device is not None:  # labelled one batch ahead (on CUDA, behind the step)
        batches = FlowLabelPrefetcher(loader, run.flow_on_device, run.info.device)
    try:
        _train_steps(run, batches, epoch_end, bar)
    except torch.cuda.OutOfMemoryError as error:
        raise out_of_memory(
            error, f"in training step {progress.step + 1}", _memory_fix(run)
        ) from None
    finally:  # a stop's message, or an error's, then begins a line of its own
        bar.close()


def _train_steps(run: Run, batches: Iterable[dict[str, Any]], epoch_end: int, bar: Any) -> None:
    """``train_one_epoch``'s loop: micro-batches gathered into steps, each logged."""
    cfg, progress = run.cfg, run.progress
    # Every step takes train.accumulation batches, used or not: an epoch keeps its number of
    # steps, and a resume skips exactly the batches the steps before it took.
    taken: list[dict[str, Any] | None] = []
    tic = time.perf_counter()
    for batch in batches:
        if progress.step >= epoch_end:
            break
        skip, stop = _account_for_batch(run, batch)
        if stop:
            _stop(run)
        taken.append(None if skip else batch)  # skipped: all its videos bad (on some rank)
        if len(taken) < cfg.train.accumulation:
            continue
        micro_batches, taken = [b for b in taken if b is not None], []
        if not micro_batches:  # nothing to learn from: the step passes without an update
            progress.step += 1
            _after_step(run, bar)
            continue
        terms, grad_norm = train_step(run, micro_batches)
        toc = time.perf_counter()
        record = {
            "kind": "train",
            "epoch": progress.epoch,
            "step": progress.step,
            "lr": _base_lr(run.optimizer),
            **terms,
            "grad_norm": grad_norm,
            "clips_per_s": cfg.train.batch_size * cfg.data.repeated_augmentation / (toc - tic),
            "nonfinite_steps": progress.nonfinite_steps,
            "bad_videos": run.bad_log.bad,
        }
        tic = toc
        if progress.step % cfg.train.log_every == 0 or progress.step == 1:
            # rank 0 writes; a failed write (a full disk) is raised on every rank, not only there
            on_main_for_all(functools.partial(run.log.write, record))
        losses = {k.removesuffix("_loss"): v for k, v in record.items() if k.endswith("loss")}
        # refresh=False: the update below redraws when the bar's interval says (a log file: 30 s).
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        if run.step_callback is not None:
            run.step_callback(progress.step, record)
        _after_step(run, bar)


def _after_step(run: Run, bar: Any) -> None:
    """A step's end, whether it updated the model or not: the bar, and the periodic checkpoint."""
    bar.update()
    every = run.cfg.train.save_every_steps
    if every and run.progress.step % every == 0:
        save_run_checkpoint(run, "last.pth")


def _memory_fix(run: Run) -> str:
    """The settings that make a training step need less memory, for this run."""
    cfg = run.cfg
    clips = run.local_batch * cfg.data.repeated_augmentation
    shuffled = (
        " (twice that through the backbone with the debias loss)" if cfg.loss.debias.weight else ""
    )
    fixes = []
    if clips > 1:
        accumulation = cfg.train.accumulation * 2
        fixes.append(
            f"train.accumulation={accumulation} (the same train.batch_size in passes of half "
            "the clips)"
        )
    if not cfg.model.grad_checkpointing:
        fixes.append("model.grad_checkpointing=true (activations recomputed block by block)")
    if run.amp_dtype is None and run.info.device.type == "cuda":
        fixes.append("train.precision=bf16")
    fixes.append("a smaller data.crop_size or model.num_frames")
    return f"{clips} clips per pass on this device{shuffled}; set " + ", or ".join(fixes)


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's lr: a group's lr over its layer-decay scale (``optim.layer_decay``)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def _account_for_batch(run: Run, batch: dict[str, Any]) -> tuple[bool, bool]:
    """(skip the batch, stop the run): what every rank must agree on before a batch, in one
    collective.

    A batch empty on any rank (all its videos bad) is skipped by every rank together, or DDP
    would hang; new bad videos are exchanged, so every rank's log and limit check sees them all;
    a stop signal caught by any rank stops every rank at the same step.
    """
    new_bad = run.bad_log.update(batch)
    asked = float(run.stop.requested is not None)
    flags = torch.tensor([float(batch_size(batch) == 0), float(len(new_bad)), asked])
    any_empty, any_new, any_stop = all_reduce_sum(flags).tolist()
    if any_new and run.info.enabled:
        for videos in all_gather_objects(new_bad):
            run.bad_log.merge(videos)
    if any_new:  # in the folder as they are found, not at the run's end (rank 0 writes)
        on_main_for_all(run.bad_log.write)
    run.bad_log.check(run.cfg.data.max_bad_fraction, total=run.shape.train_clips)
    return any_empty > 0, any_stop > 0


def train_step(run: Run, micro_batches: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    """One optimizer step over ``train.accumulation`` micro-batches.

    Returns the loss terms (averaged over micro-batches and ranks) and the gradient norm (NaN
    when the step was skipped for a non-finite loss).
    """
    cfg, info, progress = run.cfg, run.info, run.progress
    device = info.device
    # Dropout and drop-path draw from the global RNG: a pure function of (seed, rank, step).
    torch.manual_seed(step_seed(cfg.train.seed, rank=info.rank, step=progress.step))
    lr = lr_at(progress.step / run.steps_per_epoch, cfg.optim, cfg.train.epochs)
    set_lr(run.optimizer, lr)
    shuffles = shuffle_stream(cfg, step=progress.step, rank=info.rank)
    sums: dict[str, torch.Tensor] = {}
    skipped = False
    for i, batch in enumerate(micro_batches):
        batch = _to_device(batch, device)  # (with flow.backend=torch, labelled by the prefetcher)
        batch = _mix(run, batch, micro_batch=i)
        last = i == len(micro_batches) - 1
        no_sync = info.enabled and not last
        sync = run.ddp_model.no_sync() if no_sync else contextlib.nullcontext()
        with sync:
            with torch.autocast(
                device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
            ):
                out = run.ddp_model(batch, shuffles)
            finite = torch.isfinite(out.total.detach()).float().view(1)
            if all_reduce_sum(finite).item() == info.world_size:
                run.scaler.scale(out.total / len(micro_batches)).backward()
            else:
                skipped = True
        for name, value in {"loss": out.total, **out.terms}.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() / len(micro_batches)

    optimizer = run.optimizer
    grad_norm = float("nan")
    if not skipped:
        run.scaler.unscale_(optimizer)
        max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm).item()
        # With fp16 the scaler skips steps whose gradients overflowed (and lowers its scale); in
        # fp32 and bf16 a non-finite gradient is skipped here, as a non-finite loss is. Gradients
        # are synchronised, so every rank decides alike.
        skipped = not math.isfinite(grad_norm) and not run.scaler.is_enabled()
    if skipped:
        optimizer.zero_grad(set_to_none=True)
        progress.nonfinite_steps += 1
        if progress.nonfinite_steps > cfg.train.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{progress.nonfinite_steps} steps had a non-finite loss or gradient "
                f"(limit train.max_nonfinite_steps={cfg.train.max_nonfinite_steps})"
            )
    else:
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    return {k: all_reduce_mean(v.view(1)).item() for k, v in sums.items()}, grad_norm


def evaluate_run(run: Run) -> EvalResult:
    """The evaluation split, original and shuffled; its metrics go to the run's log. A model of
    one frame (ImageNet-9) is scored on the original images alone: it has no order to shuffle."""
    settings = run.cfg.eval
    if run.cfg.model.num_frames == 1:
        settings = replace(settings, perturbations=())
    broadcast_buffers(run.model.backbone)  # the model the checkpoint holds, on every rank
    result = evaluate(
        run.model.backbone,
        run.eval_loader,
        classes=run.classes,
        subsets=run.subsets,
        settings=settings,
        device=run.info.device,
        autocast_dtype=run.amp_dtype,
        progress=run.cfg.train.progress and run.info.is_main,
    )
    record = {
        "kind": "eval",
        "epoch": run.progress.epoch,
        "step": run.progress.step,
        **flatten_metrics(result.metrics()),
    }
    on_main_for_all(functools.partial(run.log.write, record))
    return result


def save_run_checkpoint(run: Run, name: str) -> None:
    """``<run>/checkpoints/<name>``: everything a resume needs (rank 0 writes, all ranks wait)."""
    progress = run.progress
    # A foreign model's architecture (its transformers config, a torchvision name): what an
    # evaluation elsewhere needs to rebuild it without its original folder or weights file.
    architecture = getattr(run.model.backbone, "architecture", None)

    def write() -> None:  # on rank 0; a failed write (a full disk) is raised on every rank
        run.log.flush()  # TensorBoard's events up to here: a resume keeps them, forgets the rest
        save_checkpoint(
            {
                "model": run.model.backbone.state_dict(),
                "architecture": architecture() if callable(architecture) else None,
                "objective": run.model.objective.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict(),
                "epoch": progress.epoch,
                "step": progress.step,
                "nonfinite_steps": progress.nonfinite_steps,
                "final_eval_lines": progress.final_eval_lines,
                "best_top1": progress.best_top1,
                "best_epoch": progress.best_epoch,
                "init_from": run.init_from,
                "config": config_to_dict(run.cfg),
                "classes": run.classes,
                "run_shape": asdict(run.shape),
                "log_lines": run.log.lines,  # a resume cuts metrics.jsonl back to these
                "bad_videos": [asdict(video) for video in run.bad_log.videos.values()],
            },
            run.run_dir / "checkpoints" / name,
        )

    on_main_for_all(write)
    progress.saved_step = progress.step


# torch's CPU generator keeps only a seed's low 32 bits (CUDA's all 64): ranks and seeds are set
# apart there by odd strides, seed 0's rank 0 draws as it always did.
RANK_STRIDE = 0x9E3779B1
SEED_STRIDE = 0x85EBCA77


def step_seed(seed: int, *, rank: int, step: int) -> int:
    """The global RNG's seed for a step (dropout, drop-path): a function of (seed, rank, step)
    whose low 32 bits, all the CPU generator reads, differ between ranks and between seeds."""
    low = step + rank * RANK_STRIDE + seed * SEED_STRIDE
    return ((seed * 2**20 + rank) * 2**32 + low) % 2**63


def shuffle_stream(cfg: Config, *, step: int, rank: int) -> torch.Generator:
    """The frame shuffles of a step, drawn from (seed, step): the same after a resume; one stream
    for the step, so each micro-batch draws its own. ``per_batch``: one order on every rank, as
    one process shuffles the whole batch; ``per_sample``: each rank's clips orders of their own
    (rank 0's stream is the single process's)."""
    stream = rank if cfg.loss.debias.shuffle == "per_sample" else 0
    return torch.Generator().manual_seed(cfg.train.seed * 7_919 + step + stream * RANK_STRIDE)


def _mix(run: Run, batch: dict[str, Any], *, micro_batch: int) -> dict[str, Any]:
    """Mixup / CutMix of a micro-batch on the device (``data.mixup`` / ``data.cutmix``), drawn from
    (seed, rank, step, micro-batch) so that a resumed run mixes alike; after the flow labels."""
    data = run.cfg.data
    if data.mixup <= 0 and data.cutmix <= 0:
        return batch
    seed = [run.cfg.train.seed, run.info.rank, run.progress.step, micro_batch]
    return mix_clips(
        batch,
        mixup=data.mixup,
        cutmix=data.cutmix,
        prob=data.mix_prob,
        switch_prob=data.mix_switch_prob,
        patch_size=run.model.backbone.patch_size,
        rng=np.random.default_rng(seed),
    )


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
