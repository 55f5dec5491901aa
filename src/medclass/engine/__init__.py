"""Engine: the training loop, the run folder rules, LR schedules, early stopping, checkpoints, loading runs."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .early_stopping import EarlyStopping
from .inference import logits_to_probs, predict_logits, select_device
from .run import LoadedRun, load_run
from .run_folder import new_run_dir, resume_run_dir
from .schedules import SCHEDULES, LRSchedule, cosine_factor, monitor_mode
from ..core.runs import RunError, RunFiles
from .fit import make_loss, predicted_class
from .trainer import TrainResult, train

__all__ = [
    "CheckpointError", "load_checkpoint", "save_checkpoint", "EarlyStopping", "logits_to_probs",
    "predict_logits", "select_device", "LoadedRun", "load_run", "SCHEDULES", "LRSchedule",
    "cosine_factor", "monitor_mode", "RunError", "RunFiles", "TrainResult", "make_loss",
    "predicted_class", "train", "new_run_dir", "resume_run_dir",
]
