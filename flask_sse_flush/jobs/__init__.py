"""Render jobs: a render's events on a job's log, with a lifecycle.

- :mod:`~flask_sse_flush.jobs.job`: :class:`Progress` and :class:`RenderJob`,
  one job's numbering, state and terminal event, and :func:`run_job`;
- :mod:`~flask_sse_flush.jobs.service`: the service the render routes call
  (admission, the registry of running jobs, the disconnect policy);
- :mod:`~flask_sse_flush.jobs.processes`: ``executor="process"``.

Framework-free: nothing here imports Flask. The names of
:mod:`~flask_sse_flush.jobs.job` are importable from this package too, as
they were when it was one module.
"""

from .job import (
    CompleteData,
    ErrorData,
    ErrorMessage,
    JobState,
    Progress,
    ProgressData,
    RenderFunction,
    RenderJob,
    error_message,
    new_job_id,
    run_job,
)

__all__ = [
    "CompleteData",
    "ErrorData",
    "ErrorMessage",
    "JobState",
    "Progress",
    "ProgressData",
    "RenderFunction",
    "RenderJob",
    "error_message",
    "new_job_id",
    "run_job",
]
