"""Training-step cost of TIME: time per step, clips/s and peak memory of the baseline (ce only),
each TIME loss alone and all of them, on the same model and batch, measured side by side in one
run and reported as ratios to the baseline. Also every backbone, and Motionformer's frame-by-frame
trajectory attention against its naive (T*S)^2 form.

Flow labels are given (random): their cost belongs to the loader (benchmarks/loader.py) or to the
torch Farnebäck (benchmarks/flow.py). Each configuration runs in a fresh process so that peak
memory is its own (CUDA: max_memory_allocated; CPU: peak resident set size).

    python benchmarks/train_step.py                     # tiny models on the CPU
    python benchmarks/train_step.py --device cuda       # ViT-B/16, 8x224², bf16
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

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
    from timematters.engine.train import TimeModel
    from timematters.losses import build_objective

    torch.manual_seed(0)
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    model = create_backbone(job["backbone"], num_classes=174, **job["kwargs"])
    if job.get("naive"):
        for module in model.modules():
            if isinstance(module, TrajectoryAttention):
                module.trajectories = naive_trajectories
    cfg = LossConfig()
    cfg.order.weight, cfg.debias.weight, cfg.flow.weight = LOSS_SETS[job["losses"]]
    frames = model.num_frames
    objective = build_objective(cfg, embed_dim=model.embed_dim, num_frames=frames)
    time_model = TimeModel(model, objective).to(device)
    optimizer = build_optimizer(time_model, OptimConfig())
    B, size, S = job["batch"], model.patch_embed.img_size, model.grid[0] * model.grid[1]
    batch = {
        "video": torch.randn(B, 3, frames, size, size, device=device),
        "label": torch.randint(0, 174, (B,), device=device),
        "flow_labels": torch.randint(0, 9, (B, frames - 1, S), device=device),
    }
    amp = torch.bfloat16 if device.type == "cuda" else None
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(job["warmup"] + job["steps"]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = time_model(batch)
        out.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= job["warmup"]:
            times.append(time.perf_counter() - tic)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    step_time = statistics.median(times)
    return {**job, "step_ms": 1000 * step_time, "clips_per_s": B / step_time, "peak_mib": peak}


def _run(job: dict) -> dict:
    # A fresh process per configuration: its peak memory is its own.
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (job,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    size = "base_patch16_224" if on_gpu else "tiny_patch8_64"
    batch = args.batch or (8 if on_gpu else 8)
    base = {
        "device": args.device,
        "batch": batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "kwargs": {"num_frames": 8},
    }

    rows = []
    for backbone in ("timesformer", "motionformer", "xvit"):
        for losses in LOSS_SETS if backbone == "timesformer" else ("baseline", "+TIME"):
            rows.append(_run({**base, "backbone": f"{backbone}_{size}", "losses": losses}))
            print(_line(rows[-1]), flush=True)
    for naive in (False, True):
        row = _run(
            {**base, "backbone": f"motionformer_{size}", "losses": "baseline", "naive": naive}
        )
        row["variant"] = "naive (T*S)^2" if naive else "frame by frame"
        rows.append(row)
        print(_line(rows[-1]), flush=True)

    print("\nratios to each backbone's baseline (same model, batch and device, this run):")
    for row in rows:
        if "variant" in row:
            continue
        ref = next(
            r
            for r in rows
            if r["backbone"] == row["backbone"] and r["losses"] == "baseline" and "variant" not in r
        )
        row["time_ratio"] = row["step_ms"] / ref["step_ms"]
        row["memory_ratio"] = row["peak_mib"] / ref["peak_mib"]
        print(
            f"  {row['backbone']:34s} {row['losses']:9s} time x{row['time_ratio']:.2f}  memory x{row['memory_ratio']:.2f}"
        )

    out = Path(args.out or f"benchmarks/results/train_step_{'cuda' if on_gpu else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    device_name = (
        torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()
    )
    out.write_text(
        json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=2)
    )
    print(f"wrote {out}")


def _line(row: dict) -> str:
    name = row["backbone"] + (f" [{row['variant']}]" if "variant" in row else "")
    return (
        f"{name:48s} {row['losses']:9s} {row['step_ms']:9.1f} ms/step "
        f"{row['clips_per_s']:8.1f} clips/s {row['peak_mib']:9.0f} MiB peak"
    )


if __name__ == "__main__":
    main()
