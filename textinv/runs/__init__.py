"""The run folder, `logs/<name>_<timestamp>/`: `Run` (`folder`) is its one reader and writer; it keeps the
per-step tables in `curves` and the resumable states in `states`."""

from textinv.runs.folder import Run, resume_config, run_name

__all__ = ["Run", "resume_config", "run_name"]
