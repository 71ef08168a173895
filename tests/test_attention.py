"""The attention block on its own (method §1.2-1.7)."""

import pytest
import torch

from ltpa.attention import LinearAttention, create_attention, scale_grad


def _inputs(c=8, d=8, b=3, h=5, w=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=gen), torch.randn(b, d, generator=gen)


@pytest.mark.parametrize("compat", ["pc", "dp", "add"])
@pytest.mark.parametrize("match", ["global", "local"])
def test_shapes_and_softmax_sums_to_one(compat, match):
    l, g = _inputs(c=6, d=10)
    attn = LinearAttention(6, 10, compatibility=compat, match=match).eval()
    g_a, a = attn(l, g)
    assert a.shape == (3, 5, 4)
    assert g_a.shape == (3, 6 if match == "global" else 10)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(dim=(1, 2)), torch.ones(3))


def test_descriptor_is_weighted_sum_of_local_features():
    l, g = _inputs()
    attn = LinearAttention(8, 8, compatibility="dp").eval()
    g_a, a = attn(l, g)
    manual = (a[:, None] * l).sum(dim=(2, 3))
    torch.testing.assert_close(g_a, manual)
    # dp is <l_i, g> with no parameters: recompute the map independently
    scores = (l * g[:, :, None, None]).sum(1).flatten(1)
    torch.testing.assert_close(a.flatten(1), torch.softmax(scores, dim=1))


def test_pc_softmax_ignores_global_feature_and_gives_it_zero_gradient():
    l, g = _inputs(c=6, d=10)
    attn = LinearAttention(6, 10, compatibility="pc").train()
    g = g.requires_grad_(True)
    torch.manual_seed(0)
    g_a, a = attn(l, g)
    torch.manual_seed(0)
    g_a2, a2 = attn(l, torch.randn_like(g) * 100)
    torch.testing.assert_close(a, a2, rtol=0, atol=0)
    torch.testing.assert_close(g_a, g_a2, rtol=0, atol=0)
    (g_a.square().sum() + a.sum()).backward()
    assert torch.count_nonzero(g.grad) == 0
    proj = attn.global_proj[-1]
    assert torch.count_nonzero(proj.weight.grad) == 0


@pytest.mark.parametrize("compat,norm", [("dp", "softmax"), ("add", "softmax"), ("pc", "sigmoid")])
def test_global_feature_steers_the_map_outside_pc_softmax(compat, norm):
    l, g = _inputs()
    attn = LinearAttention(8, 8, compatibility=compat, normalization=norm).eval()
    _, a = attn(l, g)
    _, a2 = attn(l, torch.randn_like(g) * 3)
    assert not torch.allclose(a, a2)


def test_sigmoid_is_gate_then_average():
    l, g = _inputs()
    attn = LinearAttention(8, 8, compatibility="pc", normalization="sigmoid").eval()
    g_a, a = attn(l, g)
    assert ((a > 0) & (a < 1)).all()
    torch.testing.assert_close(g_a, (a[:, None] * l).mean(dim=(2, 3)))


def test_projection_variants_have_official_shapes():
    b = LinearAttention(256, 512, match="global")
    c = LinearAttention(256, 512, match="local")
    # variant B: BN1d(512) + Linear(512->256) + conv 256->1; variant C: conv 256->512 + BN1d(512) + conv 512->1
    assert sum(p.numel() for p in b.parameters()) == 1024 + 512 * 256 + 256 + 257
    assert sum(p.numel() for p in c.parameters()) == 256 * 512 + 512 + 1024 + 513


def test_unknown_choices_raise_listing_valid_ones():
    with pytest.raises(ValueError, match="pc, dp, add"):
        create_attention(4, 4, compatibility="cosine")
    with pytest.raises(ValueError, match="softmax, sigmoid"):
        create_attention(4, 4, normalization="sparsemax")


def test_scale_grad_scales_only_the_backward_pass():
    x = torch.ones(3, requires_grad=True)
    y = scale_grad(x, 0.25)
    torch.testing.assert_close(y, x.detach())
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 0.25))
