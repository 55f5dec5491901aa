"""Evaluation: metrics, figures, evaluating runs, predicting new images."""

from .compare import COMPARE_COLUMNS, compare_runs
from .ensemble import fit_ensemble_weights, make_ensemble
from .evaluate import evaluate_run
from .metrics import auroc, classification_metrics
from .plots import plot_confusion_matrix, plot_roc
from .predict import Prediction, expand_paths, predict_images

__all__ = [
    "COMPARE_COLUMNS", "compare_runs", "fit_ensemble_weights", "make_ensemble",
    "evaluate_run", "auroc", "classification_metrics", "plot_confusion_matrix", "plot_roc",
    "Prediction", "expand_paths", "predict_images",
]
