"""The study's design, fixed before any result: arms, replicates, recipe, test sets and the five primary
comparisons with their smallest effects of interest.

Everything the report states in its method section comes from here, so the pre-registration and the code
that runs cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ARMS",
    "DESCRIPTIVE_ARMS",
    "DOSE_FRAGMENTS",
    "EPS_GRID",
    "PRIMARY",
    "PRIMARY_ARMS",
    "SECONDARY",
    "Arm",
    "Comparison",
    "Design",
]


@dataclass(frozen=True)
class Arm:
    """One model of the study: an ltpa model name plus model options."""

    name: str
    model: str
    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    lr_family: str = ""  # arms of one family share the learning rate chosen by the pilot

    @property
    def has_attention(self) -> bool:
        return self.model.startswith("vgg_att")


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("att2-pc", "vgg_att2_concat_pc", "att2-pc (learned)", lr_family="attention"),
        Arm(
            "att2-uniform",
            "vgg_att2_concat_pc",
            "att2-uniform",
            {"attention_mode": "uniform"},
            lr_family="attention",
        ),
        Arm("vgg-gap", "vgg_gap", "VGG-GAP", lr_family="vgg-gap"),
        Arm("vgg", "vgg", "VGG", lr_family="vgg"),
        Arm("att2-dp", "vgg_att2_concat_dp", "att2-dp", lr_family="attention"),
        Arm(
            "att2-frozen",
            "vgg_att2_concat_pc",
            "att2-frozen",
            {"attention_mode": "frozen"},
            lr_family="attention",
        ),
        Arm(
            "att2-from-g",
            "vgg_att2_concat_pc",
            "att2-from-g",
            {"attention_mode": "from_g"},
            lr_family="attention",
        ),
    )
}
PRIMARY_ARMS: tuple[str, ...] = ("att2-pc", "att2-uniform", "vgg-gap", "vgg")
DESCRIPTIVE_ARMS: tuple[str, ...] = ("att2-dp", "att2-frozen", "att2-from-g")
# the pilot tries every primary arm; the attention family's rate is the best mean of its two primary arms
PILOT_ARMS: tuple[str, ...] = PRIMARY_ARMS

DOSE_FRAGMENTS: tuple[int, ...] = (0, 2, 4, 8)
EPS_GRID: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # in 1/255 units
FOOLING_EPS = 2.0  # the primary comparison's FGSM step, 1/255 units


@dataclass(frozen=True)
class Comparison:
    """One pre-registered comparison: ``metric`` of ``arm_a`` against ``arm_b``, paired by replicate."""

    key: str
    question: str
    metric: str
    arm_a: str
    arm_b: str
    delta: float  # smallest effect of interest, in the metric's units (points)
    higher_is_better: bool = True
    map_a: str = ""  # which map of arm_a (for map metrics)
    map_b: str = ""


PRIMARY: tuple[Comparison, ...] = (
    Comparison("a", "accuracy: learned attention vs uniform pooling", "test_accuracy", "att2-pc", "att2-uniform", 1.0),
    Comparison(
        "b", "pointing: attention map vs CAM of the same trunk", "pointing", "att2-pc", "vgg-gap", 5.0,
        map_a="conv13", map_b="cam",
    ),
    Comparison(
        "c", "pixel AP: attention map vs CAM of the same trunk", "ap", "att2-pc", "vgg-gap", 3.0,
        map_a="conv13", map_b="cam",
    ),
    Comparison(
        "d", "FGSM fooling rate at eps 2/255: learned vs uniform", "fooling", "att2-pc", "att2-uniform", 3.0,
        higher_is_better=False,
    ),
    Comparison(
        "e", "transfer to cluttered-digits: learned vs uniform", "transfer_cluttered-digits", "att2-pc",
        "att2-uniform", 2.0,
    ),
)  # fmt: skip

# The paper-literal comparisons against the baseline VGG: a secondary family, Holm within it.
SECONDARY: tuple[Comparison, ...] = (
    Comparison("s1", "accuracy: att2-pc vs VGG", "test_accuracy", "att2-pc", "vgg", 1.0),
    Comparison("s2", "accuracy: VGG-GAP vs VGG", "test_accuracy", "vgg-gap", "vgg", 1.0),
    Comparison(
        "s3", "pointing: attention map vs VGG's Grad-CAM", "pointing", "att2-pc", "vgg", 5.0,
        map_a="conv13", map_b="gradcam",
    ),
    Comparison(
        "s4", "FGSM fooling rate at eps 2/255: att2-pc vs VGG", "fooling", "att2-pc", "vgg", 3.0,
        higher_is_better=False,
    ),
    Comparison(
        "s5", "transfer to cluttered-digits: att2-pc vs VGG", "transfer_cluttered-digits", "att2-pc", "vgg", 2.0,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Design:
    """Sizes and the recipe. Defaults are the study as registered; ``smoke`` shrinks it for tests."""

    primary_replicates: int = 5
    descriptive_replicates: int = 3
    width: float = 0.125
    num_train: int = 12000
    num_val: int = 2000
    num_test: int = 5000
    holdout: int = 10000  # Fashion-MNIST training objects kept for validation images
    epochs: int = 10
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_grid: tuple[float, ...] = (0.02, 0.05, 0.1)
    pilot_epochs: int = 2
    num_dose: int = 2000  # images per clutter level
    num_shift: int = 2000
    shift_scale: tuple[float, float] = (0.22, 0.32)  # object side; training draws 0.38-0.55
    num_attack: int = 2000  # FGSM images (the first of the test set)
    num_pgd: int = 500
    transfer_train: int = 4000
    transfer_test: int = 2000
    converge_points: float = 0.5  # validation accuracy change allowed over the last two epochs
    data_seed_base: int = 1000
    root: str | None = None  # folder with the Fashion-MNIST files (default: ltpa's search path)
    arms: tuple[str, ...] = PRIMARY_ARMS + DESCRIPTIVE_ARMS

    def replicates(self, arm: str) -> int:
        return self.primary_replicates if arm in PRIMARY_ARMS else self.descriptive_replicates

    def data_seed(self, replicate: int) -> int:
        return self.data_seed_base + replicate

    def data_options(self, replicate: int) -> dict[str, Any]:
        return {
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_test": self.num_test,
            "holdout": self.holdout,
            "seed": self.data_seed(replicate),
        }

    def train_overrides(
        self, arm: str, replicate: int, lr: float, epochs: int | None = None
    ) -> dict[str, Any]:
        """The ``ltpa.config`` values of one training run: SGD, one warm-up epoch then cosine, flips, no
        dropout; ``replicate`` fixes the data sample, batch order and (by layer name) the initial weights."""
        spec = ARMS[arm]
        epochs = epochs or self.epochs
        return {
            "model": spec.model,
            "data": "cluttered-fashion",
            "data_options": self.data_options(replicate),
            "root": self.root,
            "eval_split": "val",
            "width": self.width,
            "model_kwargs": {"drop_scale": 0.0, "init_seed": replicate, **spec.kwargs},
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
            "warmup": 1.0 / epochs if epochs > 1 else 0.0,
            "augment": "flip",
            "drop_last": True,
            "seed": replicate,
        }


SMOKE = Design(
    primary_replicates=2,
    descriptive_replicates=1,
    width=0.0625,
    num_train=256,
    num_val=128,
    num_test=128,
    holdout=2000,
    epochs=2,
    batch_size=32,
    lr_grid=(0.05,),
    pilot_epochs=1,
    num_dose=64,
    num_shift=64,
    num_attack=64,
    num_pgd=16,
    transfer_train=128,
    transfer_test=64,
)
