"""Evaluation: metrics, figures, evaluating runs, predicting new images."""

from .evaluate import evaluate_run
from .metrics import auroc, classification_metrics
from .plots import plot_confusion_matrix, plot_roc
from .predict import Prediction, expand_paths, predict_images

__all__ = [
    "evaluate_run", "auroc", "classification_metrics", "plot_confusion_matrix", "plot_roc",
    "Prediction", "expand_paths", "predict_images",
]
