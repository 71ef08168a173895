"""The switches that restore the official code where ltpa differs from it, and the documented differences that
have none (docs/fidelity.md rows 1-7 and 23)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config
from safetensors.torch import load_file

from ltpa.config import TrainConfig, list_presets, preset_overrides
from ltpa.data.augment import random_crop
from ltpa.models import create_model
from ltpa.models._base import normalized_input


def _asymmetric_batch(b: int = 8) -> torch.Tensor:
    base = torch.arange(3 * 12 * 12, dtype=torch.float32).view(1, 3, 12, 12)
    return base.expand(b, 3, 12, 12).clone()


def test_batch_crop_uses_one_offset_for_the_whole_batch() -> None:
    x = _asymmetric_batch(16)
    out = random_crop(x, 4, torch.Generator().manual_seed(0), per="batch")
    assert all(torch.equal(out[0], o) for o in out)
    per_image = random_crop(x, 4, torch.Generator().manual_seed(0), per="image")
    assert len({tuple(o.flatten().tolist()) for o in per_image}) > 1
    with pytest.raises(ValueError, match="per must be"):
        random_crop(x, 4, per="pixel")  # type: ignore[arg-type]


def test_official_resnet_augmentation_flips_exactly_half_after_one_crop() -> None:
    from ltpa.train import _augment

    cfg = TrainConfig(augment="crop-flip-batch")
    x = _asymmetric_batch(10)
    out = _augment(cfg, x, torch.Generator().manual_seed(3))
    plain = [o for o in out if torch.equal(o, out[0])]
    mirrored = [o for o in out if torch.equal(o, out[0].flip(-1))]
    assert len(plain) == 5 and len(mirrored) == 5
    assert preset_overrides("resnet164_att2_concat_pc-cifar100")["augment"] == "crop-flip-batch"


def test_normalized_input_skips_the_models_own_normalisation() -> None:
    model = create_model("vgg_gap", num_classes=10, width=0.0625, img_size=16, preprocess="gcn_zca").eval()
    model.preprocess.fit((torch.rand(64, 3, 16, 16) * 255).to(torch.uint8))  # ZCA over 768 dimensions
    x = torch.rand(4, 3, 16, 16)
    with normalized_input(model):
        via_normalized = model(model.preprocess(x))
    torch.testing.assert_close(via_normalized, model(x))
    assert not model._input_normalized


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("preprocess, differ", [("none", False), ("gcn_zca", True)])
def test_augmenting_normalized_images_differs_only_where_normalisation_does_not_commute(
    tmp_path: Path, preprocess: str, differ: bool
) -> None:
    from ltpa.train import fit

    weights = []
    for space in ("pixels", "normalized"):
        cfg = tiny_train_config(
            tmp_path,
            space,
            model="vgg_gap",
            epochs=1,
            img_size=16,  # ZCA over 768 dimensions
            augment="crop-flip",
            augment_space=space,
            preprocess=preprocess,
        )
        fit(cfg)
        weights.append(load_file(str(tmp_path / space / "last.safetensors")))
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same != differ


def test_fresh_head_initialisation_rebuilds_the_whole_classifier(tmp_path: Path) -> None:
    from ltpa.checkpoint import save_checkpoint
    from ltpa.train import _init_from

    kw = {"width": 0.0625, "drop_scale": 0.0}
    source = create_model("vgg_att2_concat_pc", num_classes=100, init_seed=1, **kw)
    save_checkpoint(tmp_path / "src", source, config={"model": "vgg_att2_concat_pc", "width": 0.0625})
    src = source.state_dict()
    for head, copied in (("keep", True), ("fresh", False)):
        target = create_model("vgg_att2_concat_pc", num_classes=200, init_seed=2, **kw)
        before = {k: v.clone() for k, v in target.state_dict().items()}
        _init_from(target, str(tmp_path / "src"), head)
        after = target.state_dict()
        assert torch.equal(after["block7.0.0.weight"], src["block7.0.0.weight"])
        assert torch.equal(after["head.fc.weight"], before["head.fc.weight"])  # 200 != 100 outputs
        bn = "head.levels.0.norm.weight"
        assert torch.equal(after[bn], src[bn]) is copied and torch.equal(after[bn], before[bn]) is not copied
    assert preset_overrides("vgg_att2_concat_pc-cub200")["init_from_head"] == "fresh"


def test_variant_c_presets_reproduce_the_official_att3_training_block() -> None:
    names = [n for n in list_presets() if n.endswith("-variant-c")]
    assert "vgg_att3_concat_pc-cifar100-variant-c" in names and len(names) == 2 * len(
        [n for n in list_presets() if n.startswith("vgg_att3") and n.endswith("-cifar10")]
    )
    over = preset_overrides("vgg_att3_concat_pc-cifar10-variant-c")
    assert over["batch_size"] == 64 and over["model_kwargs"] == {"match": "local"}
    model = create_model("vgg_att3_concat_pc", num_classes=10, match="local")
    assert model.num_features == 1536  # 3 x 512: conv7 projected up (method §1.3)


def test_resnet_biases_follow_the_official_code() -> None:
    att = create_model("resnet164_att2_concat_pc", num_classes=10, width=0.25)
    assert att.global_path[-1].bias.abs().sum() > 0 and att.head.fc.bias.abs().sum() > 0
    base = create_model("resnet164", num_classes=10, width=0.25)
    assert base.fc.bias.abs().sum() == 0 and base.fc.weight.abs().sum() > 0


# ---------------------------------------------------------------------------------------- row 6


@torch.no_grad()
def test_compatibility_scores_leave_out_only_the_per_image_constant_under_a_softmax() -> None:
    """fidelity row 6: under pc + softmax ``compatibility_scores`` is the paper's ``c = <u, l_i + g'> + b`` less
    ``<u, g'>`` (one number per image), so the map is exactly the paper's; under a sigmoid ``c`` is whole."""
    from ltpa.attention import LinearAttention

    gen = torch.Generator().manual_seed(0)
    l, g = torch.rand(3, 6, 5, 4, generator=gen), torch.randn(3, 10, generator=gen)
    for normalization in ("softmax", "sigmoid"):
        attn = LinearAttention(6, 10, compatibility="pc", normalization=normalization).eval()
        torch.nn.init.normal_(attn.score.bias)
        projected = attn.global_proj(g)  # g' (B, 6): variant B maps g down to l's width
        u, b = attn.score.weight.view(6), attn.score.bias
        paper = torch.einsum("bchw,c->bhw", l + projected[:, :, None, None], u) + b  # (B, H, W)
        constant = (projected @ u)[:, None, None]  # (B, 1, 1)
        scores = attn.compatibility_scores(l, g)
        expected = paper - constant if normalization == "softmax" else paper
        torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
        _, a = attn(l, g)
        if normalization == "softmax":
            torch.testing.assert_close(a.flatten(1), torch.softmax(paper.flatten(1), dim=1))
            assert constant.abs().max() > 0.1  # the difference is real, not a zero constant
        else:
            torch.testing.assert_close(a, torch.sigmoid(paper))


# ---------------------------------------------------------------------------------------- row 7


def test_amp_off_trains_in_fp32_and_auto_uses_bf16_only_where_the_cpu_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fidelity row 7: ``amp="auto"`` picks bf16 autocast on a CPU with native bf16; ``--amp off`` restores the
    official fp32 whatever the CPU, and the run records it."""
    import json

    import ltpa.runtime as runtime
    from ltpa.train import fit

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: (True, "amx_bf16"))
    assert runtime.resolve_precision("auto", cpu).dtype == torch.bfloat16
    assert runtime.resolve_precision("off", cpu).dtype is None
    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: (False, "no avx512_bf16"))
    assert runtime.resolve_precision("auto", cpu).dtype is None

    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: (True, "amx_bf16"))
    seen: list[torch.dtype | None] = []
    real = runtime.autocast

    def spy(device: torch.device, dtype: torch.dtype | None):  # type: ignore[no-untyped-def]
        seen.append(dtype)
        return real(device, dtype)

    import ltpa.train

    monkeypatch.setattr(ltpa.train, "autocast", spy)
    fit(tiny_train_config(tmp_path, epochs=1, amp="off", data_options={"num_train": 64, "num_test": 32}))
    assert seen and set(seen) == {None}  # every forward pass in fp32
    assert json.loads((tmp_path / "run" / "run.json").read_text())["runtime"]["amp"] == "off"


# ---------------------------------------------------------------------------------------- row 23


def test_which_best_evaluates_the_best_checkpoint_not_the_last(tmp_path: Path) -> None:
    """fidelity row 23: ``ltpa eval`` reports the last checkpoint; ``--which best`` the best one."""
    import json

    from conftest import data_option_flags

    from ltpa.checkpoint import save_checkpoint
    from ltpa.cli import main

    run = tmp_path / "run"
    for stem, always in (("last", 0), ("best", 1)):
        model = create_model("vgg_att2_concat_pc", num_classes=10, width=0.0625, img_size=16)
        with torch.no_grad():  # a model that answers class `always` for every image
            model.get_classifier().weight.zero_()
            model.get_classifier().bias.copy_(torch.nn.functional.one_hot(torch.tensor(always), 10) * 10.0)
        save_checkpoint(run / stem, model, epoch={"last": 2, "best": 1}[stem])
    args = ["eval", str(run), "--data", "cluttered-digits", *data_option_flags(), "--limit", "32"]
    for which, always in (("last", 0), ("best", 1)):
        flag = [] if which == "last" else ["--which", "best"]
        assert main([*args, *flag, "--out", str(tmp_path / which)]) == 0
        per_class = json.loads((tmp_path / which / "eval.json").read_text())["run"]["per_class"]
        assert per_class[str(always)] == 1.0 and per_class[str(1 - always)] == 0.0


def test_sync_bn_switch_converts_every_batchnorm_under_ddp_and_is_refused_on_a_cpu(monkeypatch) -> None:
    """Ledger row 30: ``--sync-bn`` makes BatchNorm statistics global across processes (CUDA only)."""
    import torch.nn.parallel

    import ltpa
    from ltpa.config import TrainConfig
    from ltpa.errors import LTPAError
    from ltpa.train import _Dist, _wrap_model

    model = ltpa.create_model("vgg_att2_concat_pc", width=0.0625)
    two = _Dist(rank=0, world=2)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda m, device_ids=None: m)
    wrapped = _wrap_model(TrainConfig(sync_bn=True), model, two, torch.device("cuda", 0))
    kinds = {type(m) for m in wrapped.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    plain = _wrap_model(
        TrainConfig(sync_bn=False), ltpa.create_model("vgg", width=0.0625), two, torch.device("cuda", 0)
    )
    assert torch.nn.SyncBatchNorm not in {type(m) for m in plain.modules()}
    with pytest.raises(LTPAError, match="--sync-bn needs CUDA"):
        _wrap_model(TrainConfig(sync_bn=True), model, two, torch.device("cpu"))


def test_svhn_attention_presets_train_at_0_1_and_lr_1_restores_the_official_blocks() -> None:
    """Ledger row 29: the SVHN presets' rate is 0.1 (the official att-pc blocks say 1, "maybe 0.1")."""
    from ltpa.config import resolve_config

    assert preset_overrides("vgg_att2_concat_pc-svhn")["lr"] == 0.1
    assert resolve_config(preset="vgg_att2_concat_pc-svhn", overrides={"lr": 1.0}).lr == 1.0


def test_demo_preset_is_adamw_cosine_and_paper_presets_are_the_sgd_step_recipe() -> None:
    """Ledger row 8: the demo trains with AdamW and a cosine schedule; ``--preset <model>-<data>`` is the
    paper's SGD recipe (method §3.1)."""
    demo = preset_overrides("demo")
    assert (demo["optimizer"], demo["lr_schedule"]) == ("adamw", "cosine")
    paper = preset_overrides("vgg_att2_concat_pc-cifar10")
    assert (paper["optimizer"], paper["lr_schedule"], paper["lr"], paper["dampening"]) == (
        "sgd",
        "step",
        1.0,
        0.9,
    )
