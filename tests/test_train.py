"""Training: recipes, run folders, exact resume, failure handling, DDP and the demo (method §3)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_train_config
from safetensors import safe_open
from safetensors.torch import load_file

import ltpa.cli
from ltpa.checkpoint import atomic_write, load_model, save_checkpoint
from ltpa.config import TrainConfig, list_presets, resolve_config
from ltpa.errors import LTPAError
from ltpa.train import fit, lr_at

ROOT = Path(__file__).resolve().parents[1]


tiny = tiny_train_config  # a width-1/8 VGG on 192 cluttered digits, 2 epochs: seconds


def weights(run_dir):
    return load_file(str(Path(run_dir) / "last.safetensors"))


def assert_same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]  # noqa: E731
    ra = [json.loads(line) for line in (Path(a) / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (Path(b) / "metrics.jsonl").read_text().splitlines()]
    assert strip(ra) == strip(rb)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    return fit(tiny(tmp, model="vgg_att2_concat_pc", name="ref"))


def test_run_folder_contents_and_load_model(reference):
    run = reference.run_dir
    for name in ("config.yaml", "run.json", "metrics.csv", "metrics.jsonl", "last.safetensors", "last.json",
                 "best.safetensors", "best.json", "resume.safetensors"):  # fmt: skip
        assert (run / name).is_file(), name
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["epoch", "global_step", "lr", "train_loss"]
    assert len(rows) == 3
    info = json.loads((run / "run.json").read_text())
    assert info["train_images"] == 192 and "git_commit" in info
    model = load_model(run)
    assert not model.training and model.run_name == "ref"
    x = torch.rand(4, 3, 32, 32)
    # the trained model may be channels-last (chosen by timing on a CPU) and the loaded one is contiguous:
    # their convolutions round differently in the last bits
    torch.testing.assert_close(model(x), reference.model(x), rtol=1e-3, atol=1e-4)
    meta = json.loads((run / "last.json").read_text())
    assert meta["epoch"] == 2 and meta["model_name"] == "vgg_att2_concat_pc"
    assert meta["classes"] == [str(d) for d in range(10)]
    assert reference.history[-1]["lr"] == pytest.approx(0.025)


class Kill(Exception):
    """Stands for SIGKILL: the loop gets no chance to save anything."""


def _raise_at(epoch, step, exc):
    def callback(info):
        if info["epoch"] == epoch and info["step"] == step:
            raise exc

    return callback


@pytest.mark.slow
def test_resume_after_kill_between_epochs_matches(tmp_path, reference):
    cfg = tiny(tmp_path, model="vgg_att2_concat_pc")
    with pytest.raises(Kill):
        fit(cfg, callbacks=[_raise_at(2, 1, Kill())])  # dies right after epoch 1 was saved
    assert json.loads((Path(cfg.out) / "last.json").read_text())["epoch"] == 1
    fit(TrainConfig(quiet=True), resume=cfg.out)
    assert_same_run(cfg.out, reference.run_dir)


@pytest.mark.slow
def test_resume_after_kill_inside_epoch_matches(tmp_path, reference):
    cfg = tiny(tmp_path, model="vgg_att2_concat_pc", checkpoint_every=2)
    with pytest.raises(Kill):
        fit(cfg, callbacks=[_raise_at(2, 3, Kill())])  # resume state was saved at epoch 2 step 2
    fit(TrainConfig(quiet=True), resume=cfg.out)
    assert_same_run(cfg.out, reference.run_dir)


@pytest.mark.slow
def test_resume_after_ctrl_c_inside_epoch_matches(tmp_path, reference):
    cfg = tiny(tmp_path, model="vgg_att2_concat_pc")
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, callbacks=[_raise_at(1, 3, KeyboardInterrupt())])
    fit(TrainConfig(quiet=True), resume=cfg.out)
    assert_same_run(cfg.out, reference.run_dir)


@pytest.mark.slow
def test_sigint_to_a_real_process_saves_and_resumes(tmp_path):
    out = tmp_path / "sig"
    args = [sys.executable, "-m", "ltpa", "train", "--model", "vgg", "--data", "cluttered-digits", "--width", "0.125",
            "--data-option", "num_train=192", "--data-option", "num_test=64", "--epochs", "40", "--batch-size", "32",
            "--lr", "0.05", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"--resume {out}" in err
    with safe_open(str(out / "resume.safetensors"), framework="pt") as fh:
        state = json.loads(fh.metadata()["ltpa_state"])
    assert state["epoch"] >= 1 and len(state["history"]) >= 1
    assert load_model(out).num_classes == 10


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    cfg = tiny(tmp_path, epochs=3)

    def poison(info):
        if info["epoch"] == 2 and info["step"] == 2:
            model = poison.model
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    import ltpa.train as train_mod

    original = train_mod.build_model

    def capture(*a, **k):
        poison.model = original(*a, **k)
        return poison.model

    train_mod.build_model = capture
    try:
        with pytest.raises(LTPAError, match=r"epoch 2 step 3"):
            fit(cfg, callbacks=[poison])
    finally:
        train_mod.build_model = original
    assert json.loads((Path(cfg.out) / "last.json").read_text())["epoch"] == 1
    model = load_model(cfg.out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_atomic_write_keeps_previous_file_on_crash(tmp_path):
    target = tmp_path / "last.json"
    target.write_text("old")

    def broken(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.json"]


def test_checkpoint_crash_keeps_loadable_last(tmp_path, monkeypatch):
    model = ltpa.create_model("vgg", width=0.125)
    save_checkpoint(tmp_path / "last", model, epoch=1)
    import ltpa.checkpoint as ck

    def failing(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(ck, "save_file", failing)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last", model, epoch=2)
    assert json.loads((tmp_path / "last.json").read_text())["epoch"] == 1
    load_model(tmp_path)


def test_existing_run_and_unwritable_output_fail_before_training(tmp_path, reference):
    with pytest.raises(LTPAError, match="already holds a run"):
        fit(tiny(tmp_path, out=str(reference.run_dir)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LTPAError, match="cannot write to output folder"):
        fit(tiny(tmp_path, out=str(blocker / "run")))


def test_paper_recipes_and_schedules():
    cfg = resolve_config(preset="vgg_att3_concat_pc-cifar100")
    assert (cfg.lr, cfg.momentum, cfg.dampening, cfg.weight_decay, cfg.batch_size) == (
        1.0,
        0.9,
        0.9,
        5e-4,
        128,
    )
    assert cfg.augment == "flip-half" and cfg.epochs == 300 and cfg.drop_last
    assert lr_at(cfg, 1, 0) == 1.0 and lr_at(cfg, 25, 0) == 0.5 and lr_at(cfg, 300, 0) == 0.5**12
    assert lr_at(cfg, 1, 117_000) == pytest.approx(1 / (1 + 1e-7 * 117_000))
    cub = resolve_config(preset="vgg_att2_concat_pc-cub200")
    assert [lr_at(cub, e, 0) for e in (1, 30, 60, 90, 120)] == pytest.approx([0.1, 0.2, 0.4, 0.2, 0.1])
    assert cub.img_size == 80
    rn = resolve_config(preset="resnet164_att2_concat_pc-cifar10")
    assert rn.nesterov and rn.dampening == 0 and rn.reset_momentum and rn.augment == "crop-flip-batch"
    assert [lr_at(rn, e, 0) for e in (1, 60, 120, 160)] == pytest.approx([0.1, 0.02, 0.004, 0.0008])
    assert resolve_config(preset="vgg-svhn").lr == 0.1


def test_dampened_sgd_is_torch_optim_sgd():
    # Torch7 optim.sgd: v = g on the first step, then v = m v + (1 - d) g; theta -= lr v (method §3.1)
    cfg = resolve_config(preset="vgg-cifar10")
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD(
        [p], lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening, weight_decay=cfg.weight_decay
    )
    theta, v = p.detach().clone(), None
    for grad in ([0.5, 0.1], [0.2, -0.3], [-0.4, 0.6]):
        g = torch.tensor(grad) + 5e-4 * theta
        v = g if v is None else 0.9 * v + 0.1 * g
        theta = theta - 1.0 * v
        p.grad = torch.tensor(grad)
        opt.step()
    torch.testing.assert_close(p.detach(), theta)


@pytest.mark.slow
def test_every_preset_dry_runs(capsys):
    presets = list_presets()
    assert len(presets) >= 4 * 21 and "vgg_att2_concat_pc-cifar10" in presets
    for name in presets:
        assert ltpa.cli.main(["train", "--preset", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "optimiser: SGD" in out and "19,971,751 parameters" in out


def test_config_yaml_preset_flags_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: vgg\nepochs: 7\nbatch_size: 16\n")
    cfg = resolve_config(path, "vgg_att2_concat_pc-svhn", {"epochs": 3, "seed": None})
    assert (cfg.model, cfg.epochs, cfg.batch_size) == ("vgg_att2_concat_pc", 3, 128)
    path.write_text("epoch: 7\n")
    with pytest.raises(LTPAError, match="unknown config key"):
        resolve_config(path)
    assert ltpa.cli.main(["train", "--preset", "vgg_att9-cifar10", "--dry-run"]) == 2


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "ltpa", "train", "--model", "vgg", "--data", "cluttered-digits", "--width", "0.125",
           "--data-option", "num_train=128", "--data-option", "num_test=64", "--epochs", "1", "--batch-size", "32",
           "--lr", "0.05", "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    # the all-reduced evaluation equals one process evaluating every test image with the same precision
    from ltpa.data import build_dataset, load_tensors
    from ltpa.runtime import resolve_precision
    from ltpa.train import _test_metrics

    test = build_dataset("cluttered-digits", split="test", num_train=128, num_test=64)
    images, labels, _ = load_tensors(test, 32, progress=False)
    amp = resolve_precision(yaml.safe_load((out / "config.yaml").read_text())["amp"], torch.device("cpu"))
    accuracy, _ = _test_metrics(load_model(out), images, labels.long(), amp_dtype=amp.dtype)
    assert rows[0]["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # all-reduced: the epoch counted every image once across both processes
    assert rows[0]["global_step"] == 4
    load_model(out)


def _memory_format_worker(rank, port, results):
    import torch.distributed as dist

    import ltpa.train as train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # a busy CPU: the two processes' timings disagree
        train.choose_channels_last = lambda *a, **k: (rank == 1, f"timed by {rank}")
        cfg = tiny_train_config(Path("."), channels_last="auto")
        data = train._Tensors(
            torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
            torch.zeros(4).long(),
            torch.zeros(1, 3, 8, 8),
            torch.zeros(1).long(),
            10,
            [],
        )
        model = ltpa.create_model("vgg", width=0.125, num_classes=10, img_size=8)
        dist_info = train._Dist(rank=rank, world=2)
        chosen, _ = train._place_model(cfg, model, data, torch.device("cpu"), None, 8, dist_info)
        results[rank] = (chosen, cfg.channels_last)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_processes_share_one_memory_format(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_memory_format_worker, args=(port, results), nprocs=2, join=True)
    assert results[0] == results[1] == (False, "off")  # process 0's choice, on both


@pytest.mark.slow
def test_demo_writes_summary_report_and_figures(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--epochs", "1", "--num-train", "128", "--num-test", "64", "--quiet"]
    assert ltpa.cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"wall_seconds", "box_area_fraction", "models"}
    assert 0 < summary["box_area_fraction"] < 1
    att = summary["models"]["vgg_att2_concat_pc"]
    assert len(att["attention_mass_in_box"]) == 2
    # the reported accuracy is the saved model's on the run's own test split, recomputed independently
    from ltpa.data import build_dataset, load_tensors
    from ltpa.evaluate import predict

    run = out / "vgg_att2_concat_pc"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    test = build_dataset(saved["data"], split="test", **saved["data_options"])
    images, labels, _ = load_tensors(test, 32, progress=False)
    accuracy = float((predict(load_model(run), images).argmax(1) == labels).float().mean())
    assert att["test_accuracy"] == pytest.approx(accuracy)
    assert summary["models"]["vgg"]["attention_mass_in_box"] == []
    for name in ("report.md", "attention_maps.png", "training_curves.png", "report.html"):
        assert (out / name).is_file()
    assert "**One seed.**" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "one training run per model (seed 0)" in page and "ltpa demo: 1 epochs" in page
    assert f"<td>{100 * att['test_accuracy']:.1f}%</td>" in page  # the same 64 test images as the summary
    assert page.count('<img src="data:image/png;base64,') == 1 + 2 + 2 + 1  # curves, maps, confusions, FGSM
    assert ltpa.cli.main(args) == 0  # a second demo redoes its own runs


@pytest.mark.slow
def test_cosine_schedule_and_adamw_resume(tmp_path):
    cfg = TrainConfig(lr=0.01, lr_schedule="cosine", warmup=0.25)
    assert lr_at(cfg, 1, 0, 100) == pytest.approx(0.0004)
    assert lr_at(cfg, 1, 25, 100) == pytest.approx(0.01)
    assert lr_at(cfg, 3, 100, 100) == pytest.approx(0.0)
    run = tiny(tmp_path, optimizer="adamw", lr=3e-3, lr_schedule="cosine", warmup=0.25)
    ref = fit(tiny(tmp_path, name="ref", optimizer="adamw", lr=3e-3, lr_schedule="cosine", warmup=0.25))
    with pytest.raises(KeyboardInterrupt):
        fit(run, callbacks=[_raise_at(1, 4, KeyboardInterrupt())])
    fit(TrainConfig(quiet=True), resume=run.out)
    assert_same_run(run.out, ref.run_dir)


@pytest.mark.parametrize("name", ["vgg", "vgg_gap", "vgg_pan", "vgg_att2_concat_pc", "vgg_att3_concat_pc"])
def test_cub_models_start_from_cifar100_weights(tmp_path, name):
    from ltpa.train import _init_from

    cifar = ltpa.create_model(name, num_classes=100, width=0.125)
    save_checkpoint(tmp_path / "last", cifar, epoch=1)
    cub = ltpa.create_model(name, num_classes=200, img_size=80, width=0.125)
    loaded = _init_from(cub, str(tmp_path))  # raises unless everything but the classifier fits
    own = cub.state_dict()
    same = [k for k, v in cifar.state_dict().items() if k in own and own[k].shape == v.shape]
    assert loaded == len([k for k in same if not k.startswith("preprocess.")]) > 0
    for key in same:
        torch.testing.assert_close(own[key], cifar.state_dict()[key], msg=key)


class _Digits(torch.utils.data.Dataset):
    """scikit-learn's handwritten digits as a user's own Dataset: float (1, 8, 8) images in [0, 1]."""

    def __init__(self, part: slice) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = torch.tensor(digits.images[part] / 16.0, dtype=torch.float32)[:, None]
        self.labels = torch.tensor(digits.target[part])
        self.classes = [f"digit {k}" for k in range(10)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_fit_trains_on_a_users_own_dataset(tmp_path):
    cfg = TrainConfig(
        model="vgg_gap", width=0.125, img_size=16, epochs=3, out=str(tmp_path / "run"), quiet=True
    )
    result = fit(cfg, train_data=_Digits(slice(0, 1400)), eval_data=_Digits(slice(1400, None)))
    assert result.final["test_accuracy"] > 0.5, result.history  # real digits, chance 0.1
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"] == "custom" and saved["img_size"] == 16 and saved["preprocess"] == "meanstd"
    model = load_model(tmp_path / "run")
    assert model.checkpoint["classes"][3] == "digit 3" and model.img_size == 16
    with pytest.raises(LTPAError, match="pass them again"):
        fit(TrainConfig(quiet=True), resume=tmp_path / "run", changes={"epochs": 4})
    with pytest.raises(LTPAError, match="needs both train_data and eval_data"):
        fit(cfg, train_data=_Digits(slice(0, 10)))
