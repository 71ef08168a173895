"""Training speed of the paper's models: the previous fp32 path against ltpa's defaults, side by side in one run.

Run by hand (not a test), on an otherwise idle machine, on whatever device you want figures for:

    .venv/bin/python benchmarks/throughput.py --out docs/benchmarks.md       # CPU: the default set, ~10 min
    .venv/bin/python benchmarks/throughput.py --device cuda --out docs/benchmarks_cuda.md

In one process it measures:

* the device's matrix-multiply rate in fp32 and bf16 (a large ``mm``: the practical peaks);
* for each model, width and batch, a full training step (forward, backward, SGD update) two ways, on the
  same random 32x32 images and starting weights:
  - *previous*: the path before ltpa chose per machine: fp32, contiguous tensors, PyTorch's own
    ``nn.Dropout``, PyTorch's default thread count;
  - *default*: what ``ltpa train`` now does: ``--amp auto`` (bf16 autocast where the device computes bf16
    natively), ``--channels-last auto`` (the faster format, timed), ltpa's dropout, and the idle cores;
  with the step's FLOPs (``torch.utils.flop_counter``), achieved GFLOP/s and its fraction of the fp32 peak,
  inference images/s, the attention modules' share of a step and the step's memory (CUDA: the allocator's
  peak; CPU: weights, gradients, momentum and the activations autograd saves);
* contention (CPU, ``--contention``): one training step timed again while a busy process of its own runs
  beside it, for both paths, so the page shows how much of its idle speed each keeps.

``--out`` writes the Markdown page, with the estimated wall time of the paper's recipes on this device.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ltpa
from ltpa.attention import LinearAttention
from ltpa.layers import Dropout
from ltpa.runtime import autocast, choose_channels_last, resolve_precision
from ltpa.system import choose_threads, cpu_bf16_support, describe_device

# (model, width, batch): width 1/8 is what a CPU trains; full width at a batch that fits a few steps here
DEFAULT_ROWS = [
    ("vgg", 0.125, 64),
    ("vgg_gap", 0.125, 64),
    ("vgg_pan", 0.125, 64),
    ("vgg_att2_concat_pc", 0.125, 64),
    ("vgg_att3_concat_pc", 0.125, 64),
    ("vgg", 1.0, 16),
    ("vgg_att2_concat_pc", 1.0, 16),
    ("vgg_att3_concat_pc", 1.0, 16),
    ("resnet164", 1.0, 64),
    ("resnet164_att2_concat_pc", 1.0, 64),
]
CONTENTION_ROW = ("vgg_att2_concat_pc", 0.125, 64)
# (recipe, train images, batch, epochs, test images per epoch): method §3.2 and recipes/README.md
RECIPES = (
    ("CIFAR-10 / CIFAR-100", 50000, 128, 300, 10000),
    ("SVHN (train split)", 73257, 128, 300, 26032),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10
) -> float:
    """Matrix-multiply GFLOP/s on ``device`` in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def _time(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Seconds per call: the best of ``reps`` calls after one warm-up (the least disturbed by other work)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def step_memory(model: nn.Module, step: Callable[[], None], opt: torch.optim.Optimizer) -> int:
    """Bytes a training step holds at its peak: weights, gradients, optimiser state, saved activations.

    Saved activations are counted once per storage (views of one tensor share it).
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    params = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in params if p.grad is not None]
    return _tensor_bytes(params) + _tensor_bytes(grads) + _tensor_bytes(state) + sum(storages.values())


def _use_torch_dropout(model: nn.Module) -> None:
    """The previous path: PyTorch's ``nn.Dropout`` (per-element ``bernoulli_``) in place of ltpa's."""
    for m in model.modules():
        if isinstance(m, Dropout):
            m.__class__ = nn.Dropout


class Setup:
    """One way of training a model: precision, memory format, dropout and threads, applied to a copy."""

    def __init__(
        self, name: str, dtype: torch.dtype | None, channels_last: bool, threads: int, note: str
    ) -> None:
        self.name, self.dtype, self.channels_last, self.threads, self.note = (
            name,
            dtype,
            channels_last,
            threads,
            note,
        )

    def words(self) -> str:
        dtype = (
            "fp32"
            if self.dtype is None
            else str(self.dtype).removeprefix("torch.").replace("bfloat16", "bf16")
        )
        layout = "channels-last" if self.channels_last else "contiguous"
        return f"{dtype}, {layout}, {self.threads} threads"


def _setups(
    name: str, width: float, batch: int, device: torch.device, default_threads: int
) -> tuple[nn.Module, Setup, Setup]:
    torch.manual_seed(0)
    model = ltpa.create_model(name, width=width).to(device).train()
    previous = Setup("previous", None, device.type == "cuda", default_threads, "fp32, contiguous, nn.Dropout")
    precision = resolve_precision("auto", device)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    threads = choose_threads().threads if device.type == "cpu" else default_threads
    with _threads(threads):
        channels_last, why = choose_channels_last("auto", model, x, y, device, precision.dtype)
    default = Setup("default", precision.dtype, channels_last, threads, f"{precision.reason}; {why}")
    return model, previous, default


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _prepare(model: nn.Module, setup: Setup, batch: int, device: torch.device) -> tuple[Any, ...]:
    m = copy.deepcopy(model)
    if setup.name == "previous":
        _use_torch_dropout(m)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if setup.channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with autocast(device, setup.dtype):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return m, x, opt, step


def train_seconds(model: nn.Module, setup: Setup, batch: int, reps: int, device: torch.device) -> float:
    """Seconds per training step of ``model`` under ``setup``."""
    _, _, _, step = _prepare(model, setup, batch, device)
    with _threads(setup.threads):
        return _time(step, device, reps)


def bench_row(
    name: str, width: float, batch: int, reps: int, device: torch.device, default_threads: int
) -> dict[str, Any]:
    model, previous, default = _setups(name, width, batch, device, default_threads)
    prev_seconds = train_seconds(model, previous, batch, reps, device)
    m, x, opt, step = _prepare(model, default, batch, device)
    with _threads(default.threads):
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
            memory = step_memory(m, step, opt)
        attn_seconds = _attention_seconds(m, x, default, device, reps)
        m.eval()

        @torch.no_grad()
        def infer() -> None:
            with autocast(device, default.dtype):
                m(x)

        infer_seconds = _time(infer, device, reps)
    return {
        "model": name,
        "width": width,
        "batch": batch,
        "params": sum(p.numel() for p in model.parameters()),
        "previous_images_per_s": batch / prev_seconds,
        "images_per_s": batch / seconds,
        "speedup": prev_seconds / seconds,
        "setup": default.words(),
        "setup_note": default.note,
        "gflop_per_image": flops / batch / 1e9,
        "gflops": flops / seconds / 1e9,
        "previous_gflops": flops / prev_seconds / 1e9,
        "attention_share": attn_seconds / seconds,
        "infer_images_per_s": batch / infer_seconds,
        "memory_mib": memory / 2**20,
    }


def _attention_seconds(
    model: nn.Module, x: torch.Tensor, setup: Setup, device: torch.device, reps: int
) -> float:
    """The attention modules alone, forward + backward, on the inputs they see in a step."""
    captured: list[tuple[nn.Module, tuple[torch.Tensor, ...]]] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: captured.append((mod, tuple(t.detach() for t in inp))))
        for m in model.modules()
        if isinstance(m, LinearAttention)
    ]
    with autocast(device, setup.dtype):
        model(x)
    for h in handles:
        h.remove()
    if not captured:
        return float("nan")

    def attention_only() -> None:
        for mod, inputs in captured:
            ins = [t.clone().requires_grad_(True) for t in inputs]
            with autocast(device, setup.dtype):
                g_a, a = mod(*ins)
            (g_a.float().sum() + a.float().sum()).backward()

    return _time(attention_only, device, reps)


def contention(reps: int, device: torch.device, default_threads: int) -> dict[str, Any]:
    """Idle and busy training speed of both paths for ``CONTENTION_ROW``, the busy process started here.

    Each path chooses its threads as it would when started on a busy machine: *previous* keeps PyTorch's
    default, *default* measures the idle cores.
    """
    name, width, batch = CONTENTION_ROW
    model, previous, default = _setups(name, width, batch, device, default_threads)
    idle = {s.name: batch / train_seconds(model, s, batch, reps, device) for s in (previous, default)}
    # the busy process: a pure-Python loop on one core at normal priority, as another user's job would be
    busy_proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        _, _, busy_default = _setups(name, width, batch, device, default_threads)
        busy = {
            s.name: batch / train_seconds(model, s, batch, reps, device) for s in (previous, busy_default)
        }
    finally:
        busy_proc.kill()
        busy_proc.wait()
    return {
        "row": CONTENTION_ROW,
        "idle": idle,
        "busy": busy,
        "idle_threads": default.threads,
        "busy_threads": busy_default.threads,
        "previous_threads": previous.threads,
    }


def demo_precision() -> list[dict[str, Any]]:
    """``ltpa demo`` (its defaults) in fp32 and with ``--amp auto``, one after the other: accuracy, attention
    mass in the box and wall time, to show what bf16 autocast changes in results."""
    import tempfile

    from ltpa.demo import DemoConfig, run_demo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for amp in ("off", "auto"):
            summary = run_demo(DemoConfig(out=f"{tmp}/{amp}", amp=amp, quiet=True))
            rows.append({"amp": amp, **summary})
            print(f"demo --amp {amp}: {json.dumps(summary)}", flush=True)
    return rows


def _demo_lines(rows: list[dict[str, Any]]) -> list[str]:
    first = rows[0]["models"]
    att = next(name for name, m in first.items() if m["attention_mass_in_box"])
    lines = [
        "",
        "## Does bf16 change results? `ltpa demo` in fp32 and with `--amp auto`",
        "",
        "The demo's defaults (cluttered digits, 10,000 training images, 6 epochs, one seed), once with "
        "`--amp off` and once with `--amp auto`, in this run. Test accuracy and the attention mass in the "
        "object's box are evaluated in fp32 either way; *box ratio* is the mass over the box's share of the "
        "image (a uniform map scores 1).",
        "",
        "| --amp | resolved | wall (s) | model | test accuracy | box ratio per level |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in rows:
        frac = row["box_area_fraction"]
        for name, m in row["models"].items():
            ratios = ", ".join(f"{v / frac:.2f}x" for v in m["attention_mass_in_box"]) or "-"
            lines.append(
                f"| {row['amp']} | {m['runtime']['amp']}, channels-last {m['runtime']['channels_last']}, "
                f"{m['runtime']['threads']} threads | {row['wall_seconds']:.0f} | `{name}` | "
                f"{m['test_accuracy']:.4f} | {ratios} |"
            )
    fp32, auto = (r["models"][att] for r in rows)
    lines += [
        "",
        f"`{att}`: test accuracy {fp32['test_accuracy']:.4f} in fp32 against {auto['test_accuracy']:.4f} with "
        f"`--amp auto`; wall time {rows[0]['wall_seconds']:.0f} s against {rows[1]['wall_seconds']:.0f} s. One "
        "seed each: a difference of a point or so is within what another seed would change.",
    ]
    return lines


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render(
    results: list[dict[str, Any]],
    peaks: dict[str, float],
    busy: dict[str, Any] | None,
    demo: list[dict[str, Any]] | None,
    device: torch.device,
    args: argparse.Namespace,
) -> str:
    """The Markdown page: set-up, the side-by-side table, contention, recipe-time estimates, a reading."""
    peak = peaks["fp32"]
    memory = (
        "the CUDA allocator's peak during a step"
        if device.type == "cuda"
        else "what a step holds at once (weights, gradients, momentum, saved activations)"
    )
    bf16 = cpu_bf16_support() if device.type == "cpu" else (True, "CUDA")
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
        f"Run {datetime.now(timezone.utc):%Y-%m-%d} on {device.type} ({describe_device(device)}), torch "
        f"{torch.__version__}, {platform.system()}; native bf16: {'yes' if bf16[0] else 'no'} ({bf16[1]}). "
        f"Matrix-multiply peaks measured in the same run: **fp32 {peak:.1f} GFLOP/s, bf16 "
        f"{peaks['bf16']:.1f} GFLOP/s** ({peaks['bf16'] / peak:.1f}x). Each figure is the best of {args.reps} "
        "timed steps after a warm-up; all rows come from this one run, side by side, on an otherwise idle "
        "machine. On a shared machine read them as ratios.",
        "",
        "*previous*: fp32, contiguous tensors, PyTorch's `nn.Dropout`, PyTorch's default threads (ltpa before "
        "it chose per machine). *default*: what `ltpa train` does now (`--amp auto`, `--channels-last auto`, "
        "ltpa's dropout, the idle cores); the *default set-up* column says what that resolved to here. "
        "GFLOP are counted by `torch.utils.flop_counter` (the same for both paths); *of fp32 peak* divides a "
        "path's achieved rate by the fp32 matmul peak (bf16 steps can exceed it); *attention share* is the "
        "attention modules' forward and backward, timed alone on their step inputs, over the default step "
        f"(PAN: its level-2 module; `-`: no attention); *memory* is {memory}, for the whole batch, default path.",
        "",
        "| model | width | batch | params | previous img/s | default img/s | speed-up | default set-up "
        "| train GFLOP/img | of fp32 peak (previous / default) | infer img/s | attention share | memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `{r['model']}` | {r['width']:g} | {r['batch']} | {r['params']:,} | "
            f"{r['previous_images_per_s']:.1f} | {r['images_per_s']:.1f} | **{r['speedup']:.2f}x** | "
            f"{r['setup']} | {r['gflop_per_image']:.3f} | {r['previous_gflops'] / peak:.0%} / "
            f"{r['gflops'] / peak:.0%} | {r['infer_images_per_s']:.1f} | {_share(r['attention_share'])} | "
            f"{r['memory_mib']:.0f} |"
        )
    notes = sorted({f"`{r['model']}` width {r['width']:g}: {r['setup_note']}" for r in results})
    lines += ["", "Why each default set-up (as `ltpa train` logs it):", "", *[f"* {n}" for n in notes]]
    if busy is not None:
        name, width, batch = busy["row"]
        prev_keep = busy["busy"]["previous"] / busy["idle"]["previous"]
        def_keep = busy["busy"]["default"] / busy["idle"]["default"]
        lines += [
            "",
            "## A busy machine",
            "",
            f"`{name}` at width {width:g}, batch {batch}, timed idle and then beside one busy process that this "
            "benchmark starts itself (a pure-Python loop at normal priority, one core). Each path picks its "
            "threads as it would if started at that moment.",
            "",
            "| path | threads idle / busy | idle img/s | busy img/s | busy / idle |",
            "|---|---|---:|---:|---:|",
            f"| previous | {busy['previous_threads']} / {busy['previous_threads']} | {busy['idle']['previous']:.1f} | "
            f"{busy['busy']['previous']:.1f} | {prev_keep:.2f}x |",
            f"| default | {busy['idle_threads']} / {busy['busy_threads']} | {busy['idle']['default']:.1f} | "
            f"{busy['busy']['default']:.1f} | **{def_keep:.2f}x** |",
        ]
    if demo:
        lines += _demo_lines(demo)
    full = [r for r in results if r["width"] == 1.0 and r["model"].startswith("vgg")]
    if full:
        lines += [
            "",
            f"## Estimated time of the paper's recipes on this device ({device.type}, default path)",
            "",
            "Optimiser steps x batch / training images/s (measured at the batch above), plus one inference "
            "pass over the test set per epoch (recipes/README.md lists the steps). An estimate from the rows "
            "above, not a timed run; data loading and augmentation are not included.",
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
    reading = [
        f"* `{r['model']}` width {r['width']:g}: {r['speedup']:.2f}x the previous path "
        f"({r['previous_images_per_s']:.0f} -> {r['images_per_s']:.0f} img/s), "
        f"{r['gflops'] / peak:.0%} of the fp32 peak."
        for r in results
        if r["model"] in ("vgg_att2_concat_pc", "vgg_att3_concat_pc", "resnet164_att2_concat_pc")
    ]
    if reading:
        lines += ["", "## Reading (computed from the tables)", "", *reading]
    return "\n".join(lines) + "\n"


def _parse_row(text: str) -> tuple[str, float, int]:
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected MODEL:WIDTH:BATCH, got {text!r}")
    try:
        return parts[0], float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL:WIDTH:BATCH with numbers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``), checked; ``--widths`` keeps the rows of those
    widths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        type=_parse_row,
        default=DEFAULT_ROWS,
        metavar="MODEL:WIDTH:BATCH",
        help="what to measure (default: the paper's VGGs at width 1/8 and 1, and the ResNet-164s)",
    )
    parser.add_argument(
        "--widths",
        nargs="+",
        type=float,
        metavar="W",
        help="only the rows of these widths, e.g. --widths 1 for the paper's models at full width (the "
        "recipe-time estimates of recipes/README.md)",
    )
    parser.add_argument("--reps", type=int, default=3, help="timed steps per measurement (best is kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--contention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time training beside a busy process it starts (CPU only; default on)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also run `ltpa demo` in fp32 and with --amp auto (~5 min on a CPU)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown page here (e.g. docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.widths:
        args.rows = [row for row in args.rows if row[1] in args.widths]
        if not args.rows:
            parser.error(f"no row of width {', '.join(map(str, args.widths))}; pass --rows MODEL:WIDTH:BATCH")
    unknown = [m for m, _, _ in args.rows if m not in ltpa.list_models()]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; `ltpa models` lists them")
    if any(b < 2 for _, _, b in args.rows) or args.reps < 1:
        parser.error("batches must be >= 2 (batch norm) and --reps >= 1")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    default_threads = torch.get_num_threads()
    peaks = {"fp32": matmul_peak(device), "bf16": matmul_peak(device, torch.bfloat16)}
    print(f"matmul peaks on {device}: fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s", flush=True)
    results = []
    for name, width, batch in args.rows:
        r = bench_row(name, width, batch, args.reps, device, default_threads)
        print(
            f"{name} width {width:g} batch {batch}: previous {r['previous_images_per_s']:.1f} img/s, default "
            f"{r['images_per_s']:.1f} img/s ({r['speedup']:.2f}x; {r['setup']}), "
            f"{r['gflops'] / peaks['fp32']:.0%} of fp32 peak",
            flush=True,
        )
        results.append(r)
    busy = None
    if args.contention and device.type == "cpu":
        busy = contention(args.reps, device, default_threads)
        print(f"contention: {busy}", flush=True)
    demo = demo_precision() if args.demo else None
    page = render(results, peaks, busy, demo, device, args)
    print(page)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
