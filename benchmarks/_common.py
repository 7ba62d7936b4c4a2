"""What every benchmark's JSON records about where it ran (the commit, the device, torch) and how
it is written; and the arithmetic a step does against what the device can do (FLOPs, matrix-product
peak), for the utilisation figures."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils import flop_counter

# Dense bf16 tensor-core peaks from the vendor's data sheets (TFLOP/s, without sparsity), by a
# part of the name torch reports. The first that matches wins: "H100 PCIe" before "H100".
SPEC_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4}


def commit() -> str:
    """The short hash of the checked-out commit, "+dirty" when tracked files differ from it (the
    results folder aside: a benchmark run after another has only its results to differ).

    ``BENCHMARK_COMMIT`` names it where the tree is a copy without git (a lent GPU machine)."""
    if os.environ.get("BENCHMARK_COMMIT"):
        return os.environ["BENCHMARK_COMMIT"]
    try:
        run = dict(capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run([*status, "--", ".", ":(exclude)benchmarks/results"], **run)
        return head + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(on_gpu: bool) -> str:
    return torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()


def write_results(out: Path, *, on_gpu: bool, quiet: bool = False, **fields) -> None:
    """``fields`` as indented JSON at ``out``, after the device, the commit and torch's version.

    The long benchmarks write after every row (``quiet``), so a run stopped by a time limit keeps
    the rows it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    where = {"device": device_name(on_gpu), "commit": commit(), "torch": torch.__version__}
    out.write_text(json.dumps({**where, **fields}, indent=2))
    if not quiet:
        print(f"wrote {out}")


def _sdpa_forward(query, key, value, *args, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn) -> tuple[float, dict[str, float]]:
    """FLOPs of one call of ``fn``: the total and by operator (the last part of its name).

    torch's counter knows the matrix products, the convolutions and the CUDA attention kernels;
    the CPU's fused attention kernel is counted here by the same formula."""
    aten = torch.ops.aten
    custom = {  # the counter hands formulas the arguments' shapes
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    by_op = {
        str(op).rsplit(".", 1)[-1]: float(count)
        for op, count in counter.get_flop_counts()["Global"].items()
    }
    return float(counter.get_total_flops()), by_op


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the device's queue included."""
    sync(device)
    tic = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - tic


def peak_memory_mib(fn, device: torch.device) -> float:
    """The peak memory (MiB) that a call of ``fn`` adds: on CUDA, allocated memory over the call;
    on the CPU, the resident set's high-water mark above its size before the call (freed CPU
    memory stays in the process, so only a fresh process's first measurement is its own)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_kib() * 1024
    fn()
    sync(device)
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2**20


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def spawned_process() -> ProcessPoolExecutor:
    """One worker process, spawned (not forked: CUDA), for a measurement of its own. An
    executor's worker is no daemon, so torch.compile may start its compile workers there, and a
    worker that dies fails its task instead of hanging it."""
    return ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """This device's throughput on one large square product (8192² on a GPU, 2048² on a CPU):
    what a step's matrix products could reach at best."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds = statistics.median(timed(lambda: a @ b, device) for _ in range(10))
    return 2 * n**3 / seconds / 1e12


def spec_peak_tflops(device: torch.device) -> float | None:
    """The data sheet's dense bf16 peak of this GPU, None where the table does not know it."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in SPEC_BF16_TFLOPS.items() if part in name), None)
