"""What every benchmark's JSON records about where it ran: the commit and the device."""

from __future__ import annotations

import platform
import subprocess

import torch


def commit() -> str:
    """The short hash of the checked-out commit, "+dirty" when files differ from it."""
    try:
        run = dict(capture_output=True, text=True, check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)
        return head + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(on_gpu: bool) -> str:
    return torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()
