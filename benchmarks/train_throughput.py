"""Training throughput per model: images/s, achieved GFLOP/s, and the attention modules' share of a step.

Run by hand (not a test):

    .venv/bin/python benchmarks/train_throughput.py --models vgg vgg_att2_concat_pc --widths 0.125 1.0

It measures, on the chosen device and in one run, the fp32 matrix-multiply peak (a large ``mm``), then for each
model and width a full SGD training step (forward, backward, update) on random 32x32 images: images/s, the step's
FLOPs counted by ``torch.utils.flop_counter`` and so the achieved GFLOP/s and its fraction of the peak, and the
time the attention modules take (their forward and backward timed alone on the step's own inputs) against the
whole step. ``--out`` writes the table as Markdown.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ltpa


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

    # the attention modules alone, forward + backward, on the inputs they see in a step
    captured: list[tuple[torch.nn.Module, tuple[torch.Tensor, ...]]] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: captured.append((mod, tuple(t.detach() for t in inp))))
        for m in getattr(model, "attention", [])
    ]
    model(x)
    for h in handles:
        h.remove()

    def attention_only() -> None:
        for mod, inputs in captured:
            ins = [t.clone().requires_grad_(True) for t in inputs]
            g_a, a = mod(*ins)
            (g_a.sum() + a.sum()).backward()

    attn_seconds = _time(attention_only, device, reps) if captured else 0.0
    return {
        "model": name,
        "width": width,
        "params": sum(p.numel() for p in model.parameters()),
        "images_per_s": batch / seconds,
        "gflop_per_image": flops / batch / 1e9,
        "gflops": flops / seconds / 1e9,
        "attention_share": attn_seconds / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg", "vgg_att2_concat_pc", "vgg_att3_concat_pc"])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.125, 1.0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the table as Markdown here")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device)
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"Device: {device} ({machine}); torch {torch.__version__}; fp32 matmul peak {peak:.1f} GFLOP/s; "
        f"batch {args.batch}, 32x32 inputs, SGD step (forward + backward + update).",
        "",
        "| model | width | params | images/s | GFLOP/image | GFLOP/s | of peak | attention share of step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.models:
        for width in args.widths:
            r = bench_model(name, width, args.batch, args.reps, device)
            line = (
                f"| `{r['model']}` | {r['width']} | {r['params']:,} | {r['images_per_s']:.1f} | "
                f"{r['gflop_per_image']:.3f} | {r['gflops']:.1f} | {r['gflops'] / peak:.0%} | {r['attention_share']:.1%} |"
            )
            print(line, flush=True)
            lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
