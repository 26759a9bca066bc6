"""Training: one engine for every registered model."""

from .engine import fit
from .loop import NonFiniteLossError, Training, make_train_step, train_epoch

__all__ = ["NonFiniteLossError", "Training", "fit", "make_train_step", "train_epoch"]
