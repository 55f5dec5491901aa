"""Evaluation: metrics, intervals, calibration, figures, Grad-CAM, evaluating and comparing runs, the report
and the model card. Predicting new images is :mod:`medclass.serving`'s job."""

from .compare import COMPARE_COLUMNS, compare_runs
from .ensemble import fit_ensemble_weights, make_ensemble
from .calibration import (
    ECE_BINS, choose_threshold, expected_calibration_error, fit_temperature, plot_reliability, sensitivity_specificity,
)
from .evaluate import calibrate_run, evaluate_run
from .explain import gradcam, overlay, save_explanations, select_examples
from .metrics import CI_METRICS, auroc, bootstrap_ci, classification_metrics
from .plots import plot_confusion_matrix, plot_roc
from .report import build_report

__all__ = [
    "COMPARE_COLUMNS", "compare_runs", "fit_ensemble_weights", "make_ensemble",
    "evaluate_run", "calibrate_run", "auroc", "classification_metrics", "bootstrap_ci", "CI_METRICS",
    "ECE_BINS", "choose_threshold", "expected_calibration_error", "fit_temperature", "plot_reliability",
    "sensitivity_specificity", "plot_confusion_matrix", "plot_roc",
    "gradcam", "overlay", "save_explanations", "select_examples",
    "build_report",
]
