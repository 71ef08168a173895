"""The evidence study's design, fixed in code before the main stage runs: arms, regimes, measures and comparisons.

This is the one file to edit to extend the study: an arm is one :class:`Arm` entry, a measure one
:class:`Measure` entry (its code lives in :mod:`ltpa.study.measures`), a comparison one :class:`Comparison` row.
The runner, the records and the report read everything from here, so the pre-registration and the code that
runs cannot disagree. The report cites the commit at which the primary comparisons were last changed.

The question (docs/method.md §1.7 for the maths): when does trainable attention help a CNN classifier? Under
``pc`` with a softmax the map ignores the global feature (the query cancels), so ``pc`` against uniform pooling
isolates *query-free learned pooling*; ``dp`` and ``add`` use the global feature as a query. ``frozen`` keeps the
attention parameters at their initial values: learned against frozen isolates *learning* the attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ltpa.study import measures

__all__ = [
    "ARMS",
    "DESIGN",
    "MEASURES",
    "PRIMARY",
    "REGIMES",
    "SECONDARY",
    "SMOKE",
    "Arm",
    "Comparison",
    "Design",
    "Measure",
    "Regime",
    "arm",
    "measure",
]

ATTENTION_GRID: tuple[float, ...] = (0.01, 0.03, 0.1)
"""Starting learning-rate grid (factor ~3 apart); the pilot extends it until the best rate is interior."""


@dataclass(frozen=True)
class Arm:
    """One model of the study: an ltpa model name, its options, how it is shown, and its pilot grid.

    Args:
        name: short key used in records and tables.
        model: an ``ltpa.create_model`` name.
        label: what the report calls it (says what the arm isolates).
        colour: its colour in every figure.
        kwargs: model options (``attention_mode``, ...); ``init_seed`` and ``drop_scale`` are set by the design.
        lr_grid: the pilot's starting grid of peak learning rates.
        role: ``"primary"`` (at least ``Design.primary_replicates``) or ``"descriptive"``.
        regimes: the regimes it runs in.
    """

    name: str
    model: str
    label: str
    colour: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    lr_grid: tuple[float, ...] = ATTENTION_GRID
    role: str = "primary"
    regimes: tuple[str, ...] = ("cluttered",)


ARMS: tuple[Arm, ...] = (
    Arm("att2-pc", "vgg_att2_concat_pc", "pc, learned (query-free pooling)", "#d62728", regimes=("cluttered", "plain")),
    Arm("att2-dp", "vgg_att2_concat_dp", "dp, learned (g as query)", "#1f77b4", regimes=("cluttered", "plain")),
    Arm("att2-add", "vgg_att2_concat_add", "add, learned (g as query)", "#2ca02c", regimes=("cluttered", "plain")),
    Arm(
        "att2-uniform", "vgg_att2_concat_pc", "uniform pooling (control)", "#7f7f7f",
        {"attention_mode": "uniform"}, regimes=("cluttered", "plain"),
    ),
    Arm("att2-frozen-pc", "vgg_att2_concat_pc", "pc, frozen at init (control)", "#ff9896", {"attention_mode": "frozen"}),
    # dp has no attention parameters when the local and global widths match (here), so "frozen" dp would be the
    # learned model itself; "detached" gives its map no training signal, the untrained-attention control for dp
    Arm(
        "att2-detached-dp", "vgg_att2_concat_dp", "dp, map given no training signal (control)", "#aec7e8",
        {"attention_mode": "detached"}, role="descriptive",
    ),
    Arm("vgg-gap", "vgg_gap", "VGG-GAP (CAM reference)", "#9467bd", lr_grid=(0.03, 0.1, 0.3)),
)  # fmt: skip


@dataclass(frozen=True)
class Regime:
    """Where arms train: a dataset with its options, and which measures are taken.

    ``rates_from`` names a regime whose pilot rates this one reuses (no pilot of its own; the report says so).
    """

    name: str
    label: str
    data: str
    measures: tuple[str, ...]
    rates_from: str | None = None


REGIMES: tuple[Regime, ...] = (
    Regime(
        "cluttered",
        "cluttered-fashion (objects among fragments)",
        "cluttered-fashion",
        ("accuracy", "map_ap", "map_ap_deepest", "map_pointing", "fgsm", "pgd"),
    ),
    Regime(
        "plain",
        "plain Fashion-MNIST items (the object fills the frame)",
        "fashion-mnist",
        ("accuracy",),
        rates_from="cluttered",
    ),
)


@dataclass(frozen=True)
class Measure:
    """A per-run measurement, registered once.

    Args:
        name: key in records and comparisons.
        label: what the report calls it.
        unit: shown after values.
        higher_is_better: direction of "better".
        measure: ``(ctx) -> record`` computes it for one trained run (per-image values, JSON-able).
        value: ``(records, comparison, replicate) -> (a, b)`` the paired values of a comparison's two arms.
        summary: ``(record, data) -> {column: value}`` per-run values for the section's table.
        section: title of the report section that shows it.
    """

    name: str
    label: str
    unit: str
    higher_is_better: bool
    measure: Callable[..., dict[str, Any]]
    value: Callable[..., tuple[float, float]]
    summary: Callable[..., dict[str, float]]
    section: str


MEASURES: tuple[Measure, ...] = (
    Measure(
        "accuracy", "test accuracy", "%", True, measures.measure_accuracy, measures.paired_accuracy,
        measures.summary_accuracy, "Accuracy",
    ),
    Measure(
        "map_ap", "pixel AP of the map (best level on validation)", "%", True, measures.measure_maps,
        measures.paired_map_ap, measures.summary_map_ap, "Maps against object masks (attention maps; VGG-GAP: its CAM)",
    ),
    Measure(
        "map_pointing", "pointing: the map's peak on the object", "%", True, measures.measure_maps,
        measures.paired_map_pointing, measures.summary_map_pointing, "Maps against object masks (attention maps; VGG-GAP: its CAM)",
    ),
    Measure(
        "map_ap_deepest", "pixel AP of the deepest map (equal resolution to the CAM)", "%", True,
        measures.measure_maps, measures.paired_map_ap_deepest, measures.summary_map_ap,
        "Maps against object masks (attention maps; VGG-GAP: its CAM)",
    ),
    Measure(
        "fgsm", "FGSM fooling rate at 2/255 (images both arms get right)", "%", False, measures.measure_fgsm,
        measures.paired_fooling, measures.summary_fgsm, "Adversarial robustness",
    ),
    Measure(
        "pgd", "PGD-10 accuracy at 2/255", "%", True, measures.measure_pgd, measures.paired_pgd,
        measures.summary_pgd, "Adversarial robustness",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """One pre-registered comparison: ``measure`` of ``arm_a`` against ``arm_b`` in ``regime``, paired by
    replicate; ``delta`` is the smallest effect of interest (points); ``isolates`` says what the difference
    can be credited to."""

    key: str
    family: str
    regime: str
    measure: str
    arm_a: str
    arm_b: str
    delta: float
    isolates: str


PRIMARY: tuple[Comparison, ...] = (
    Comparison("i-a", "i", "cluttered", "accuracy", "att2-pc", "att2-uniform", 1.0, "query-free learned pooling"),
    Comparison("i-b", "i", "cluttered", "accuracy", "att2-dp", "att2-uniform", 1.0, "learned pooling with g as query"),
    Comparison("i-c", "i", "cluttered", "accuracy", "att2-add", "att2-uniform", 1.0, "learned pooling with g as query"),
    Comparison("i-d", "i", "cluttered", "map_ap", "att2-pc", "vgg-gap", 3.0, "attention map against the trunk's CAM"),
    Comparison("i-e", "i", "cluttered", "map_ap", "att2-dp", "vgg-gap", 3.0, "attention map against the trunk's CAM"),
    Comparison("i-f", "i", "cluttered", "map_ap", "att2-add", "vgg-gap", 3.0, "attention map against the trunk's CAM"),
    Comparison("i-g", "i", "cluttered", "fgsm", "att2-pc", "att2-frozen-pc", 3.0, "learning the attention (pc)"),
    Comparison("ii-a", "ii", "plain", "accuracy", "att2-pc", "att2-uniform", 1.0, "query-free learned pooling"),
    Comparison("ii-b", "ii", "plain", "accuracy", "att2-dp", "att2-uniform", 1.0, "learned pooling with g as query"),
    Comparison("ii-c", "ii", "plain", "accuracy", "att2-add", "att2-uniform", 1.0, "learned pooling with g as query"),
)  # fmt: skip
"""Holm within each family (i, ii); an exact sign-flip p beside each paired t."""

SECONDARY: tuple[Comparison, ...] = (
    Comparison("d-1", "descriptive", "cluttered", "accuracy", "att2-pc", "att2-frozen-pc", 1.0, "learning the attention (pc)"),
    Comparison("d-2", "descriptive", "cluttered", "accuracy", "att2-dp", "att2-detached-dp", 1.0, "learning the attention (dp)"),
    Comparison("d-3", "descriptive", "cluttered", "fgsm", "att2-dp", "att2-detached-dp", 3.0, "learning the attention (dp)"),
    Comparison("d-4", "descriptive", "cluttered", "fgsm", "att2-pc", "att2-uniform", 3.0, "query-free learned pooling"),
    Comparison("d-5", "descriptive", "cluttered", "pgd", "att2-pc", "att2-uniform", 3.0, "query-free learned pooling"),
    Comparison("d-6", "descriptive", "cluttered", "accuracy", "att2-dp", "att2-pc", 1.0, "g as query against none"),
    Comparison("d-7", "descriptive", "cluttered", "map_ap_deepest", "att2-pc", "vgg-gap", 3.0, "map against CAM, both 8x8"),
    Comparison("d-8", "descriptive", "cluttered", "map_ap_deepest", "att2-dp", "vgg-gap", 3.0, "map against CAM, both 8x8"),
    Comparison("d-9", "descriptive", "cluttered", "map_ap_deepest", "att2-add", "vgg-gap", 3.0, "map against CAM, both 8x8"),
)  # fmt: skip
"""Descriptive: reported with CIs and p-values, no claim rests on them."""


@dataclass(frozen=True)
class Design:
    """Sizes and the recipe. ``DESIGN`` is the study as registered; ``SMOKE`` shrinks it for tests.

    Order of spending (and of cutting, from the end, when the budget runs out): regime (i) pilots, regime (i)
    primary replicates, the twice-the-epochs check, regime (ii) replicates, descriptive arms.
    """

    primary_replicates: int = 6
    descriptive_replicates: int = 3
    double_replicates: int = 3  # twice-the-epochs check
    width: float = 0.125
    num_train: int = 5000
    num_val: int = 2000
    num_test: int = 5000
    holdout: int = 10000  # Fashion-MNIST training objects kept for validation images
    epochs: int = 20
    pilot_epochs: int = 10  # at least half the final schedule
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    plateau_points: float = 0.5  # training accuracy may move this much over the last fifth of a schedule
    max_grid_extensions: int = 3
    num_attack: int = 2000  # FGSM images (the first of the test set)
    num_pgd: int = 500
    eps_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # FGSM, in 1/255 units
    fooling_eps: float = 2.0
    data_seed_base: int = 1000
    root: str | None = None  # folder with the Fashion-MNIST files (default: ltpa's search path)
    arms: tuple[Arm, ...] = ARMS
    regimes: tuple[Regime, ...] = REGIMES
    measures: tuple[Measure, ...] = MEASURES
    primary: tuple[Comparison, ...] = PRIMARY
    secondary: tuple[Comparison, ...] = SECONDARY
    name: str = "v3"

    def replicates(self, a: Arm) -> int:
        return self.primary_replicates if a.role == "primary" else self.descriptive_replicates

    def data_options(self, regime: Regime, replicate: int) -> dict[str, Any]:
        seed = self.data_seed_base + replicate
        if regime.data.startswith("cluttered"):
            return {
                "num_train": self.num_train,
                "num_val": self.num_val,
                "num_test": self.num_test,
                "holdout": self.holdout,
                "seed": seed,
            }
        return {}

    def train_overrides(
        self, a: Arm, replicate: int, regime: Regime, *, lr: float, epochs: int
    ) -> dict[str, Any]:
        """The ``ltpa.config`` values of one training run: SGD, a warm-up epoch then cosine to zero, flips, no
        dropout; ``replicate`` fixes the data sample, batch order and (by layer name) the initial weights, so
        every arm of a replicate starts from the same trunk."""
        over: dict[str, Any] = {
            "model": a.model,
            "data": regime.data,
            "data_options": self.data_options(regime, replicate),
            "root": self.root,
            "eval_split": "val" if regime.data.startswith("cluttered") else "test",
            "width": self.width,
            "img_size": 32,
            "preprocess": "meanstd",
            "model_kwargs": {"drop_scale": 0.0, "init_seed": replicate, **a.kwargs},
            "optimizer": "sgd",
            "epochs": epochs,
            "batch_size": self.batch_size,
            "lr": lr,
            "momentum": self.momentum,
            "dampening": 0.0,
            "nesterov": False,
            "weight_decay": self.weight_decay,
            "lr_decay": 0.0,
            "lr_milestones": [],
            "lr_factors": [],
            "lr_schedule": "cosine",
            "warmup": min(self.warmup_epochs / epochs, 0.5),
            "augment": "flip",
            "drop_last": True,
            "seed": replicate,
        }
        if not regime.data.startswith("cluttered"):
            # plain Fashion-MNIST: the first num_train training images, the first num_test test images
            over.update(subset=self.num_train, test_subset=self.num_test)
        return over


def arm(name: str, design: Design | None = None) -> Arm:
    """The arm called ``name`` (a one-line error listing the valid names otherwise)."""
    arms = (design or DESIGN).arms
    for a in arms:
        if a.name == name:
            return a
    raise KeyError(f"unknown arm {name!r}; choose from {', '.join(a.name for a in arms)}")


def measure(name: str, design: Design | None = None) -> Measure:
    for m in (design or DESIGN).measures:
        if m.name == name:
            return m
    raise KeyError(f"unknown measure {name!r}")


def regime(name: str, design: Design | None = None) -> Regime:
    for r in (design or DESIGN).regimes:
        if r.name == name:
            return r
    raise KeyError(f"unknown regime {name!r}")


DESIGN = Design()

SMOKE = replace(
    DESIGN,
    primary_replicates=2,
    descriptive_replicates=1,
    double_replicates=1,
    width=0.0625,
    num_train=192,
    num_val=96,
    num_test=96,
    holdout=2000,
    epochs=2,
    pilot_epochs=1,
    batch_size=32,
    max_grid_extensions=1,
    num_attack=48,
    num_pgd=16,
    eps_grid=(2.0, 8.0),
    name="smoke",
    arms=(
        replace(ARMS[0], lr_grid=(0.03, 0.1)),
        replace(ARMS[3], lr_grid=(0.03, 0.1)),
        replace(ARMS[4], lr_grid=(0.1,)),
        replace(ARMS[6], lr_grid=(0.1,)),
    ),
    primary=tuple(c for c in PRIMARY if c.key in ("i-a", "i-d", "i-g", "ii-a")),
    secondary=(),
)
"""A tiny version of the design for tests and ``--smoke``: the same machinery on a few hundred images."""
