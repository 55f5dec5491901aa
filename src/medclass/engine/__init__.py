"""Engine: the training loop and its one step (:mod:`~medclass.engine.fit`), the time budget, LR schedules, early
stopping, checkpoints, loading runs, tracking. The run folder's layout is :mod:`medclass.core.runs`."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .early_stopping import EarlyStopping
from .inference import logits_to_probs, predict_logits, select_device
from .run import LoadedRun, load_run
from .schedules import SCHEDULES, LRSchedule, cosine_factor, monitor_mode
from .fit import make_loss, predicted_class
from .trainer import TrainResult, train

__all__ = [
    "CheckpointError", "load_checkpoint", "save_checkpoint", "EarlyStopping", "logits_to_probs",
    "predict_logits", "select_device", "LoadedRun", "load_run", "SCHEDULES", "LRSchedule",
    "cosine_factor", "monitor_mode", "TrainResult", "make_loss", "predicted_class", "train",
]
