"""Every experiment of "Learn To Pay Attention" as a function: accuracy, robustness, segmentation,
localisation, transfer.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391
(method §3.5, §4.1-4.5).

Each ``run_<experiment>(checkpoints, config)`` is what the ``ltpa <experiment>`` command runs: it loads the
checkpoints (``ltpa.load_model``), reads the test split, writes fixed-name result files (``eval.json``,
``attack.csv``, ``segment.csv``, ``localize.csv``, ``transfer.csv``) and figures to ``config.out`` and
prints a table. The building blocks (``predict``, ``fgsm``, ``pgd``, ``otsu_threshold``, ``jaccard``,
``grad_cam``, ...) work on tensors and any model that takes [0, 1] images.
"""

from __future__ import annotations

from ltpa.evaluate._data import (
    EvalData,
    EvalSettings,
    batch_slices,
    eval_mode,
    load_checkpoints,
    load_eval_data,
    model_device,
    resolve_device,
    to_model_input,
)
from ltpa.evaluate._maps import (
    GRADCAM_BACKENDS,
    as_distribution,
    attention_maps,
    class_activation_maps,
    compute_maps,
    gaussian_prior,
    grad_cam,
    gradcam_backend,
    gradcam_target_layer,
    map_kind,
    normalize_minmax,
    uniform_map,
    upsample,
)
from ltpa.evaluate._results import figure_png, model_colours, save_figure, write_csv, write_json
from ltpa.evaluate.accuracy import (
    AccuracyResult,
    EvalConfig,
    accuracy_from_predictions,
    confusion_figure,
    evaluate_accuracy,
    plot_confusion,
    predict,
    run_eval,
)
from ltpa.evaluate.localization import (
    LocalizeConfig,
    localization_scores,
    object_boxes,
    pointing_hits,
    run_localize,
)
from ltpa.evaluate.robustness import (
    AttackConfig,
    attack_figure,
    attack_sweep,
    fgsm,
    pgd,
    plot_attack,
    run_attack,
)
from ltpa.evaluate.segmentation import (
    SegmentConfig,
    binarize,
    jaccard,
    otsu_threshold,
    run_segment,
    score_segmentation,
    segmentation_maps,
    threshold_grid,
)
from ltpa.evaluate.transfer import (
    LinearProbe,
    TransferConfig,
    cached_features,
    extract_features,
    fit_linear_probe,
    run_transfer,
)

__all__ = [
    "GRADCAM_BACKENDS",
    "AccuracyResult",
    "AttackConfig",
    "EvalConfig",
    "EvalData",
    "EvalSettings",
    "LinearProbe",
    "LocalizeConfig",
    "SegmentConfig",
    "TransferConfig",
    "accuracy_from_predictions",
    "as_distribution",
    "attack_figure",
    "attack_sweep",
    "attention_maps",
    "batch_slices",
    "binarize",
    "cached_features",
    "class_activation_maps",
    "compute_maps",
    "confusion_figure",
    "eval_mode",
    "evaluate_accuracy",
    "extract_features",
    "fgsm",
    "figure_png",
    "fit_linear_probe",
    "gaussian_prior",
    "grad_cam",
    "gradcam_backend",
    "gradcam_target_layer",
    "jaccard",
    "load_checkpoints",
    "load_eval_data",
    "localization_scores",
    "map_kind",
    "model_colours",
    "model_device",
    "normalize_minmax",
    "object_boxes",
    "otsu_threshold",
    "pgd",
    "plot_attack",
    "plot_confusion",
    "pointing_hits",
    "predict",
    "resolve_device",
    "run_attack",
    "run_eval",
    "run_localize",
    "run_segment",
    "run_transfer",
    "save_figure",
    "score_segmentation",
    "segmentation_maps",
    "threshold_grid",
    "to_model_input",
    "uniform_map",
    "upsample",
    "write_csv",
    "write_json",
]
