"""Where a training step's time goes: torch.profiler's operator table for one model, width and set-up.

Run by hand on an idle machine, e.g. the profile behind docs/cpu_speed.md:

    .venv/bin/python benchmarks/profile_step.py vgg_att2_concat_pc --width 0.125 --previous
    .venv/bin/python benchmarks/profile_step.py vgg_att2_concat_pc --width 0.125 --amp bf16 --channels-last

``--previous`` swaps ltpa's dropout for PyTorch's ``nn.Dropout`` (the path before ltpa's own mask). The table
lists operators by their own CPU time over ``--steps`` steps (forward, backward, SGD update each).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import ltpa
from ltpa.layers import Dropout
from ltpa.runtime import autocast


def _time_compiled(
    model: torch.nn.Module, make_step: Callable[[Any], Callable[[], None]], batch: int, steps: int
) -> None:
    """Eager and ``torch.compile``d training steps of ``model``, side by side, and the compile time."""
    import time

    compiled = make_step(torch.compile(model))
    start = time.perf_counter()
    compiled()
    print(f"compile + first step: {time.perf_counter() - start:.1f} s")
    for name, step in (("eager", make_step(model)), ("compiled", compiled)):
        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print(f"{name}: {batch * steps / (time.perf_counter() - start):.1f} img/s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``), checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="registered model name")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--previous", action="store_true", help="PyTorch's nn.Dropout instead of ltpa's")
    parser.add_argument("--drop-scale", type=float, default=1.0, help="0 turns dropout off (as the demo)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="instead of profiling, time eager against torch.compile (compile time included separately)",
    )
    args = parser.parse_args(argv)
    if args.model not in ltpa.list_models():
        parser.error(f"unknown model {args.model}; `ltpa models` lists them")
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    model = ltpa.create_model(args.model, width=args.width, drop_scale=args.drop_scale).train()
    if args.previous:
        for m in model.modules():
            if isinstance(m, Dropout):
                m.__class__ = torch.nn.Dropout
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    device = torch.device("cpu")

    def make_step(net: Any) -> Callable[[], None]:
        def step() -> None:
            with autocast(device, dtype):
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    step = make_step(model)

    if args.compile:
        _time_compiled(model, make_step, args.batch, args.steps)
        return
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
