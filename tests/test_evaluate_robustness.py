"""FGSM and PGD against an independent computation, their contract (eval mode, input-only gradients, [0, 1]
clipping, the eps-ball) and the attack sweep's bookkeeping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltpa.errors import LTPAError
from ltpa.evaluate import attack_sweep, fgsm, pgd, predict

pytestmark = pytest.mark.usefixtures("single_thread")


class SoftmaxRegression(nn.Module):
    """logits = W x + b on flattened images; dropout makes train and eval mode differ."""

    def __init__(self, pixels: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(pixels, classes).double()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.flatten(1)))


def test_fgsm_matches_the_analytic_gradient_of_softmax_regression() -> None:
    """For logits W x + b the cross-entropy gradient is W^T (softmax(Wx + b) - onehot(y)); FGSM must step
    along its sign and clip to [0, 1]."""
    torch.manual_seed(0)
    model = SoftmaxRegression(3 * 6 * 6, 5)
    x = torch.rand(12, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    eps = 8 / 255
    model.train()
    adv = fgsm(model, x, y, eps)
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    grad = (p - torch.nn.functional.one_hot(y, 5).double()) @ w  # (B, pixels)
    expected = (x + eps * grad.view_as(x).sign()).clamp(0, 1)
    assert torch.equal(adv, expected)
    assert model.training and model.drop.training  # mode restored
    assert all(param.grad is None for param in model.parameters())  # gradients w.r.t. the input only


def test_attacks_stay_in_the_eps_ball_and_in_range() -> None:
    torch.manual_seed(1)
    model = SoftmaxRegression(3 * 4 * 4, 3)
    x = torch.rand(8, 3, 4, 4, dtype=torch.float64)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 3, (8,))
    eps = 16 / 255
    for adv in (
        fgsm(model, x, y, eps),
        pgd(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(0)),
    ):
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= eps + 1e-12
        assert not torch.equal(adv, x)
    assert torch.equal(fgsm(model, x, y, 0.0), x)
    assert torch.equal(pgd(model, x, y, 0.0), x)


def test_pgd_raises_the_loss_at_least_as_much_as_its_first_step() -> None:
    torch.manual_seed(2)
    model = SoftmaxRegression(3 * 4 * 4, 4).eval()
    x = torch.rand(32, 3, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    eps = 8 / 255

    def loss(images: torch.Tensor) -> float:
        return nn.functional.cross_entropy(model(images), y).item()

    strong = pgd(model, x, y, eps, steps=20, random_start=False)
    assert loss(strong) > loss(fgsm(model, x, y, eps / 8)) > loss(x)


def test_pgd_is_reproducible_with_a_seeded_generator() -> None:
    model = SoftmaxRegression(3 * 4 * 4, 3)
    x, y = torch.rand(4, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    a = pgd(model, x, y, 0.05, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, 0.05, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sweep_eps0_is_the_clean_accuracy_and_rates_are_consistent() -> None:
    from ltpa import create_model

    torch.manual_seed(0)
    model = create_model("vgg", width=0.0625, num_classes=4, img_size=16).eval()
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    logits = predict(model, images, batch_size=7)
    labels = logits.argmax(1).clone()
    labels[:5] = (labels[:5] + 1) % 4  # 15 of 20 correct
    rows = attack_sweep(model, images, labels, method="fgsm", epsilons=[0, 2, 64], batch_size=7)
    assert [r["eps"] for r in rows] == [0.0, 2.0, 64.0]
    assert rows[0]["accuracy"] == 15 / 20 and rows[0]["fooling_rate"] == 0.0
    assert all(row["n"] == 20 for row in rows)
    clean_right = logits.argmax(1) == labels
    for row in rows[1:]:  # against the attack run directly: accuracy, and flips among the clean-correct
        adv = fgsm(model, images.float() / 255, labels, row["eps"] / 255)
        right = predict(model, adv, batch_size=7).argmax(1) == labels
        assert row["accuracy"] == pytest.approx(float(right.float().mean()))
        assert row["fooling_rate"] == pytest.approx(float((~right[clean_right]).float().mean()))
    with pytest.raises(LTPAError, match="unknown attack"):
        attack_sweep(model, images, labels, method="cw")


def test_negative_epsilon_is_a_user_error() -> None:
    model = SoftmaxRegression(3, 2)
    with pytest.raises(LTPAError, match="epsilon"):
        fgsm(model, torch.rand(1, 3, 1, 1, dtype=torch.float64), torch.tensor([0]), -0.1)
