"""What the machine is and can do: its name for provenance lines, native bf16, and how many threads to use.

CPU training in ltpa adapts to the machine it runs on instead of assuming one (docs/benchmarks.md has the
measurements behind each choice):

* :func:`cpu_bf16_support` says whether the CPU computes bf16 natively (x86 AVX512_BF16 or AMX-BF16, Arm
  BF16). Only then does ``--amp auto`` train in bf16 autocast: a CPU without it emulates bf16 at a small
  fraction of its fp32 speed.
* :func:`choose_threads` picks the intra-op thread count: the cores that other processes leave idle, measured
  over a fraction of a second from ``/proc/stat``. OpenMP threads that share a core with another busy process
  make every parallel region wait for the slowest thread; on a 2-core machine with one other busy process,
  2 threads kept 0.44x of their idle speed and 1 thread 0.72x (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "ThreadChoice",
    "choose_threads",
    "configure_threads",
    "cpu_bf16_support",
    "cpu_flags",
    "describe_device",
    "other_cpu_load",
]

_logger = logging.getLogger(__name__)

THREADS_ENV = "LTPA_THREADS"  # an explicit thread count for every ltpa process, like --threads
_LOAD_SAMPLE_S = 0.3  # long enough to see a busy process, short next to any training run
# x86 flags (Linux /proc/cpuinfo names) and Arm features that mean bf16 arithmetic in hardware
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux: keep platform's name
        pass
    return cpu


def describe_device(device: str | torch.device = "cpu") -> str:
    """``"NVIDIA H100 ..."`` for a CUDA device; for a CPU its model name, core count and torch's thread count.

    Example: ``"AMD EPYC 9B14, 2 cores, 2 threads"``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why, e.g. ``(True, "avx512_bf16, amx_bf16")``.

    Read from the CPU's flags; where the system does not report them, from PyTorch's CPU-capability checks.
    """
    flags = cpu_flags()
    if flags:
        found = [flag for flag in _BF16_FLAGS if flag in flags]
        if found:
            return True, ", ".join(found)
        return False, "no avx512_bf16, amx_bf16 or Arm bf16 flag"
    checks = {
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        "amx": getattr(torch.cpu, "_is_amx_tile_supported", None),
    }
    found = [name for name, check in checks.items() if check is not None and check()]
    if found:
        return True, ", ".join(found) + " (PyTorch's check)"
    return False, "no CPU flags reported and PyTorch finds no bf16 support"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat; None where it does not exist."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields[:8]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def other_cpu_load(seconds: float = _LOAD_SAMPLE_S) -> float | None:
    """How many cores' worth of CPU time *other* processes used over the next ``seconds``; None if unknown.

    Measured as the machine's busy time (``/proc/stat``) minus this process's own CPU time.
    """
    before = _busy_jiffies()
    if before is None:
        return None
    own, wall = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    after = _busy_jiffies()
    own, wall = time.process_time() - own, time.perf_counter() - wall
    if after is None or after[1] <= before[1]:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (after[0] - before[0]) / hz
    return max(0.0, (busy - own) / max(wall, 1e-9))


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and the reason for it, as written to run.json and logged."""

    threads: int
    reason: str


def choose_threads(requested: int | None = None, source: str = "--threads") -> ThreadChoice:
    """The intra-op thread count for CPU work.

    ``requested`` (``--threads N``, or the count a resumed run started with: ``source`` says which) wins; then ``$LTPA_THREADS``, then ``$OMP_NUM_THREADS`` (e.g. set by
    torchrun for several processes per machine). Otherwise PyTorch's default (the physical cores) limited to
    the cores that other processes leave idle, at least 1.

    Raises:
        ValueError: a requested count below 1, or a non-integer in the environment variables.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        return ThreadChoice(requested, source)
    for env in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(env)
        if value:
            try:
                count = int(value)
            except ValueError:
                raise ValueError(f"${env}={value!r} is not a thread count; set a positive integer") from None
            if count < 1:
                raise ValueError(f"${env}={value!r} is not a thread count; set a positive integer")
            return ThreadChoice(count, f"${env}")
    default = torch.get_num_threads()
    cores = _usable_cores()
    load = other_cpu_load()
    if load is None:
        return ThreadChoice(default, "PyTorch's default (machine load unknown)")
    idle = max(1, cores - round(load))
    threads = max(1, min(default, idle))
    return ThreadChoice(threads, f"{cores} cores, other processes busy on {load:.1f}")


def configure_threads(requested: int | None = None, source: str = "--threads") -> ThreadChoice:
    """Chooses the thread count (:func:`choose_threads`) and applies it with ``torch.set_num_threads``."""
    choice = choose_threads(requested, source)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    _logger.info("using %d CPU threads (%s)", choice.threads, choice.reason)
    return choice
