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


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
    """BatchNorm statistics and affine parameters away from their initial values (eval mode uses them)."""
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            bn.weight.data.copy_(torch.randn(n, generator=gen))
            bn.bias.data.copy_(torch.randn(n, generator=gen) * 0.5)


@torch.no_grad()
def test_projection_variants_b_and_c_give_the_same_maps_but_not_the_same_heads():
    """method §1.3: under pc + softmax, C's map is a B map (fold the 1x1 projector P, b_P into u), but C's head
    is not a B head. As a function of the level's pooled original features x (256-d for att3's level 1, the
    same for both since the maps are), B's level logit is sum_j w_j ReLU(BN_j(x_j)): additively separable in
    the coordinates of x, so every mixed second difference is zero. C's is sum_m w_m ReLU(BN_m((P x + b_P)_m)),
    whose mixed differences are not: no B head computes it."""
    from ltpa.models._head import AttentionHead

    torch.manual_seed(0)
    c_in, d = 6, 10
    attn_c = LinearAttention(c_in, d, match="local").eval()
    attn_b = LinearAttention(c_in, d, match="global").eval()
    # maps: B with u_B = P^T u_C and bias u_C . b_P + b_C scores every position as C does
    u_c, proj = attn_c.score.weight.view(d), attn_c.local_proj
    attn_b.score.weight.copy_((u_c @ proj.weight.view(d, c_in)).view(1, c_in, 1, 1))
    attn_b.score.bias.copy_(u_c @ proj.bias + attn_c.score.bias)
    l, g = _inputs(c=c_in, d=d)
    pooled_c, map_c = attn_c(l, g)
    pooled_b, map_b = attn_b(l, g)
    torch.testing.assert_close(map_b, map_c, rtol=1e-5, atol=1e-6)
    # C's descriptor is the projection of B's (the map sums to 1, so the bias passes through whole)
    torch.testing.assert_close(
        pooled_c, pooled_b @ proj.weight.view(d, c_in).T + proj.bias, rtol=1e-5, atol=1e-5
    )

    # heads: the level-1 logit as a function of the pooled original features x
    head_b = AttentionHead([c_in], 1).eval()
    head_c = AttentionHead([d], 1).eval()
    _randomise_bn(head_b, 1)
    _randomise_bn(head_c, 2)

    def logit_b(x: torch.Tensor) -> torch.Tensor:
        return head_b.logits(head_b.features([x]))[:, 0]

    def logit_c(x: torch.Tensor) -> torch.Tensor:
        return head_c.logits(head_c.features([x @ proj.weight.view(d, c_in).T + proj.bias]))[:, 0]

    x = torch.randn(64, c_in, generator=torch.Generator().manual_seed(3))
    steps = torch.randn(64, 2, generator=torch.Generator().manual_seed(4)) * 2

    def mixed_difference(f, i: int, j: int) -> torch.Tensor:
        ei, ej = torch.zeros(c_in), torch.zeros(c_in)
        ei[i], ej[j] = 1.0, 1.0
        si, sj = steps[:, :1] * ei, steps[:, 1:] * ej
        return f(x + si + sj) - f(x + si) - f(x + sj) + f(x)

    pairs = [(i, j) for i in range(c_in) for j in range(i + 1, c_in)]
    worst_b = max(float(mixed_difference(logit_b, i, j).abs().max()) for i, j in pairs)
    worst_c = max(float(mixed_difference(logit_c, i, j).abs().max()) for i, j in pairs)
    assert worst_b < 1e-5  # separable: B's level logit is a sum of one-coordinate functions
    assert worst_c > 1e-2  # C's mixes coordinates inside the ReLU
