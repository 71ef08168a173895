"""Ablation controls for learned attention (uniform, frozen, from-g), paired initialisation by layer name, and
the held-out validation split of the cluttered datasets."""

from __future__ import annotations

import pytest
import torch

from ltpa.attention import LinearAttention
from ltpa.errors import LTPAError
from ltpa.models import create_model

KW = {"num_classes": 10, "width": 0.0625, "drop_scale": 0.0}


def _att2(mode: str = "learned", seed: int | None = 3, **kw: object) -> torch.nn.Module:
    return create_model("vgg_att2_concat_pc", attention_mode=mode, init_seed=seed, **KW, **kw)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("mode", ["uniform", "frozen", "from_g"])
def test_ablation_arms_match_the_learned_model_in_parameters_flops_and_head(mode: str) -> None:
    learned, ablated = _att2().eval(), _att2(mode).eval()
    x = torch.rand(2, 3, 32, 32)
    assert _count(ablated) == _count(learned)
    assert _flops(ablated, x) == _flops(learned, x)
    assert ablated.num_features == learned.num_features
    assert ablated.forward_head(ablated.forward_features(x), pre_logits=True).shape == (
        2,
        learned.num_features,
    )


def test_uniform_attention_is_exactly_uniform_pooling_and_stays_so_after_training_steps() -> None:
    model = _att2("uniform")
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    out = model.forward_attention(x)
    for a in out.maps:
        h, w = a.shape[-2:]
        assert torch.equal(a, torch.full_like(a, 1.0 / (h * w)))
    # the conv13 descriptor is the spatial mean of conv13's map
    feats = model.forward_features(x)
    torch.testing.assert_close(out.descriptors[-1], feats.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    for attn in model.attention:
        assert torch.count_nonzero(attn.score.weight) == 0 and not attn.score.weight.requires_grad


def test_learned_attention_is_not_uniform() -> None:
    model = _att2().eval()
    a = model.forward_attention(torch.rand(2, 3, 32, 32)).maps[-1]
    assert not torch.allclose(a, torch.full_like(a, 1.0 / a[0].numel()))


def test_frozen_attention_keeps_its_initial_parameters_while_the_trunk_learns() -> None:
    model = _att2("frozen")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    after = model.state_dict()
    attn = [k for k in before if k.startswith("attention.") and "running" not in k and "batches" not in k]
    assert attn and all(torch.equal(before[k], after[k]) for k in attn)
    assert not torch.equal(before["block7.0.0.weight"], after["block7.0.0.weight"])
    # the map still depends on the image
    a = model.eval().forward_attention(x).maps[-1]
    assert not torch.allclose(a[0], a[1])


def test_from_g_feeds_the_global_feature_to_the_classifier() -> None:
    model = _att2("from_g").eval()
    x = torch.rand(3, 3, 32, 32)
    out = model.forward_attention(x)
    final = model.forward_features(x)
    g = model.global_path(final)
    for d in out.descriptors:
        torch.testing.assert_close(d, g)
    # no gradient reaches the attention parameters, since the classifier does not read the maps
    model.train()
    model(x).sum().backward()
    assert all(p.grad is None for p in model.attention.parameters())


def test_unknown_attention_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="learned, uniform, frozen, detached, from_g"):
        LinearAttention(8, 8, mode="soft")


def test_paired_initialisation_gives_arms_of_one_replicate_equal_trunks() -> None:
    learned, uniform = _att2(seed=7).state_dict(), _att2("uniform", seed=7).state_dict()
    differing = [k for k in learned if not torch.equal(learned[k], uniform[k])]
    assert differing and all(k.startswith("attention.") and "score" in k for k in differing)
    gap = create_model("vgg_gap", init_seed=7, **KW).state_dict()
    vgg = create_model("vgg", init_seed=7, **KW).state_dict()
    # conv1, conv7, conv10 and conv13 (weights and BN scales) under each model's own module path
    pairs = [
        ("block7.0.0.weight", "features.0.0.0.weight", "features.0.0.0.weight"),
        ("block7.6.1.weight", "features.0.6.1.weight", "features.4.2.1.weight"),
        ("block10.2.0.weight", "features.2.2.0.weight", "features.6.2.0.weight"),
        ("block13.2.0.weight", "features.4.2.0.weight", "features.10.0.0.weight"),
    ]
    for att_key, gap_key, vgg_key in pairs:
        assert torch.equal(learned[att_key], gap[gap_key])
        assert torch.equal(learned[att_key], vgg[vgg_key])
    other = _att2(seed=8).state_dict()
    assert not torch.equal(learned["block7.0.0.weight"], other["block7.0.0.weight"])


def test_paired_initialisation_ignores_the_global_random_stream() -> None:
    torch.manual_seed(0)
    a = _att2(seed=1).state_dict()
    torch.manual_seed(123)
    torch.rand(1000)
    b = _att2(seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_init_seed_the_official_construction_order_init_is_unchanged() -> None:
    torch.manual_seed(5)
    a = create_model("vgg_att2_concat_pc", **KW).state_dict()
    torch.manual_seed(5)
    b = create_model("vgg_att2_concat_pc", **KW).state_dict()
    torch.manual_seed(6)
    c = create_model("vgg_att2_concat_pc", **KW).state_dict()
    assert torch.equal(a["block7.0.0.weight"], b["block7.0.0.weight"])
    assert not torch.equal(a["block7.0.0.weight"], c["block7.0.0.weight"])


def test_cluttered_validation_split_uses_held_out_training_objects() -> None:
    from ltpa.data import build_dataset

    opts = {"num_train": 64, "num_val": 64, "num_test": 16, "holdout": 500}
    train = build_dataset("cluttered-digits", split="train", **opts)
    val = build_dataset("cluttered-digits", split="val", **opts)
    test = build_dataset("cluttered-digits", split="test", **opts)
    assert len(val) == 64 and val.classes == train.classes == [str(d) for d in range(10)]
    tr, va, te = (set(d.object_ids.tolist()) for d in (train, val, test))
    assert not tr & va and not va & te and not tr & te
    plain = build_dataset("cluttered-digits", split="train", num_train=64)
    assert not torch.equal(plain.images, train.images)  # holdout changes the train pool
    with pytest.raises(LTPAError, match="holdout=N"):
        build_dataset("cluttered-digits", split="val", num_val=8)
    with pytest.raises(LTPAError, match="leaves no training objects"):
        build_dataset("cluttered-digits", split="train", num_train=8, holdout=100000)


@pytest.mark.parametrize("compatibility", ["pc", "dp", "add"])
def test_detached_attention_gives_the_map_no_training_signal(compatibility: str) -> None:
    """Under "detached" no gradient reaches the trunk through the scores: the trunk's gradient equals the one
    computed with the map held constant, for every compatibility (dp included, where "frozen" changes nothing)."""
    import ltpa

    torch.manual_seed(0)
    model = ltpa.create_model(
        f"vgg_att2_concat_{compatibility}", width=0.0625, init_seed=0, attention_mode="detached"
    ).train()
    assert not any(p.requires_grad for p in model.attention.parameters())
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    trunk = model.block7[0][0].weight
    assert trunk.grad is not None and torch.count_nonzero(trunk.grad) > 0
    # the global path feeds only the scores: with them detached it gets no gradient at all
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.global_path.parameters())
    learned = ltpa.create_model(f"vgg_att2_concat_{compatibility}", width=0.0625, init_seed=0).train()
    torch.nn.functional.cross_entropy(learned(x), y).backward()
    if compatibility != "pc":  # pc's global path gets no gradient in either mode (method §1.7)
        assert any(
            p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in learned.global_path.parameters()
        )
