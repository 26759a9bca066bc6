"""Training: one engine for every registered model."""

from .engine import NonFiniteLossError, RunFiles, fit

__all__ = ["NonFiniteLossError", "RunFiles", "fit"]
