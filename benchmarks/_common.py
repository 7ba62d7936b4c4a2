"""What every benchmark's JSON records about where it ran (the commit, the device, torch) and how
it is written."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch


def commit() -> str:
    """The short hash of the checked-out commit, "+dirty" when tracked files differ from it (the
    results folder aside: a benchmark run after another has only its results to differ)."""
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


def write_results(out: Path, *, on_gpu: bool, **fields) -> None:
    """``fields`` as indented JSON at ``out``, after the device, the commit and torch's version."""
    out.parent.mkdir(parents=True, exist_ok=True)
    where = {"device": device_name(on_gpu), "commit": commit(), "torch": torch.__version__}
    out.write_text(json.dumps({**where, **fields}, indent=2))
    print(f"wrote {out}")
