"""The training loop: ``setup_run``, ``train_one_epoch``, ``train_step``, evaluation and
checkpoints (STYLE 9, in the spirit of MAE's ``engine_finetune.py``).

One loop serves `timematters train`, the demo and the benchmarks. It runs alone or as one of N
torchrun processes (DistributedDataParallel); rank 0 writes the run folder. Everything a run holds
lives in one ``Run``, built once by ``setup_run``; the functions below take it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from timematters.backbones.pretrained import load_pretrained
from timematters.config import Config, config_to_dict, save_config, validate
from timematters.data.build import build_dataset, build_flow_labeller
from timematters.data.collate import BadVideoLog, batch_size, collate_videos
from timematters.data.samplers import SeededSamples, Shard, SkipFirst
from timematters.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from timematters.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    autocast_dtype,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from timematters.engine.evaluate import EvalResult, evaluate, format_table
from timematters.engine.metrics import RunLog, flatten_metrics
from timematters.engine.model import build_model, model_patch_size
from timematters.engine.optim import build_optimizer, lr_at, set_lr
from timematters.flow.farneback import configure_opencv_threads
from timematters.flow.labeller import FlowLabeller
from timematters.losses.objective import Objective, ObjectiveOutput, build_objective

StepCallback = Callable[[int, dict[str, Any]], None]


class TimeModel(nn.Module):
    """Backbone + objective as one module, so DDP sees every parameter (TIME heads included)."""

    def __init__(self, backbone: nn.Module, objective: Objective):
        super().__init__()
        self.backbone = backbone
        self.objective = objective

    def forward(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        return self.objective(self.backbone, batch, generator)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Progress:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    nonfinite_steps: int = 0


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
    flow_on_device: FlowLabeller | None  # flow.backend=torch: labels made in the step
    log: RunLog
    bad_log: BadVideoLog
    progress: Progress = field(default_factory=Progress)
    step_callback: StepCallback | None = None

    @property
    def max_steps(self) -> float:
        return self.cfg.train.max_steps or math.inf


def train(
    cfg: Config,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    step_callback: StepCallback | None = None,
) -> dict[str, Any]:
    """Train (and evaluate) as ``cfg`` says; returns the final metrics and the run folder.

    resume: a checkpoint to continue exactly (weights, optimizer, schedule, RNG, data position).
    init_from: a checkpoint or weights file to start from (weights only, embeddings resized).
    step_callback(step, record): called after every optimizer step (tests, the demo's progress).
    """
    validate(cfg)
    info = setup_distributed(cfg.train.device)
    try:
        run = setup_run(cfg, info, resume=resume, init_from=init_from, step_callback=step_callback)
        return fit(run)
    finally:
        cleanup_distributed()


def setup_run(
    cfg: Config,
    info: DistInfo,
    *,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    step_callback: StepCallback | None = None,
) -> Run:
    """Build everything a run needs, in the order that fixes its random draws."""
    run_dir = Path(cfg.train.out)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    device = info.device
    torch.manual_seed(cfg.train.seed)

    # Data. Flow labels come from the loader (OpenCV) or from the training step (torch).
    patch_size = model_patch_size(cfg)
    needs_flow = cfg.loss.flow.weight != 0
    flow_in_loader = needs_flow and cfg.flow.backend == "opencv"
    if flow_in_loader:
        configure_opencv_threads(1)  # once, in the parent: forked workers would deadlock
    train_set = build_dataset(cfg, "train", flow_labels=flow_in_loader, patch_size=patch_size)
    test_set = build_dataset(cfg, cfg.eval.split, flow_labels=False, patch_size=patch_size)
    num_classes = cfg.model.num_classes or len(train_set.classes)

    backbone = build_model(cfg, num_classes)
    if init_from:
        load_pretrained(backbone, init_from)
    objective = build_objective(
        cfg.loss,
        embed_dim=backbone.embed_dim,
        num_frames=backbone.token_frames,
        grid=backbone.grid,
        patch_size=backbone.patch_size,
    )
    model = TimeModel(backbone, objective).to(device)
    ddp_model = model
    if info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = build_optimizer(model, cfg.optim)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    world, accumulation = info.world_size, cfg.train.accumulation
    if cfg.train.batch_size % (world * accumulation):
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by "
            f"processes x train.accumulation = {world} x {accumulation}"
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
        raise ValueError(
            f"the training set ({len(train_set)} clips) is smaller than one global batch "
            f"({cfg.train.batch_size})"
        )

    progress = Progress()
    if resume:
        state = load_checkpoint(resume)
        model.backbone.load_state_dict(state["model"])
        model.objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        progress = Progress(state["epoch"], state["step"], state["nonfinite_steps"])
        set_rng_state(state["rng"])
    torch.manual_seed(cfg.train.seed * 1_000 + info.rank + progress.step)  # dropout per rank

    eval_loader = DataLoader(
        test_set,
        batch_size=cfg.eval.batch_size,
        sampler=Shard(len(test_set), info.rank, world),
        num_workers=cfg.data.num_workers,
        collate_fn=collate_videos,
    )
    flow_on_device = None
    if objective.needs_flow_labels and cfg.flow.backend == "torch":
        flow_on_device = build_flow_labeller(cfg, backbone.patch_size)
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
        log=RunLog(run_dir, enabled=info.is_main, tensorboard=cfg.train.tensorboard),
        bad_log=BadVideoLog(run_dir / "bad_videos.jsonl"),
        progress=progress,
        step_callback=step_callback,
    )


def fit(run: Run) -> dict[str, Any]:
    """Epochs until ``train.epochs`` (or ``train.max_steps``), then the final evaluation."""
    cfg, progress = run.cfg, run.progress
    while progress.epoch < cfg.train.epochs and progress.step < run.max_steps:
        epoch = progress.epoch
        train_one_epoch(run, epoch_loader(run))
        if progress.step - epoch * run.steps_per_epoch < run.steps_per_epoch:
            break  # stopped by max_steps inside the epoch
        progress.epoch += 1
        save_run_checkpoint(run, "last.pth")
        every = cfg.train.eval_every_epochs
        if every and progress.epoch % every == 0 and progress.epoch < cfg.train.epochs:
            evaluate_run(run)

    save_run_checkpoint(run, "last.pth")
    result = evaluate_run(run)
    metrics = result.metrics()
    if run.info.is_main:
        (run.run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
        (run.run_dir / "eval.md").write_text(format_table({cfg.model.name: metrics}) + "\n")
        if run.bad_log.bad:
            run.bad_log.write()
    run.log.close()
    return {"run_dir": run.run_dir, "metrics": metrics, "result": result, "steps": progress.step}


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
        num_workers=run.cfg.data.num_workers,
        collate_fn=collate_videos,
        drop_last=True,
        pin_memory=run.info.device.type == "cuda",
        persistent_workers=False,
    )


def train_one_epoch(run: Run, loader: DataLoader) -> None:
    """Optimizer steps over ``loader`` until the epoch (or ``train.max_steps``) is done."""
    cfg, progress = run.cfg, run.progress
    epoch_end = min((progress.epoch + 1) * run.steps_per_epoch, run.max_steps)
    bar = tqdm(
        total=epoch_end - progress.step,
        desc=f"epoch {progress.epoch + 1}/{cfg.train.epochs}",
        disable=not (cfg.train.progress and run.info.is_main),
        leave=False,
    )
    run.ddp_model.train()
    micro_batches: list[dict[str, Any]] = []
    tic = time.perf_counter()
    for batch in loader:
        if progress.step >= epoch_end:
            break
        run.bad_log.update(batch)
        run.bad_log.check(cfg.data.max_bad_fraction, min_seen=cfg.train.batch_size)
        # A batch whose videos were all bad is skipped, by every rank together (DDP would hang).
        if all_reduce_sum(torch.tensor([float(batch_size(batch) == 0)])).item() > 0:
            continue
        micro_batches.append(batch)
        if len(micro_batches) < cfg.train.accumulation:
            continue
        terms, grad_norm = train_step(run, micro_batches)
        micro_batches = []
        toc = time.perf_counter()
        record = {
            "kind": "train",
            "epoch": progress.epoch,
            "step": progress.step,
            "lr": run.optimizer.param_groups[0]["lr"],
            **terms,
            "grad_norm": grad_norm,
            "clips_per_s": cfg.train.batch_size / (toc - tic),
            "nonfinite_steps": progress.nonfinite_steps,
            "bad_videos": run.bad_log.bad,
        }
        tic = toc
        if progress.step % cfg.train.log_every == 0 or progress.step == 1:
            run.log.write(record)
        losses = {k.removesuffix("_loss"): v for k, v in record.items() if k.endswith("loss")}
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
        bar.update()
        if run.step_callback is not None:
            run.step_callback(progress.step, record)
        if cfg.train.save_every_steps and progress.step % cfg.train.save_every_steps == 0:
            save_run_checkpoint(run, "last.pth")
    bar.close()


def train_step(run: Run, micro_batches: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    """One optimizer step over ``train.accumulation`` micro-batches.

    Returns the loss terms (averaged over micro-batches and ranks) and the gradient norm (NaN
    when the step was skipped for a non-finite loss).
    """
    cfg, info, progress = run.cfg, run.info, run.progress
    device = info.device
    lr = lr_at(progress.step / run.steps_per_epoch, cfg.optim, cfg.train.epochs)
    set_lr(run.optimizer, lr)
    # Frame shuffles drawn from (seed, step): identical on every rank and after a resume.
    generator_seed = cfg.train.seed * 7_919 + progress.step
    sums: dict[str, torch.Tensor] = {}
    skipped = False
    for i, batch in enumerate(micro_batches):
        batch = _to_device(batch, device)
        if run.flow_on_device is not None:
            batch["flow_labels"] = run.flow_on_device.batch(batch["video"])
        last = i == len(micro_batches) - 1
        no_sync = info.enabled and not last
        sync = run.ddp_model.no_sync() if no_sync else contextlib.nullcontext()
        with sync:
            with torch.autocast(
                device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
            ):
                out = run.ddp_model(batch, torch.Generator().manual_seed(generator_seed))
            finite = torch.isfinite(out.total.detach()).float().view(1)
            if all_reduce_sum(finite).item() == info.world_size:
                run.scaler.scale(out.total / len(micro_batches)).backward()
            else:
                skipped = True
        for name, value in {"loss": out.total, **out.terms}.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() / len(micro_batches)

    optimizer = run.optimizer
    if skipped:
        optimizer.zero_grad(set_to_none=True)
        progress.nonfinite_steps += 1
        if progress.nonfinite_steps > cfg.train.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{progress.nonfinite_steps} steps had a non-finite loss "
                f"(limit train.max_nonfinite_steps={cfg.train.max_nonfinite_steps})"
            )
        grad_norm = float("nan")
    else:
        run.scaler.unscale_(optimizer)
        max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm).item()
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    return {k: all_reduce_mean(v.view(1)).item() for k, v in sums.items()}, grad_norm


def evaluate_run(run: Run) -> EvalResult:
    """The evaluation split, original and shuffled; its metrics go to the run's log."""
    result = evaluate(
        run.model.backbone,
        run.eval_loader,
        classes=run.classes,
        subsets=run.subsets,
        settings=run.cfg.eval,
        device=run.info.device,
        autocast_dtype=run.amp_dtype,
        progress=run.cfg.train.progress and run.info.is_main,
    )
    run.log.write(
        {
            "kind": "eval",
            "epoch": run.progress.epoch,
            "step": run.progress.step,
            **flatten_metrics(result.metrics()),
        }
    )
    return result


def save_run_checkpoint(run: Run, name: str) -> None:
    """``<run>/checkpoints/<name>``: everything a resume needs (rank 0 writes, all ranks wait)."""
    if run.info.is_main:
        progress = run.progress
        save_checkpoint(
            {
                "model": run.model.backbone.state_dict(),
                "objective": run.model.objective.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict(),
                "epoch": progress.epoch,
                "step": progress.step,
                "nonfinite_steps": progress.nonfinite_steps,
                "config": config_to_dict(run.cfg),
                "classes": run.classes,
                "rng": rng_state(),
            },
            run.run_dir / "checkpoints" / name,
        )
    barrier()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
