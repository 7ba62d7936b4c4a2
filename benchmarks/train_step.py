"""Training-step cost of TIME: time per step, clips/s and peak memory of the baseline (ce only),
each TIME loss alone and all of them, on the same model and batch, measured in one run and
reported as ratios. Also every backbone, Motionformer's frame-by-frame trajectory attention
against its naive (T*S)^2 form, and the speed options: activation checkpointing
(``model.grad_checkpointing``), ``torch.compile`` (``train.compile``) and flow labels made on the
device (``flow.backend=torch``) by the prefetcher the training loop uses.

Every row also gives the step's FLOPs (counted with torch's counter on one eager step: matrix
products, convolutions, attention) and the throughput they make, as a share of the device's
measured matrix-product peak and, on a GPU the table in ``_common`` knows, of its data-sheet bf16
peak.

Flow labels are given (random) except in the device-labels rows: their cost belongs to the loader
(benchmarks/loader.py) or to the torch Farnebäck (benchmarks/flow.py). Each configuration runs in
a fresh process so that peak memory is its own (CUDA: max_memory_allocated over the steps; CPU:
the growth of the resident set over the steps, so the libraries' own memory is left out). The JSON
is rewritten after every row, so a run cut short by a time limit keeps what it measured.

    python benchmarks/train_step.py                     # tiny models on the CPU
    python benchmarks/train_step.py --device cuda       # ViT-B/16, 8x224², bf16
    python benchmarks/train_step.py --only checkpointing,compile
    python benchmarks/train_step.py --device cuda --batch 32 --only device-labels \\
        --backbones timesformer --profile profile.txt   # + where the baseline step's time goes
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import torch
from _common import (
    count_flops,
    matmul_peak_tflops,
    peak_memory_mib,
    spawned_process,
    spec_peak_tflops,
    sync,
    timed,
    write_results,
)

LOSS_SETS = {
    "baseline": (0, 0, 0),
    "+order": (1, 0, 0),
    "+debias": (0, 1, 0),
    "+flow": (0, 0, 1),
    "+TIME": (1, 1, 1),
}
GROUPS = ("losses", "checkpointing", "compile", "device-labels")
OPTIONS = ("checkpointing", "compile", "device-labels")  # --only options


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
    gc.collect()  # the last row's memory, where rows share the process
    if device.type == "cuda":
        torch.cuda.empty_cache()
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

    def step(batch: dict, module: torch.nn.Module = step_model) -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = module(batch)
        out.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []

    def steps_timed() -> None:
        for i in range(steps):
            seconds = timed(lambda: step(next(batches)), device)
            if i >= job["warmup"]:
                times.append(seconds)

    # Peak memory over all steps, warm-up included (with compile: the compiler's memory too).
    peak = peak_memory_mib(steps_timed, device)
    step_time = statistics.median(times)
    if job.get("profile"):
        _profile(lambda: step(batch), device, job["profile"])
    # The arithmetic of one eager step on the given-labels batch, without checkpointing's second
    # forward pass: compile, checkpointing and where the labels come from change how the step
    # runs, not the work it does for the model.
    model.set_grad_checkpointing(False)
    flops, _ = count_flops(lambda: step(batch, time_model))
    return {
        **{k: v for k, v in job.items() if k != "profile"},
        "step_ms": 1000 * step_time,
        "clips_per_s": B / step_time,
        "peak_mib": peak,
        "gflop_per_step": flops / 1e9,
        "tflop_per_s": flops / step_time / 1e12,
    }


def _profile(step, device: torch.device, out: str) -> None:
    """Where a step's time goes: torch.profiler's operator table over three steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] * (device.type == "cuda"))
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            sync(device)
        table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
    except Exception as error:  # a profiler that cannot start costs the table, not the row
        table = f"no profile: {type(error).__name__}: {error}"
    Path(out).write_text(table)
    print(f"wrote {out}")


@contextmanager
def _runner(shared: bool):
    """Runs a row in a spawned process: a fresh one per row on the CPU, where the peak is the
    resident set's growth and must be the row's own; one for every row on a GPU, where the peak
    is counted per row and a process start would cost seconds of a rented machine each time."""
    pools = [spawned_process()] if shared else []

    def run(job: dict) -> dict:
        try:
            if pools:
                return pools[0].submit(_measure, job).result()
            with spawned_process() as fresh:
                return fresh.submit(_measure, job).result()
        except Exception as error:  # one row out of memory, say, loses no other row
            if isinstance(error, BrokenProcessPool) and pools:  # the process died: a new one
                pools[0] = spawned_process()
            return {**job, "error": f"{type(error).__name__}: {error}"}

    try:
        yield run
    finally:
        for pool in pools:
            pool.shutdown()


def _jobs(groups: set[str], backbones: list[str], size: str) -> list[tuple[dict, dict]]:
    """(row, the row it is compared with) pairs, in the order they run."""
    jobs: list[tuple[dict, dict]] = []
    tsf = f"timesformer_{size}"
    if "device-labels" in groups and "timesformer" in backbones:
        baseline = {"backbone": tsf, "losses": "baseline"}
        plain = {"backbone": tsf, "losses": "+TIME"}
        device_labels = {**plain, "device_flow_labels": True}
        jobs += [(plain, baseline), (device_labels, baseline), (device_labels, plain)]
    if "losses" in groups:
        for backbone in backbones:
            ref = {"backbone": f"{backbone}_{size}", "losses": "baseline"}
            for losses in LOSS_SETS if backbone == "timesformer" else ("baseline", "+TIME"):
                jobs.append(({**ref, "losses": losses}, ref))
        if "motionformer" in backbones:
            frame_by_frame = {"backbone": f"motionformer_{size}", "losses": "baseline"}
            jobs.append(({**frame_by_frame, "naive": True}, frame_by_frame))
    if "checkpointing" in groups:
        for backbone in backbones:
            plain = {"backbone": f"{backbone}_{size}", "losses": "+TIME"}
            jobs.append(({**plain, "grad_checkpointing": True}, plain))
    if "compile" in groups and "timesformer" in backbones:
        for losses in ("baseline", "+TIME"):
            plain = {"backbone": tsf, "losses": losses}
            jobs.append(({**plain, "compile": True}, plain))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups of rows: {', '.join(GROUPS)}; options = the last three",
    )
    parser.add_argument("--depth", type=int, default=None, help="blocks (default: the size's)")
    parser.add_argument("--backbones", default="timesformer,motionformer,xvit")
    parser.add_argument(
        "--size",
        default=None,
        help="backbone size (default: base_patch16_224 on a GPU, else tiny_patch8_64)",
    )
    parser.add_argument("--profile", default=None, help="write the first row's operator table here")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    groups = {
        g for name in args.only.split(",") for g in (OPTIONS if name == "options" else [name])
    }
    if groups - set(GROUPS):
        parser.error(f"--only: unknown {sorted(groups - set(GROUPS))}; choose from {GROUPS}")
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    size = args.size or ("base_patch16_224" if on_gpu else "tiny_patch8_64")
    base = {
        "device": args.device,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "kwargs": {"num_frames": 8, **({"depth": args.depth} if args.depth else {})},
    }
    jobs = _jobs(groups, args.backbones.split(","), size)
    torch.set_num_threads(args.threads)
    peak = {
        "matmul_peak_tflops": matmul_peak_tflops(device, torch.bfloat16 if on_gpu else torch.float),
        "spec_peak_tflops": spec_peak_tflops(device),
        "peak_dtype": "bf16" if on_gpu else "fp32",
    }
    out = Path(args.out or f"benchmarks/results/train_step_{'cuda' if on_gpu else 'cpu'}.json")

    with _runner(shared=on_gpu) as run:
        measured: dict[str, dict] = {}
        rows = []
        for job, ref in jobs:
            for spec in (ref, job):
                key = json.dumps(spec, sort_keys=True)
                if key not in measured:
                    profile = {"profile": args.profile} if args.profile and not measured else {}
                    measured[key] = _utilisation(run({**base, **spec, **profile}), peak)
                    print(_line(measured[key]), flush=True)
            row, reference = (
                dict(measured[json.dumps(job, sort_keys=True)]),
                measured[json.dumps(ref, sort_keys=True)],
            )
            if "error" in row or "error" in reference:
                continue
            row["reference"] = _name(reference)
            row["time_ratio"] = row["step_ms"] / reference["step_ms"]
            row["memory_ratio"] = row["peak_mib"] / reference["peak_mib"]
            rows.append(row)
            write_results(
                out, on_gpu=on_gpu, quiet=True, **peak, rows=_with_references(rows, measured)
            )

    print("\nratios (same batch and device, this run):")
    for row in rows:
        print(
            f"  {_name(row):60s} vs {row['reference']:44s} "
            f"time x{row['time_ratio']:.2f}  memory x{row['memory_ratio']:.2f}"
        )
    write_results(out, on_gpu=on_gpu, **peak, rows=_with_references(rows, measured))


def _utilisation(row: dict, peak: dict) -> dict:
    if "error" in row:
        return row
    row["of_matmul_peak"] = row["tflop_per_s"] / peak["matmul_peak_tflops"]
    if peak["spec_peak_tflops"]:
        row["of_spec_peak"] = row["tflop_per_s"] / peak["spec_peak_tflops"]
    return row


def _with_references(rows: list[dict], measured: dict[str, dict]) -> list[dict]:
    """The compared rows, after the reference rows that are no row's subject themselves."""
    subjects = {_name(row) for row in rows}
    references = [
        row
        if "error" in row
        else {**row, "reference": _name(row), "time_ratio": 1.0, "memory_ratio": 1.0}
        for row in measured.values()
        if _name(row) not in subjects
    ]
    return references + rows


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
    if "error" in row:
        return f"{_name(row):60s} failed: {row['error']}"
    share = f"{100 * row['of_matmul_peak']:5.1f}% of the matmul peak"
    if "of_spec_peak" in row:
        share += f", {100 * row['of_spec_peak']:5.1f}% of the data sheet's"
    return (
        f"{_name(row):60s} {row['step_ms']:9.1f} ms/step "
        f"{row['clips_per_s']:8.1f} clips/s {row['peak_mib']:9.0f} MiB peak "
        f"{row['tflop_per_s']:7.2f} TFLOP/s ({share})"
    )


if __name__ == "__main__":
    main()
