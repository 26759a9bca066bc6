"""The run folder: its layout, the one validating reader of each of its files, the one status rule, and the one
type of a finished run.

Everything that reads or writes a run folder goes through this package (no other module spells a file name of
it), and it imports neither torch nor ``datasets``: listing and auditing records needs no training stack.
"""

from .checkpoints import Checkpoint, newest_intact, prune
from .finished import FinishedRun, discover, finished_runs, load_finished
from .folder import RunFolder, UnsafeRunFile, find_run_folders, study_of
from .records import (
                      read_attempts,
                      read_config,
                      read_error,
                      read_eval,
                      read_metrics,
                      read_reproduction,
                      read_result,
                      read_study,
                      read_trackers,
)
from .status import STATES, RunStatus, config_differences, hold_lock, lock_holder, read_result_head, run_status

__all__ = [
    "STATES", "Checkpoint", "FinishedRun", "RunFolder", "RunStatus", "UnsafeRunFile", "config_differences",
    "discover", "find_run_folders", "finished_runs", "hold_lock", "load_finished", "lock_holder", "newest_intact",
    "prune", "read_attempts", "read_config", "read_error", "read_eval", "read_metrics", "read_result",
    "read_reproduction", "read_result_head", "read_study", "read_trackers", "run_status", "study_of",
]
