"""The status vocabulary of the batch pipeline: one set of words for windows and result rows.

A window task is ``pending`` until a stage settles it; a window and a result row end ``succeeded``, ``failed`` or
``skipped`` (a skipped window is already on storage; a skipped request was finished by an earlier run with the same
content key, and its output is there). Callers with states of their own (the Serve app's edit states) map from
these in one place (:func:`jobs.serve.store.edit_state_of`).
"""
from __future__ import annotations

PENDING = "pending"  # windows only: not settled yet
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
STATUSES = (SUCCEEDED, FAILED, SKIPPED)  # what a result row may say (the result manifest's ``status``)
PRODUCED = (SUCCEEDED, SKIPPED)  # statuses whose output exists
