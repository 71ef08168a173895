"""Training and inference throughput, achieved FLOP rate, attention share and memory of the paper's models.

Run by hand (not a test), on whatever device you want figures for:

    .venv/bin/python benchmarks/throughput.py --out docs/benchmarks.md            # CPU here; the default set
    .venv/bin/python benchmarks/throughput.py --device cuda --out docs/benchmarks_cuda.md

In one run it measures the device's fp32 matrix-multiply rate (a large ``mm``: the practical peak), then for
each model and width, on random 32x32 images:

* a full training step (forward, backward, SGD update): images/s, its FLOPs counted by
  ``torch.utils.flop_counter``, the achieved GFLOP/s and its fraction of the measured peak;
* inference (eval mode, no autograd): images/s;
* the attention modules' share of a step: their forward and backward timed alone on the inputs they see;
* memory of a training step: on CUDA the allocator's peak; on a CPU, where no allocator peak exists, the
  bytes the step must hold at once: parameters, gradients, momentum, and the activations autograd saves for
  the backward pass (counted with ``torch.autograd.graph.saved_tensors_hooks``).

``--out`` writes a Markdown page with the machine, the command, the table and, for every full-width model
measured, the estimated wall time of the paper's recipes on this device (steps x batch / measured images/s).
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ltpa
from ltpa.attention import LinearAttention
from ltpa.system import describe_device

DEFAULT_MODELS = ["vgg", "vgg_gap", "vgg_pan", "vgg_att2_concat_pc", "vgg_att3_concat_pc"]
# (recipe, train images, batch, epochs, test images per epoch): PAPER 3.2 and recipes/README.md
RECIPES = (
    ("CIFAR-10 / CIFAR-100", 50000, 128, 300, 10000),
    ("SVHN (train split)", 73257, 128, 300, 26032),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """fp32 matrix-multiply GFLOP/s on ``device``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def _time(fn: Any, device: torch.device, reps: int) -> float:
    fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / reps


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def step_memory(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes a training step holds at its peak: weights, gradients, optimiser state, saved activations.

    Saved activations are counted once per storage (views of one tensor share it).
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    params = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in params if p.grad is not None]
    return _tensor_bytes(params) + _tensor_bytes(grads) + _tensor_bytes(state) + sum(storages.values())


def bench_model(name: str, width: float, batch: int, reps: int, device: torch.device) -> dict[str, Any]:
    model = ltpa.create_model(name, width=width).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    seconds = _time(step, device, reps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        memory = torch.cuda.max_memory_allocated(device)
    else:
        opt.zero_grad(set_to_none=True)
        memory = step_memory(model, opt, x, y)

    # the attention modules alone, forward + backward, on the inputs they see in a step
    captured: list[tuple[torch.nn.Module, tuple[torch.Tensor, ...]]] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: captured.append((mod, tuple(t.detach() for t in inp))))
        for m in model.modules()
        if isinstance(m, LinearAttention)
    ]
    model(x)
    for h in handles:
        h.remove()

    def attention_only() -> None:
        for mod, inputs in captured:
            ins = [t.clone().requires_grad_(True) for t in inputs]
            g_a, a = mod(*ins)
            (g_a.sum() + a.sum()).backward()

    attn_seconds = _time(attention_only, device, reps) if captured else float("nan")

    model.eval()

    @torch.no_grad()
    def infer() -> None:
        model(x)

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    infer_flops = counter.get_total_flops()
    infer_seconds = _time(infer, device, reps)
    return {
        "model": name,
        "width": width,
        "params": sum(p.numel() for p in model.parameters()),
        "images_per_s": batch / seconds,
        "gflop_per_image": flops / batch / 1e9,
        "gflops": flops / seconds / 1e9,
        "attention_share": attn_seconds / seconds,
        "infer_images_per_s": batch / infer_seconds,
        "infer_gflop_per_image": infer_flops / batch / 1e9,
        "memory_mib": memory / 2**20,
    }


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render(results: list[dict[str, Any]], peak: float, device: torch.device, args: argparse.Namespace) -> str:
    """The Markdown page: set-up, the table, the recipe-time estimates and a computed reading."""
    memory = (
        "the CUDA allocator's peak during a step"
        if device.type == "cuda"
        else "what a step holds at once (weights, gradients, momentum, saved activations)"
    )
    lines = [
        "# Throughput benchmark",
        "",
        "<!-- Generated by benchmarks/throughput.py; rerun it rather than editing. -->",
        "",
        "Command:",
        "",
        "```",
        " ".join([".venv/bin/python", "benchmarks/throughput.py", *map(shlex.quote, sys.argv[1:])]),
        "```",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d} on {device.type} ({describe_device(device)}), torch {torch.__version__}, "
        f"{platform.system()}. fp32 matrix-multiply peak measured in the same run: **{peak:.1f} GFLOP/s**. "
        f"Batch {args.batch}, 32x32 inputs, {args.reps} timed repetitions after one warm-up. All rows come from "
        "this one run, side by side; on a shared machine read them as ratios.",
        "",
        "Columns: *train* is a full SGD step (forward, backward, update) and *infer* an eval-mode forward "
        "without autograd; GFLOP are counted by `torch.utils.flop_counter`; *of peak* divides the training "
        "step's achieved rate by the matmul peak; *attention share* is the attention modules' forward and "
        f"backward, timed alone on their step inputs, over the step (for PAN its level-2 module; the level-1 gate is "
        f"scored inside the trunk; `-`: no attention); *memory* is {memory}, for the whole "
        "batch.",
        "",
        "| model | width | params | train img/s | train GFLOP/img | GFLOP/s | of peak | infer img/s "
        "| infer GFLOP/img | attention share | memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `{r['model']}` | {r['width']:g} | {r['params']:,} | {r['images_per_s']:.1f} | "
            f"{r['gflop_per_image']:.3f} | {r['gflops']:.1f} | {r['gflops'] / peak:.0%} | "
            f"{r['infer_images_per_s']:.1f} | {r['infer_gflop_per_image']:.3f} | {_share(r['attention_share'])} | "
            f"{r['memory_mib']:.0f} |"
        )
    full = [r for r in results if r["width"] == 1.0]
    if full:
        lines += [
            "",
            f"## Estimated time of the paper's recipes on this device ({device.type})",
            "",
            "Optimiser steps x batch / training images/s, plus one inference pass over the test set per epoch "
            "(recipes/README.md lists the steps). An estimate from the rows above, not a timed run; data loading "
            "and augmentation are not included.",
            "",
            "| model (width 1) | " + " | ".join(name for name, *_ in RECIPES) + " |",
            "|---|" + "---:|" * len(RECIPES),
        ]
        for r in full:
            cells = []
            for _, n_train, batch, epochs, n_test in RECIPES:
                seconds = epochs * (
                    (n_train // batch) * batch / r["images_per_s"] + n_test / r["infer_images_per_s"]
                )
                cells.append(_duration(seconds))
            lines.append(f"| `{r['model']}` | " + " | ".join(cells) + " |")
    by = {(r["model"], r["width"]): r for r in results}
    reading = []
    for width in sorted({r["width"] for r in results}):
        base = by.get(("vgg", width))
        if base is None:
            continue
        others = [r for r in results if r["width"] == width and r["model"] != "vgg"]
        if others:
            ratios = ", ".join(
                f"`{r['model']}` {r['gflop_per_image'] / base['gflop_per_image']:.1f}x" for r in others
            )
            shares = [r["attention_share"] for r in others if not math.isnan(r["attention_share"])]
            share = (
                f"; attention modules take {min(shares):.1%}-{max(shares):.1%} of a step" if shares else ""
            )
            reading.append(
                f"* Width {width:g}: training FLOPs per image against the baseline VGG: {ratios}. "
                f"Achieved rate {min(r['gflops'] for r in others) / peak:.0%}-{max(r['gflops'] for r in others) / peak:.0%} "
                f"of peak (baseline {base['gflops'] / peak:.0%}){share}."
            )
    if reading:
        lines += ["", "## Reading (computed from the table)", "", *reading]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="registered model names")
    parser.add_argument("--widths", nargs="+", type=float, default=[0.125, 1.0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the Markdown page here (e.g. docs/benchmarks.md)")
    args = parser.parse_args()
    unknown = [m for m in args.models if m not in ltpa.list_models()]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; `ltpa models` lists them")
    if args.batch < 2 or args.reps < 1:
        parser.error("--batch must be >= 2 (batch norm) and --reps >= 1")
    device = torch.device(args.device)
    peak = matmul_peak(device)
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s on {device}", flush=True)
    results = []
    for name in args.models:
        for width in args.widths:
            r = bench_model(name, width, args.batch, args.reps, device)
            print(
                f"{name} width {width:g}: train {r['images_per_s']:.1f} img/s ({r['gflops'] / peak:.0%} of peak), "
                f"infer {r['infer_images_per_s']:.1f} img/s, attention {_share(r['attention_share'])}, "
                f"memory {r['memory_mib']:.0f} MiB",
                flush=True,
            )
            results.append(r)
    page = render(results, peak, device, args)
    print(page)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
