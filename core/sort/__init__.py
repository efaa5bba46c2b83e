"""Sorting photos into one folder per label (``wwts sort``): a plan computed without touching
anything (the dry run shows it), the changes made with an undo log, and the undo. An
output-level leaf: it reads records through ``core.output``.

- ``names``: ``safe_name`` (a label as a folder name on any file system), ``label_folders``.
- ``dry_run``: ``plan_sort`` → ``SortPlan`` of ``Action`` (nothing touched yet).
- ``apply``: ``apply_plan`` (with the undo log), ``undo``, ``read_log``.
"""

from .apply import SortReport, apply_plan, read_log, undo
from .names import label_folders, safe_name
from .dry_run import MODES, Action, SortPlan, plan_sort

__all__ = ["MODES", "Action", "SortPlan", "plan_sort", "SortReport", "apply_plan", "undo", "read_log",
           "safe_name", "label_folders"]
