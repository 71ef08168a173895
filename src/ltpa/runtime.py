"""How a training run uses its device: numeric precision (autocast) and memory format, chosen per machine.

``auto`` settings resolve here to concrete ones, which ``ltpa.train.fit`` writes into the run's config.yaml;
a resumed run reads them back and so computes exactly what the interrupted one would have.

* Precision: bf16 autocast on CUDA devices that support it (fp16 otherwise) and on CPUs with native bf16
  (:func:`ltpa.system.cpu_bf16_support`); fp32 on other CPUs, where emulated bf16 is many times slower.
* Memory format: channels-last is faster for some models and slower for others on the same CPU (width-1/8
  attention VGG: 1.1x faster; width-1/8 baseline VGG: 0.8-0.9x; docs/benchmarks.md), so on a CPU ``auto``
  times a few training steps of a copy of the model in each format and keeps the faster one. On CUDA
  channels-last is used, as for any convolutional network with tensor cores.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltpa.errors import LTPAError
from ltpa.system import cpu_bf16_support

__all__ = ["Precision", "autocast", "choose_channels_last", "describe_runtime", "resolve_precision"]

_logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# channels-last is kept only when its steps are at least this much faster: below it the difference is
# within the noise of a short timing, and a coin flip between formats would make reruns differ needlessly
_CHANNELS_LAST_MIN_GAIN = 1.05
_PROBE_STEPS = 3  # timed steps per format, after one warm-up step
_PROBE_BATCH = 32  # images per probe step: enough to time the convolutions as training runs them
_probe_cache: dict[tuple[Any, ...], tuple[bool, str]] = {}


@dataclass(frozen=True)
class Precision:
    """The resolved ``--amp`` setting: its name (``off``, ``bf16``, ``fp16``), dtype and the reason."""

    name: str
    dtype: torch.dtype | None
    reason: str


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """Resolves ``--amp`` (``auto``, ``off``, ``bf16``, ``fp16``) for ``device``.

    Raises:
        LTPAError: an unknown setting.
    """
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise LTPAError(f"unknown amp {amp!r}; choose auto, off, bf16 or fp16")
    if amp == "off":
        return Precision("off", None, "--amp off")
    if amp in _DTYPES:
        reason = f"--amp {amp}"
        if device.type == "cpu" and amp == "bf16" and not cpu_bf16_support()[0]:
            reason += " (this CPU has no native bf16: expect it slower than fp32)"
            _logger.warning("--amp bf16 on a CPU without native bf16 runs emulated, usually slower than fp32")
        return Precision(amp, _DTYPES[amp], reason)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", torch.bfloat16, "auto: the GPU supports bf16")
        return Precision("fp16", torch.float16, "auto: the GPU lacks bf16")
    if device.type == "cpu":
        native, why = cpu_bf16_support()
        if native:
            return Precision("bf16", torch.bfloat16, f"auto: the CPU computes bf16 natively ({why})")
        return Precision("off", None, f"auto: fp32, the CPU has no native bf16 ({why})")
    return Precision("off", None, f"auto: fp32 on {device.type}")


def describe_runtime(threads: int | None, amp: str, channels_last: str) -> str:
    """Resolved settings in words, e.g. ``"2 threads, bf16 autocast, channels-last"`` (no threads: not a CPU)."""
    words = [f"{threads} threads"] if threads else []
    words.append("fp32" if amp == "off" else f"{amp} autocast")
    words.append("channels-last" if channels_last == "on" else "contiguous")
    return ", ".join(words)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op for fp32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _seconds_per_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None, device: torch.device
) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # timing only: the copy's weights do not matter

    def step() -> None:
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN picks and caches its kernels for these shapes
    best = float("inf")
    for _ in range(_PROBE_STEPS):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)  # the minimum is the least disturbed by other work
    return best


def choose_channels_last(
    requested: str,
    model: nn.Module,
    sample: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    cache_key: tuple[Any, ...] | None = None,
    timer: Callable[..., float] = _seconds_per_step,
) -> tuple[bool, str]:
    """Whether to train in channels-last memory format, and why.

    Args:
        requested: ``on``, ``off`` or ``auto``.
        model: the model about to be trained (not changed: the timing runs on a copy).
        sample: a batch of float training images (B, C, H, W) on ``device``; labels: their (B,) classes.
        dtype: the autocast dtype of the run (None: fp32).
        cache_key: the same key in one process reuses the measurement (e.g. repeated runs of one model).
        timer: seconds per training step of ``(model, x, y, dtype, device)``; replaceable in tests.

    Raises:
        LTPAError: an unknown setting.
    """
    if requested not in ("auto", "on", "off"):
        raise LTPAError(f"unknown channels_last {requested!r}; choose auto, on or off")
    if requested != "auto":
        return requested == "on", f"--channels-last {requested}"
    if device.type == "cuda":
        return True, "auto: channels-last on CUDA"
    if sample.dim() != 4:
        return False, "auto: inputs are not images"
    if cache_key is not None and cache_key in _probe_cache:
        return _probe_cache[cache_key]
    probe = copy.deepcopy(model).train()
    x, y = sample[:_PROBE_BATCH], labels[:_PROBE_BATCH]
    rng = torch.get_rng_state()  # dropout in the probe must not shift the run's random stream
    try:
        standard = timer(probe, x.contiguous(), y, dtype, device)
        probe = probe.to(memory_format=torch.channels_last)
        last = timer(probe, x.contiguous(memory_format=torch.channels_last), y, dtype, device)
    finally:
        torch.set_rng_state(rng)
    gain = standard / max(last, 1e-12)
    use = gain >= _CHANNELS_LAST_MIN_GAIN
    verdict = (
        (True, f"auto: channels-last measured {gain:.2f}x as fast")
        if use
        else (
            False,
            f"auto: channels-last measured {gain:.2f}x as fast (kept only from {_CHANNELS_LAST_MIN_GAIN:.2f}x)",
        )
    )
    if cache_key is not None:
        _probe_cache[cache_key] = verdict
    return verdict
