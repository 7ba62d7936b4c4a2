"""Training-step cost of TIME: time per step, clips/s and peak memory of the baseline (ce only),
each TIME loss alone and all of them, on the same model and batch, measured in one run and
reported as ratios. Also every backbone, Motionformer's frame-by-frame trajectory attention
against its naive (T*S)^2 form, and the speed options: activation checkpointing
(``model.grad_checkpointing``), ``torch.compile`` (``train.compile``) and flow labels made on the
device (``flow.backend=torch``) by the prefetcher the training loop uses.

Flow labels are given (random) except in the device-labels row: their cost belongs to the loader
(benchmarks/loader.py) or to the torch Farnebäck (benchmarks/flow.py). Each configuration runs in
a fresh process so that peak memory is its own (CUDA: max_memory_allocated over the steps; CPU:
the growth of the resident set over the steps, so the libraries' own memory is left out).

    python benchmarks/train_step.py                     # tiny models on the CPU
    python benchmarks/train_step.py --device cuda       # ViT-B/16, 8x224², bf16
    python benchmarks/train_step.py --only options      # the speed options only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

import torch
from _common import write_results

LOSS_SETS = {
    "baseline": (0, 0, 0),
    "+order": (1, 0, 0),
    "+debias": (0, 1, 0),
    "+flow": (0, 0, 1),
    "+TIME": (1, 1, 1),
}


def _measure(job: dict) -> dict:
    from timematters.backbones import create_backbone
    from timematters.backbones.motionformer import TrajectoryAttention, naive_trajectories
    from timematters.config import LossConfig, OptimConfig
    from timematters.engine.optim import build_optimizer
    from timematters.engine.prefetch import FlowLabelPrefetcher
    from timematters.flow.labeller import FlowLabeller
    from timematters.losses import TimeModel, build_objective

    torch.manual_seed(0)
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    model = create_backbone(job["backbone"], num_classes=174, **job["kwargs"])
    if job.get("naive"):
        for module in model.modules():
            if isinstance(module, TrajectoryAttention):
                module.trajectories = naive_trajectories
    model.set_grad_checkpointing(job.get("grad_checkpointing", False))
    cfg = LossConfig()
    cfg.order.weight, cfg.debias.weight, cfg.flow.weight = LOSS_SETS[job["losses"]]
    frames = model.num_frames
    objective = build_objective(cfg, embed_dim=model.embed_dim, num_frames=frames)
    time_model = TimeModel(model, objective).to(device)
    step_model = torch.compile(time_model) if job.get("compile") else time_model
    optimizer = build_optimizer(time_model, OptimConfig())
    B, size, S = job["batch"], model.patch_embed.img_size, model.grid[0] * model.grid[1]
    video = torch.randn(B, 3, frames, size, size).clamp(-1, 1)
    batch = {
        "video": video.to(device),
        "label": torch.randint(0, 174, (B,), device=device),
        "flow_labels": torch.randint(0, 9, (B, frames - 1, S), device=device),
    }
    steps = job["warmup"] + job["steps"]
    if job.get("device_flow_labels"):
        # As in training: host batches, labelled on the device one batch ahead of the step.
        host = {
            "video": video.pin_memory() if device.type == "cuda" else video,
            "label": batch["label"].cpu(),
        }
        labeller = FlowLabeller(patch_size=model.patch_size)
        batches = iter(FlowLabelPrefetcher([host] * steps, labeller, device))
    else:
        batches = iter([batch] * steps)
    amp = torch.bfloat16 if device.type == "cuda" else None
    times = []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Peak memory over all steps from here: freed CPU memory stays in the process, so the
    # resident set's growth must be measured from before the first step. (With compile this
    # includes the compiler's own memory.)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_kib() * 1024
    for step in range(steps):
        sync()
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = step_model(next(batches))
        out.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= job["warmup"]:
            times.append(time.perf_counter() - tic)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2**20
    step_time = statistics.median(times)
    return {**job, "step_ms": 1000 * step_time, "clips_per_s": B / step_time, "peak_mib": peak}


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _run(job: dict) -> dict:
    # A fresh process per configuration: its peak memory is its own.
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (job,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("losses", "options"), default=None)
    parser.add_argument("--depth", type=int, default=None, help="blocks (default: the size's)")
    parser.add_argument("--backbones", default="timesformer,motionformer,xvit")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    size = "base_patch16_224" if on_gpu else "tiny_patch8_64"
    base = {
        "device": args.device,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "kwargs": {"num_frames": 8, **({"depth": args.depth} if args.depth else {})},
    }
    backbones = args.backbones.split(",")
    # (row, the row it is compared with): each row's time and memory as ratios to its reference.
    jobs: list[tuple[dict, dict]] = []
    if args.only != "options":
        for backbone in backbones:
            ref = {"backbone": f"{backbone}_{size}", "losses": "baseline"}
            for losses in LOSS_SETS if backbone == "timesformer" else ("baseline", "+TIME"):
                jobs.append(({**ref, "losses": losses}, ref))
        if "motionformer" in backbones:
            frame_by_frame = {"backbone": f"motionformer_{size}", "losses": "baseline"}
            jobs.append(({**frame_by_frame, "naive": True}, frame_by_frame))
    if args.only != "losses":
        for backbone in backbones:
            plain = {"backbone": f"{backbone}_{size}", "losses": "+TIME"}
            jobs.append(({**plain, "grad_checkpointing": True}, plain))
        if "timesformer" in backbones:
            for losses in ("baseline", "+TIME"):
                plain = {"backbone": f"timesformer_{size}", "losses": losses}
                jobs.append(({**plain, "compile": True}, plain))
            plain = {"backbone": f"timesformer_{size}", "losses": "+TIME"}
            jobs.append(({**plain, "device_flow_labels": True}, plain))

    measured: dict[str, dict] = {}
    rows = []
    for job, ref in jobs:
        for spec in (ref, job):
            key = json.dumps(spec, sort_keys=True)
            if key not in measured:
                measured[key] = _run({**base, **spec})
                print(_line(measured[key]), flush=True)
        row, reference = (
            measured[json.dumps(job, sort_keys=True)],
            measured[json.dumps(ref, sort_keys=True)],
        )
        row["reference"] = _name(reference)
        row["time_ratio"] = row["step_ms"] / reference["step_ms"]
        row["memory_ratio"] = row["peak_mib"] / reference["peak_mib"]
        rows.append(row)
    for row in measured.values():
        if "reference" not in row:
            row.update(reference=_name(row), time_ratio=1.0, memory_ratio=1.0)
            rows.insert(0, row)

    print("\nratios (same batch and device, this run):")
    for row in rows:
        if row["reference"] != _name(row):
            print(
                f"  {_name(row):60s} vs {row['reference']:44s} "
                f"time x{row['time_ratio']:.2f}  memory x{row['memory_ratio']:.2f}"
            )

    out = Path(args.out or f"benchmarks/results/train_step_{'cuda' if on_gpu else 'cpu'}.json")
    write_results(out, on_gpu=on_gpu, rows=rows)


def _name(row: dict) -> str:
    options = [
        label
        for key, label in (
            ("naive", "naive (T*S)^2"),
            ("grad_checkpointing", "checkpointed"),
            ("compile", "compiled"),
            ("device_flow_labels", "device flow labels"),
        )
        if row.get(key)
    ]
    return f"{row['backbone']} {row['losses']}" + (f" [{', '.join(options)}]" if options else "")


def _line(row: dict) -> str:
    return (
        f"{_name(row):60s} {row['step_ms']:9.1f} ms/step "
        f"{row['clips_per_s']:8.1f} clips/s {row['peak_mib']:9.0f} MiB peak"
    )


if __name__ == "__main__":
    main()
