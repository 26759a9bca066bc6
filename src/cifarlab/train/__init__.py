"""Training: one engine for every registered model."""

from .engine import RunFiles, fit
from .loop import NonFiniteLossError, Training, make_train_step, train_epoch

__all__ = ["NonFiniteLossError", "RunFiles", "Training", "fit", "make_train_step", "train_epoch"]
