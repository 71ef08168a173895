"""The switches that restore the official code where ltpa differs from it (docs/fidelity.md rows 1-6)."""

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
