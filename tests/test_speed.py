"""CPU speed choices: bf16 only where the CPU computes it, memory format by measurement, threads by load,
the fast dropout mask, and exact resume under these defaults (ltpa.runtime, ltpa.system, ltpa.layers)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_train_config
from safetensors.torch import load_file

import ltpa.cli
import ltpa.system
from ltpa.config import TrainConfig
from ltpa.errors import LTPAError
from ltpa.layers import Dropout, dropout
from ltpa.runtime import choose_channels_last, resolve_precision
from ltpa.system import choose_threads, cpu_bf16_support
from ltpa.train import fit

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2", "fma", "avx512f"}, False),  # AMD Zen 1 / older Intel: bf16 would be emulated
        ({"avx512f", "avx512_bf16"}, True),
        ({"avx512f", "amx_bf16", "amx_tile"}, True),
        ({"fp", "asimd", "bf16"}, True),  # Arm (Linux "Features")
    ],
)
def test_amp_auto_uses_bf16_only_on_cpus_with_native_bf16(monkeypatch, flags, native):
    monkeypatch.setattr(ltpa.system, "cpu_flags", lambda: frozenset(flags))
    assert cpu_bf16_support()[0] is native
    precision = resolve_precision("auto", CPU)
    assert precision.name == ("bf16" if native else "off")
    assert precision.dtype == (torch.bfloat16 if native else None)
    assert ("natively" in precision.reason) is native


def test_amp_without_flags_falls_back_to_torch_checks(monkeypatch):
    monkeypatch.setattr(ltpa.system, "cpu_flags", lambda: frozenset())
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto", CPU).dtype is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_precision("auto", CPU).dtype is torch.bfloat16


def test_amp_forced_choices_and_bad_value(monkeypatch):
    monkeypatch.setattr(ltpa.system, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_precision("off", CPU).dtype is None
    forced = resolve_precision("bf16", CPU)  # allowed, but says it will be slow here
    assert forced.dtype is torch.bfloat16 and "no native bf16" in forced.reason
    assert resolve_precision("fp16", CPU).dtype is torch.float16
    with pytest.raises(LTPAError, match="choose auto, off, bf16 or fp16"):
        resolve_precision("fp8", CPU)


def tiny(tmp_path, name="run", **kw):
    small = {"data_options": {"num_train": 128, "num_test": 32}, "lr_milestones": [], "lr_factors": []}
    return tiny_train_config(tmp_path, name, **{"model": "vgg_att2_concat_pc", **small, **kw})


@pytest.mark.slow
def test_cpu_without_native_bf16_trains_in_fp32_and_records_why(tmp_path, monkeypatch):
    monkeypatch.setattr(ltpa.system, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    run = fit(tiny(tmp_path, epochs=1)).run_dir
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["amp"] == "off"
    info = json.loads((run / "run.json").read_text())
    assert info["runtime"]["amp"] == "off" and "no native bf16" in info["runtime_reasons"]["amp"]
    assert saved["channels_last"] in ("on", "off") and saved["threads"] >= 1


def test_cpu_with_native_bf16_trains_in_bf16_autocast(tmp_path, monkeypatch):
    monkeypatch.setattr(ltpa.system, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    seen = []
    original = torch.autocast.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("dtype"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    run = fit(tiny(tmp_path, epochs=1, channels_last="off")).run_dir
    assert yaml.safe_load((run / "config.yaml").read_text())["amp"] == "bf16"
    assert torch.bfloat16 in seen


# ----------------------------------------------------------------------------------------------- exact resume


def _weights(run):
    return load_file(str(Path(run) / "last.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [{}, {"amp": "bf16", "channels_last": "on"}],
    ids=["defaults", "bf16-channels-last"],
)
def test_exact_resume_under_the_new_defaults(tmp_path, monkeypatch, overrides):
    monkeypatch.delenv("LTPA_THREADS", raising=False)  # threads chosen from the machine's load, as users get
    cfg = tiny(tmp_path, name="cut", checkpoint_every=2, **overrides)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, callbacks=[_stop_at(2, 3)])
    resolved = yaml.safe_load((Path(cfg.out) / "config.yaml").read_text())
    assert resolved["threads"] >= 1 and resolved["amp"] in ("off", "bf16")
    fit(TrainConfig(quiet=True), resume=cfg.out)
    # an uninterrupted run with the settings the first one resolved to
    reference = fit(TrainConfig(**{**resolved, "out": str(tmp_path / "ref"), "quiet": True})).run_dir
    a, b = _weights(cfg.out), _weights(reference)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _stop_at(epoch, step):
    def callback(info):
        if info["epoch"] == epoch and info["step"] == step:
            raise KeyboardInterrupt

    return callback


# ----------------------------------------------------------------------------------------------- memory format


def _model():
    torch.manual_seed(0)
    return ltpa.create_model("vgg_att2_concat_pc", width=0.0625, drop_scale=1.0).train()


def _batch():
    return torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))


def test_channels_last_auto_keeps_the_format_measured_faster():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()

    def timer(factor_last):
        def fake(m, xb, yb, dtype, device):
            is_last = next(p for p in m.parameters() if p.dim() == 4).is_contiguous(
                memory_format=torch.channels_last
            ) and xb.is_contiguous(memory_format=torch.channels_last)
            return factor_last if is_last else 1.0

        return fake

    use, why = choose_channels_last("auto", model, x, y, CPU, None, timer=timer(0.5))
    assert use and "2.00x" in why
    use, why = choose_channels_last("auto", model, x, y, CPU, None, timer=timer(2.0))
    assert not use and "0.50x" in why
    use, _ = choose_channels_last("auto", model, x, y, CPU, None, timer=timer(0.98))
    assert not use  # a 2% difference is noise: keep the standard format
    # the model itself is untouched: same weights, same format
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert next(model.parameters()).is_contiguous()


def test_channels_last_probe_leaves_the_random_stream_and_caches():
    model, (x, y) = _model(), _batch()
    calls = []

    def timer(m, xb, yb, dtype, device):
        calls.append(1)
        m(xb)  # dropout draws random numbers
        return 1.0

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    choose_channels_last("auto", model, x, y, CPU, None, timer=timer, cache_key=("test", id(model)))
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
    assert len(calls) == 2
    choose_channels_last("auto", model, x, y, CPU, None, timer=timer, cache_key=("test", id(model)))
    assert len(calls) == 2  # measured once per key


def test_channels_last_explicit_and_bad_values():
    model, (x, y) = _model(), _batch()
    assert choose_channels_last("on", model, x, y, CPU, None)[0] is True
    assert choose_channels_last("off", model, x, y, CPU, None)[0] is False
    with pytest.raises(LTPAError, match="choose auto, on or off"):
        choose_channels_last("yes", model, x, y, CPU, None)


# ----------------------------------------------------------------------------------------------- threads


def test_threads_follow_the_idle_cores(monkeypatch):
    monkeypatch.delenv("LTPA_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(ltpa.system, "_usable_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(ltpa.system, "other_cpu_load", lambda seconds=0.3: 0.0)
    assert choose_threads().threads == 2
    monkeypatch.setattr(ltpa.system, "other_cpu_load", lambda seconds=0.3: 1.0)
    busy = choose_threads()
    assert busy.threads == 1 and "busy on 1.0" in busy.reason
    monkeypatch.setattr(ltpa.system, "other_cpu_load", lambda seconds=0.3: 5.0)
    assert choose_threads().threads == 1  # never below one
    monkeypatch.setattr(ltpa.system, "other_cpu_load", lambda seconds=0.3: None)
    assert choose_threads().threads == 2  # load unknown (not Linux): PyTorch's default


def test_threads_explicit_and_environment(monkeypatch):
    monkeypatch.setattr(ltpa.system, "other_cpu_load", lambda seconds=0.3: pytest.fail("must not measure"))
    assert choose_threads(3).threads == 3
    monkeypatch.setenv("LTPA_THREADS", "1")
    assert choose_threads() == ltpa.system.ThreadChoice(1, "$LTPA_THREADS")
    monkeypatch.delenv("LTPA_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert choose_threads().threads == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        choose_threads()
    with pytest.raises(ValueError, match="at least 1"):
        choose_threads(0)


def test_other_cpu_load_sees_a_busy_process():
    import subprocess
    import sys

    if ltpa.system.other_cpu_load(0.05) is None:
        pytest.skip("no /proc/stat here")
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load = ltpa.system.other_cpu_load(0.5)
    finally:
        proc.kill()
        proc.wait()
    assert load is not None and load > 0.5


def test_cli_threads_flag_applies_and_rejects_zero(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        args = ["train", "--model", "vgg", "--data", "cluttered-digits", "--width", "0.125", "--epochs", "1",
                "--batch-size", "32", "--data-option", "num_train=64", "--data-option", "num_test=32",
                "--quiet", "--threads", "1", "--amp", "off", "--channels-last", "off",
                "--out", str(tmp_path / "r")]  # fmt: skip
        assert ltpa.cli.main(args) == 0
        saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
        assert (saved["threads"], saved["amp"], saved["channels_last"]) == (1, "off", "off")
        args[args.index("--threads") + 1] = "0"
        args[-1] = str(tmp_path / "r2")
        assert ltpa.cli.main(args) == 2
        assert "threads must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_dropout_statistics_layout_and_gradient(memory_format):
    torch.manual_seed(0)
    x = torch.ones(32, 8, 16, 16).contiguous(memory_format=memory_format).requires_grad_(True)
    y = dropout(x, 0.4)
    assert y.is_contiguous(memory_format=memory_format)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.4) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02  # inverted dropout keeps the expectation
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - 13107 / 32768)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(sum)/dx = the scaled mask


def test_dropout_mask_is_uniform_per_position_and_reproducible():
    torch.manual_seed(1)
    masks = torch.stack([dropout(torch.ones(4, 4, 4), 0.5) == 0 for _ in range(400)]).float()
    per_position = masks.mean(0)  # every position (all four 16-bit lanes) drops ~half the time
    assert per_position.min() > 0.38 and per_position.max() < 0.62
    torch.manual_seed(7)
    a = dropout(torch.ones(100), 0.3)
    torch.manual_seed(7)
    torch.testing.assert_close(dropout(torch.ones(100), 0.3), a, rtol=0, atol=0)


def test_dropout_module_edge_cases():
    x = torch.randn(5, 6)
    module = Dropout(0.5)
    assert isinstance(module, torch.nn.Dropout)  # state, repr and isinstance checks stay nn.Dropout's
    module.eval()
    assert module(x) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropout(x, 1.5)
    strided = torch.ones(8, 8)[:, ::2]  # not dense: drawn per element
    assert dropout(strided, 0.5).shape == strided.shape


def test_the_recipe_cost_command_of_recipes_readme_is_valid():
    import importlib.util
    import shlex

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("throughput", root / "benchmarks" / "throughput.py")
    assert spec is not None and spec.loader is not None
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    text = (root / "recipes" / "README.md").read_text()
    lines = [
        line for line in text.splitlines() if line.startswith(".venv/bin/python benchmarks/throughput.py")
    ]
    assert lines
    for line in lines:
        argv = shlex.split(line.split("throughput.py", 1)[1])
        args = throughput.parse_args(argv)
        if "--widths" in argv:
            assert args.rows and all(width == 1.0 for _, width, _ in args.rows)
