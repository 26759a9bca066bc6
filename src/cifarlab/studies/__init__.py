"""Studies: declarative sets of trainings (variants x seeds) that are resumable, shardable and tabulated honestly."""

from .runner import plan_lines, run_state, run_study, study_records
from .spec import Study, StudyRun, load_study, parse_study, shard_runs
from .stats import bootstrap_differences, difference_ci, format_table, records_in, study_summary, summary_table

__all__ = [
    "Study", "StudyRun", "bootstrap_differences", "difference_ci", "format_table", "load_study", "parse_study",
    "plan_lines", "records_in", "run_state", "run_study", "shard_runs", "study_records", "study_summary",
    "summary_table",
]
