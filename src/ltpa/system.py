"""What the machine is, in words, for the provenance lines of reports and benchmarks."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["describe_device"]


def describe_device(device: str | torch.device = "cpu") -> str:
    """``"NVIDIA H100 ..."`` for a CUDA device; for a CPU its model name, core count and torch's thread count.

    Example: ``"AMD EPYC 9B14, 2 cores, 2 threads"``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: keep platform's name
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
