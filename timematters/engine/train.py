"""The training loop: setup, ``train_one_epoch``, evaluation and checkpoints (STYLE 9).

One loop serves `timematters train`, the demo and the benchmarks. It runs alone or as one of N
torchrun processes (DistributedDataParallel); rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from timematters.backbones import create_backbone
from timematters.backbones.pretrained import load_pretrained
from timematters.config import Config, ModelConfig, config_to_dict, merge, save_config
from timematters.data.build import build_dataset
from timematters.data.collate import BadVideoLog, batch_size, collate_videos
from timematters.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from timematters.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from timematters.engine.evaluate import EvalResult, evaluate, format_table
from timematters.engine.optim import build_optimizer, lr_at, set_lr
from timematters.flow.farneback import batch_flow_labels, configure_opencv_threads
from timematters.flow.labels import farneback_params
from timematters.losses.objective import Objective, ObjectiveOutput, build_objective


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


def backbone_kwargs(cfg: Config, num_classes: int) -> dict[str, Any]:
    kwargs = {
        **cfg.model.kwargs,
        "num_classes": num_classes,
        "num_frames": cfg.model.num_frames,
        "img_size": cfg.data.crop_size,
    }
    if cfg.model.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    return kwargs


def model_patch_size(cfg: Config) -> int:
    """The backbone's patch size, read from a parameter-free build on the meta device."""
    with torch.device("meta"):
        return create_backbone(cfg.model.name, **backbone_kwargs(cfg, num_classes=1)).patch_size


def token_frames(model: nn.Module) -> int:
    """Frames in the token grid (fewer than input frames with Motionformer's 2-frame tubelets)."""
    return model.num_frames // getattr(model, "tubelet_size", 1)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    model = create_backbone(cfg.model.name, **backbone_kwargs(cfg, num_classes))
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
    return model


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where supported, fp16 (with a scaler) otherwise, off on the CPU unless asked for."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class _SeededSamples(Dataset):
    """Seeds each sample's randomness from (seed, epoch, index).

    Augmentation then does not depend on which worker draws a clip, so a resumed run sees the
    same clips as an uninterrupted one. The caller's RNG states are left untouched.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + index
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class _SkipFirst(Sampler):
    """The first ``skip`` indices of a sampler dropped: a run resumed mid-epoch continues there."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


class _Shard(Sampler):
    """Every world_size-th index from rank on, in order, without padding (evaluation)."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class _Progress:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    nonfinite_steps: int = 0


class NonFiniteLossError(RuntimeError):
    pass


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Frame shuffles drawn from (seed, step): identical on every rank and after a resume."""
    return torch.Generator().manual_seed(seed * 7_919 + step)


class _RunLog:
    """JSON lines (the source of plots and reports) and TensorBoard events; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(
    cfg: Config,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    step_callback=None,
) -> dict[str, Any]:
    """Train (and evaluate) as ``cfg`` says; returns the final metrics and the run folder.

    resume: a checkpoint to continue exactly (weights, optimizer, schedule, RNG, data position).
    init_from: a checkpoint or weights file to start from (weights only, embeddings resized).
    step_callback(step, record): called after every optimizer step (tests, the demo's progress).
    """
    info = setup_distributed(cfg.train.device)
    try:
        return _train(cfg, info, resume, init_from, step_callback)
    finally:
        cleanup_distributed()


def _train(cfg: Config, info: DistInfo, resume, init_from, step_callback) -> dict[str, Any]:
    run_dir = Path(cfg.train.out)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    device = info.device
    torch.manual_seed(cfg.train.seed)

    # Data. Flow labels come from the loader (OpenCV) or from the training step (torch).
    patch_size = model_patch_size(cfg)
    needs_flow = cfg.loss.flow.weight != 0
    if needs_flow and cfg.model.kwargs.get("tubelet_size", 1) != 1:
        raise ValueError("the flow loss needs one token frame per video frame (tubelet_size=1)")
    flow_in_loader = needs_flow and cfg.flow.backend == "opencv"
    if flow_in_loader:
        configure_opencv_threads(1)  # once, in the parent: forked workers would deadlock
    train_set = build_dataset(cfg, "train", flow_labels=flow_in_loader, patch_size=patch_size)
    test_set = build_dataset(cfg, cfg.eval.split, flow_labels=False, patch_size=patch_size)
    num_classes = cfg.model.num_classes or len(train_set.classes)

    model = build_model(cfg, num_classes)
    if init_from:
        load_pretrained(model, init_from)
    objective = build_objective(
        cfg.loss, model.embed_dim, token_frames(model), model.grid, model.patch_size
    )
    time_model = TimeModel(model, objective).to(device)
    ddp_model = (
        DistributedDataParallel(
            time_model, device_ids=[device.index] if device.type == "cuda" else None
        )
        if info.enabled
        else time_model
    )
    optimizer = build_optimizer(time_model, cfg.optim)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    world, accumulation = info.world_size, cfg.train.accumulation
    if cfg.train.batch_size % (world * accumulation):
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by "
            f"processes x train.accumulation = {world} x {accumulation}"
        )
    local_batch = cfg.train.batch_size // (world * accumulation)
    seeded_train = _SeededSamples(train_set, cfg.train.seed)
    sampler = DistributedSampler(
        seeded_train,
        num_replicas=world,
        rank=info.rank,
        shuffle=True,
        seed=cfg.train.seed,
        drop_last=True,
    )
    batches_per_epoch = len(sampler) // local_batch
    steps_per_epoch = batches_per_epoch // accumulation
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(train_set)} clips) is smaller than one global batch "
            f"({cfg.train.batch_size})"
        )

    progress = _Progress()
    if resume:
        state = load_checkpoint(resume)
        time_model.backbone.load_state_dict(state["model"])
        time_model.objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        progress = _Progress(state["epoch"], state["step"], state["nonfinite_steps"])
        set_rng_state(state["rng"])
    torch.manual_seed(
        cfg.train.seed * 1_000 + info.rank + progress.step
    )  # dropout differs per rank

    log = _RunLog(run_dir, info.is_main, cfg.train.tensorboard)
    bad_log = BadVideoLog(run_dir / "bad_videos.jsonl")
    eval_loader = DataLoader(
        test_set,
        batch_size=cfg.eval.batch_size,
        sampler=_Shard(len(test_set), info.rank, world),
        num_workers=cfg.data.num_workers,
        collate_fn=collate_videos,
    )
    subsets = getattr(train_set, "subsets", {})

    def checkpoint(name: str) -> None:
        if info.is_main:
            save_checkpoint(
                {
                    "model": time_model.backbone.state_dict(),
                    "objective": time_model.objective.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": progress.epoch,
                    "step": progress.step,
                    "nonfinite_steps": progress.nonfinite_steps,
                    "config": config_to_dict(cfg),
                    "classes": list(train_set.classes),
                    "rng": rng_state(),
                },
                run_dir / "checkpoints" / name,
            )
        barrier()

    def run_eval() -> EvalResult:
        result = evaluate(
            time_model.backbone, eval_loader, device, train_set.classes, subsets,
            shuffle=cfg.eval.shuffle, aggregation=cfg.eval.aggregation, seed=cfg.eval.seed,
            autocast_dtype=amp_dtype, progress=cfg.train.progress and info.is_main,
        )  # fmt: skip
        log.write(
            {
                "kind": "eval",
                "epoch": progress.epoch,
                "step": progress.step,
                **_flatten(result.metrics()),
            }
        )
        return result

    max_steps = cfg.train.max_steps or math.inf
    while progress.epoch < cfg.train.epochs and progress.step < max_steps:
        epoch = progress.epoch
        seeded_train.epoch = epoch
        sampler.set_epoch(epoch)
        done_in_epoch = progress.step - epoch * steps_per_epoch
        loader = DataLoader(
            seeded_train,
            batch_size=local_batch,
            sampler=_SkipFirst(sampler, done_in_epoch * accumulation * local_batch),
            num_workers=cfg.data.num_workers,
            collate_fn=collate_videos,
            drop_last=True,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        train_one_epoch(
            ddp_model, time_model, loader, optimizer, scaler, amp_dtype, cfg, info, progress,
            steps_per_epoch, max_steps, log, bad_log, run_dir, step_callback, checkpoint,
        )  # fmt: skip
        if progress.step - epoch * steps_per_epoch < steps_per_epoch:
            break  # stopped by max_steps inside the epoch
        progress.epoch += 1
        checkpoint("last.pth")
        every = cfg.train.eval_every_epochs
        if every and progress.epoch % every == 0 and progress.epoch < cfg.train.epochs:
            run_eval()

    checkpoint("last.pth")
    result = run_eval()
    metrics = result.metrics()
    if info.is_main:
        (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
        (run_dir / "eval.md").write_text(format_table({cfg.model.name: metrics}) + "\n")
        if bad_log.bad:
            bad_log.write()
    log.close()
    return {"run_dir": run_dir, "metrics": metrics, "result": result, "steps": progress.step}


def train_one_epoch(
    ddp_model, time_model, loader, optimizer, scaler, amp_dtype, cfg, info, progress,
    steps_per_epoch, max_steps, log, bad_log, run_dir, step_callback, checkpoint,
) -> None:  # fmt: skip
    device = info.device
    accumulation = cfg.train.accumulation
    epoch_end = (progress.epoch + 1) * steps_per_epoch
    flow_on_device = time_model.objective.needs_flow_labels and cfg.flow.backend == "torch"
    bar = tqdm(
        total=epoch_end - progress.step,
        desc=f"epoch {progress.epoch + 1}/{cfg.train.epochs}",
        disable=not (cfg.train.progress and info.is_main),
        leave=False,
    )
    ddp_model.train()
    sums: dict[str, torch.Tensor] = {}
    micro, skipped, tic = 0, False, time.perf_counter()
    for batch in loader:
        if progress.step >= min(epoch_end, max_steps):
            break
        bad_log.update(batch)
        bad_log.check(cfg.data.max_bad_fraction, min_seen=cfg.train.batch_size)
        # A batch whose videos were all bad is skipped, by every rank together (DDP would hang).
        if all_reduce_sum(torch.tensor([float(batch_size(batch) == 0)])).item() > 0:
            continue
        batch = _to_device(batch, device)
        if flow_on_device:
            batch["flow_labels"] = _flow_labels_on_device(
                batch["video"], time_model.backbone.patch_size, cfg
            )
        set_lr(optimizer, lr_at(progress.step / steps_per_epoch, cfg.optim, cfg.train.epochs))

        micro += 1
        last_micro = micro % accumulation == 0
        sync = ddp_model.no_sync() if info.enabled and not last_micro else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = ddp_model(batch, _step_generator(cfg.train.seed, progress.step))
            finite = (
                all_reduce_sum(torch.isfinite(out.total.detach()).float().view(1)).item()
                == info.world_size
            )
            if finite:
                scaler.scale(out.total / accumulation).backward()
            else:
                skipped = True
        for name, value in {"loss": out.total, **out.terms}.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float() / accumulation
        if not last_micro:
            continue

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
            scaler.unscale_(optimizer)
            max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(time_model.parameters(), max_norm).item()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        toc = time.perf_counter()
        record = {
            "kind": "train",
            "epoch": progress.epoch,
            "step": progress.step,
            "lr": optimizer.param_groups[0]["lr"],
            **{k: all_reduce_mean(v.view(1)).item() for k, v in sums.items()},
            "grad_norm": grad_norm,
            "clips_per_s": cfg.train.batch_size / (toc - tic),
            "nonfinite_steps": progress.nonfinite_steps,
            "bad_videos": bad_log.bad,
        }
        sums, skipped, tic = {}, False, toc
        if progress.step % cfg.train.log_every == 0 or progress.step == 1:
            log.write(record)
        bar.set_postfix(
            {k.removesuffix("_loss"): f"{v:.3f}" for k, v in record.items() if k.endswith("loss")}
        )
        bar.update()
        if step_callback is not None:
            step_callback(progress.step, record)
        if cfg.train.save_every_steps and progress.step % cfg.train.save_every_steps == 0:
            checkpoint("last.pth")
    bar.close()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _flow_labels_on_device(video: torch.Tensor, patch_size: int, cfg: Config) -> torch.Tensor:
    return batch_flow_labels(
        video.float(), patch_size, farneback_params(cfg.flow), cfg.flow.threshold, cfg.flow.relative_fraction,
        cfg.flow.absolute_tau, cfg.data.mean, cfg.data.std,
    )  # fmt: skip


def _flatten(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{subset}/{k}": v for subset, values in metrics.items() for k, v in values.items()}


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path) -> EvalResult:
    """Original / shuffled evaluation of a saved model on the config's evaluation split."""
    info = setup_distributed(cfg.train.device)
    try:
        model, classes = load_model_from_checkpoint(cfg, checkpoint)
        test_set = build_dataset(
            cfg, cfg.eval.split, flow_labels=False, patch_size=model.patch_size
        )
        loader = DataLoader(
            test_set,
            batch_size=cfg.eval.batch_size,
            sampler=_Shard(len(test_set), info.rank, info.world_size),
            num_workers=cfg.data.num_workers,
            collate_fn=collate_videos,
        )
        return evaluate(
            model.to(info.device), loader, info.device, classes or test_set.classes,
            getattr(test_set, "subsets", {}), shuffle=cfg.eval.shuffle,
            aggregation=cfg.eval.aggregation, seed=cfg.eval.seed,
            autocast_dtype=autocast_dtype(cfg.train.precision, info.device),
            progress=cfg.train.progress,
        )  # fmt: skip
    finally:
        cleanup_distributed()


def load_model_from_checkpoint(cfg: Config, path: str | Path) -> tuple[nn.Module, list[str]]:
    """The backbone saved in a timematters checkpoint, in eval mode, and its class names (empty
    when the checkpoint does not name them).

    The architecture comes from the checkpoint's own saved config when it has one (so checkpoints
    of different backbones can be compared on one dataset); clip length and frame size from ``cfg``.
    """
    state = load_checkpoint(path)
    if "model" not in state:
        raise ValueError(f"{path} is not a timematters checkpoint (no 'model' entry)")
    model_cfg = cfg.model
    if "config" in state:
        model_cfg = merge(ModelConfig(), state["config"]["model"], source=str(path))
        if model_cfg.num_frames != cfg.model.num_frames:
            raise ValueError(
                f"{path} was trained on {model_cfg.num_frames}-frame clips but the config makes "
                f"{cfg.model.num_frames}-frame clips (model.num_frames)"
            )
    classes = list(state.get("classes") or [])
    num_classes = model_cfg.num_classes or len(classes)
    model = create_backbone(
        model_cfg.name, **backbone_kwargs(replace(cfg, model=model_cfg), num_classes)
    )
    model.load_state_dict(state["model"])
    return model.eval(), classes
