"""Studies: declarative sets of trainings (variants x seeds) that are resumable, shardable and tabulated honestly."""

from .runner import plan_lines, records_in, run_state, run_study, study_records
from .spec import Study, StudyRun, load_study, parse_study, shard_runs
from .stats import difference_ci, min_detectable_difference, seeds_needed
from .table import format_table, study_summary, summary_table

__all__ = [
    "Study", "StudyRun", "difference_ci", "format_table", "load_study", "min_detectable_difference",
    "parse_study", "plan_lines", "records_in", "run_state", "run_study", "seeds_needed", "shard_runs",
    "study_records", "study_summary", "summary_table",
]
