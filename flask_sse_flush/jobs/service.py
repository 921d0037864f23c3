"""The job service: what the blueprint's views call; knows nothing of Flask.

One service runs the jobs of one blueprint in one app: it admits them
(``max_jobs``), starts them on the executor, keeps the registry of the jobs
running in this process (so a shutdown can wait for them), attaches streams
to jobs, and applies the disconnect policy when a stream ends.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeAlias, Union

from ..brokers.base import Broker, JobStatus, Subscriber
from ..exceptions import RETRY_AFTER_SECONDS, JobEnded, JobNotStarted, UnknownJob
from ..ops.metrics import METRICS, install
from ..runtime import home_hub, new_lock, post_to_hub, start_greenlet, start_native_thread
from ..web.settings import DisconnectPolicy, Settings
from .job import ErrorMessage, RenderFunction, RenderJob, error_message

__all__ = [
    "ANYONE",
    "RETRY_AFTER_SECONDS",
    "Attachable",
    "Executor",
    "JobService",
    "QueuedJob",
    "Spawn",
    "spawner",
]

log = logging.getLogger(__name__)


class Anyone:
    """The type of :data:`ANYONE`."""

    def __repr__(self) -> str:
        return "ANYONE"


#: An identity that may see every job: the app's own calls to the service.
ANYONE = Anyone()


class QueuedJob:
    """A job handed to an executor: call it to run the job here.

    :attr:`id` and :attr:`payload` (the validated, JSON-serialisable
    request payload) are what an app needs to hand the job to a queue
    instead.
    """

    __slots__ = ("_run", "id", "payload")

    def __init__(self, job_id: str, payload: dict[str, Any], run: Callable[[], None]) -> None:
        self.id = job_id
        self.payload = payload
        self._run = run

    def __call__(self) -> None:
        self._run()

    def __repr__(self) -> str:
        return f"<QueuedJob {self.id}>"


#: ``spawn(job)``: start ``job()`` concurrently and return without waiting.
Spawn = Callable[[QueuedJob], object]


class _RunsHere:
    """A built-in executor's spawn: every job it is given runs in this process."""

    __slots__ = ("_start",)

    def __init__(self, start: Spawn) -> None:
        self._start = start

    def __call__(self, job: QueuedJob) -> object:
        return self._start(job)


class _HandOff:
    """Whether a job given to an executor callable ran here or left this process.

    The callable may queue ``(job.id, job.payload)`` for a job worker, or
    call the job itself, now or later (a pool of its own). Once it has
    returned without calling it, the job is taken to have left: this
    process forgets it (:meth:`Broker.forget
    <flask_sse_flush.brokers.Broker.forget>`) and, should it run here after
    all, listens for its cancellation again. The lock orders the two.
    """

    __slots__ = ("_lock", "_state")

    def __init__(self) -> None:
        self._lock = new_lock()
        self._state = "given"

    def leave(self, forget: Callable[[], None]) -> None:
        """The executor returned: if the job has not started here, ``forget()`` it."""
        with self._lock:
            if self._state == "given":
                self._state = "gone"
                forget()  # no I/O: a few dictionary operations

    def arrive(self) -> bool:
        """The job starts here; return whether it had been forgotten."""
        with self._lock:
            forgotten, self._state = self._state == "gone", "running"
        return forgotten


#: How jobs run: ``"thread"`` (a native OS thread, even under gevent),
#: ``"greenlet"`` (under gevent; for I/O-bound jobs), ``"process"`` (a child
#: process per job, for CPU-bound ones), or a :data:`Spawn`.
Executor: TypeAlias = Union[Literal["thread", "greenlet", "process"], Spawn]  # noqa: UP007


def spawner(executor: Executor) -> Spawn:
    """The :data:`Spawn` function an :data:`Executor` names.

    :raises ValueError: ``executor`` is neither a known name nor callable.
    """
    if executor == "thread":
        return _RunsHere(lambda job: start_native_thread(job, "flask-sse-flush job"))
    if executor in ("greenlet", "process"):
        # A process job's own side is I/O only: it waits on its child.
        return _RunsHere(lambda job: start_greenlet(job, name="flask-sse-flush job"))
    if callable(executor):
        return executor
    raise ValueError(
        f"executor must be 'thread', 'greenlet', 'process' or a callable, not {executor!r}"
    )


def _on_hub(record: Callable[[], None]) -> None:
    """Record a metric on the hub that owns this job (a metric's lock is a gevent lock there)."""
    post_to_hub(home_hub(), record)


class Attachable(Subscriber, Protocol):
    """A subscriber that says when it ends: an :class:`~flask_sse_flush.EventStream`."""

    def on_close(self, callback: Callable[[], Any]) -> Any: ...


class JobService:
    """The jobs behind one render blueprint in one app.

    Found at ``app.extensions["sse_flush"][<blueprint name>]`` once the
    blueprint is registered (or through :meth:`SSEFlush.service
    <flask_sse_flush.SSEFlush.service>`).

    :param render: ``render(payload, progress) -> dict``.
    :param broker: where the jobs' events and status live.
    :param spawn: starts each job (see :func:`spawner`).
    :param settings: the blueprint's resolved settings.
    :param error_message: what a failed render's ``error`` event says.
    :param context: makes the context each render runs in (the blueprint
        passes its app's ``app_context``, so ``current_app`` and the app's
        extensions work inside ``render`` on every server and executor that
        runs it in this process).
    """

    def __init__(
        self,
        render: RenderFunction,
        broker: Broker,
        spawn: Spawn,
        settings: Settings,
        *,
        error_message: ErrorMessage = error_message,
        context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        install()  # the metrics are registered when an app is initialised
        self._context = context or contextlib.nullcontext
        self.render = render
        self.error_message = error_message
        self.broker = broker
        self.settings = settings
        self._spawn = spawn
        self._lock = new_lock()
        # Every job this service started and has not seen end (what wait()
        # waits for). Admission (max_jobs) is the broker's: it counts the
        # running jobs of its whole store, across workers with Redis. A job
        # leaves this set when its run here returns, or, for an executor
        # that hands jobs to a queue, once the broker says it ended.
        self._jobs: set[str] = set()
        # The jobs whose render runs in this process now (what a graceful
        # stop waits for, then ends).
        self._here: dict[str, RenderJob] = {}
        #: Called with the service before each job starts: the lifecycle sets
        #: it, so that a graceful stop of this process ends the job too.
        self.on_start: Callable[[JobService], object] | None = None

    @property
    def on_disconnect(self) -> DisconnectPolicy:
        return self.settings.on_disconnect

    @property
    def running(self) -> int:
        """Jobs of this service queued or running (admitted and not yet ended)."""
        return len(self.running_jobs())

    def running_jobs(self) -> list[str]:
        """The ids of the jobs this service started and that have not ended."""
        self._release_ended()
        with self._lock:
            return list(self._jobs)

    def _release_ended(self) -> None:
        with self._lock:
            ids = list(self._jobs)
        ended = []
        for job_id in ids:
            status = self.broker.status(job_id)
            if status is None or status.ended:
                ended.append(job_id)
        if ended:
            with self._lock:
                for job_id in ended:
                    self._jobs.discard(job_id)

    def start(self, payload: dict[str, Any], owner: str | None = None) -> RenderJob:
        """Create and start a job that belongs to ``owner``.

        :raises TooManyJobs: ``max_jobs`` are running already in the broker's store.
        :raises JobNotStarted: the executor refused it (the job is ended
            with an ``error`` event, so nobody waits on it).
        :raises BrokerUnavailable: the broker's store cannot be reached.
        """
        if self.on_start is not None:
            self.on_start(self)
        job = RenderJob(
            self.render,
            payload,
            self.broker,
            limit=self.settings.max_jobs,
            error_message=self.error_message,
            owner=owner,
            owner_limit=None if owner is None else self.settings.max_jobs_per_identity,
            send_time=self.settings.send_time,
        )
        with self._lock:
            self._jobs.add(job.id)
        # An executor callable may hand the job to another process: then this
        # one must not keep the job (its cancel callback) until an end that
        # happens elsewhere, or every queued job would stay here for good.
        handoff = None if isinstance(self._spawn, _RunsHere) else _HandOff()
        try:
            self._spawn(QueuedJob(job.id, payload, lambda: self._run(job, handoff)))
        except Exception as exc:
            log.exception("the executor refused render job %s", job.id)
            job.abort(f"the job could not be started ({type(exc).__name__})")
            self._finished(job.id)
            raise JobNotStarted("the render job could not be started; try again later") from exc
        if handoff is not None:
            handoff.leave(lambda: self.broker.forget(job.id, job.cancel))
        log.debug("started render job %s", job.id)
        return job

    def _run(self, job: RenderJob, handoff: _HandOff | None = None) -> None:
        with self._lock:
            self._here[job.id] = job
        _on_hub(METRICS.job_started)
        try:
            if handoff is not None and handoff.arrive():
                # Forgotten as handed on, yet run here: hear its cancel again.
                try:
                    self.broker.on_cancel(job.id, job.cancel)
                except Exception:
                    log.exception("render job %s cannot hear its cancellation", job.id)
            with self._context():
                job.run()
        finally:
            _on_hub(lambda: METRICS.job_ended(job.state))
            self._finished(job.id)

    def _finished(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)
            self._here.pop(job_id, None)

    def running_here(self) -> int:
        """Jobs whose render runs in this process now."""
        return len(self._here)

    def stop_jobs(self, message: str) -> int:
        """End every job running here with an ``error`` event (a graceful stop's deadline).

        Each render is cancelled too (:meth:`RenderJob.stop
        <flask_sse_flush.jobs.RenderJob.stop>`).

        :returns: how many jobs were ended.
        """
        with self._lock:
            jobs = list(self._here.values())
        ended = 0
        for job in jobs:
            try:
                ended += job.stop(message, retry=True)
            except Exception:
                log.exception("could not end render job %s", job.id)
        return ended

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job this service started has ended.

        :param timeout: the most seconds to wait; ``None`` for no limit.
        :returns: whether they all ended in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running_jobs():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)  # gevent's sleep under gevent: the hub goes on
        return True

    def status(self, job_id: str, identity: str | Anyone | None = ANYONE) -> JobStatus:
        """A job's status.

        :param identity: the caller's identity: a job that belongs to
            another identity is unknown to it. :data:`ANYONE` (the default)
            skips the check, for the app's own calls.
        :raises UnknownJob: no such job (or it was purged, or is another
            identity's).
        """
        status = self.broker.status(job_id)
        if status is None or (identity is not ANYONE and status.owner != identity):
            # Not 403: another identity must not learn that the job exists.
            raise UnknownJob(job_id)
        return status

    def cancel(self, job_id: str, identity: str | Anyone | None = ANYONE) -> JobStatus:
        """Ask a job to stop; return its status after asking.

        :raises UnknownJob: no such job (for ``identity``).
        :raises JobEnded: it had ended already.
        """
        status = self.status(job_id, identity)
        if not self.broker.cancel(job_id):
            raise JobEnded(f"job {job_id!r} has already ended")
        return self.broker.status(job_id) or status

    def resume(
        self, job_id: str, after: int, identity: str | Anyone | None = ANYONE
    ) -> JobStatus | None:
        """Check that a stream may attach to ``job_id`` after event ``after``.

        :returns: the job's status, or ``None`` when the client already has
            the terminal event (nothing is left to send).
        :raises UnknownJob: no such job (for ``identity``).
        :raises ValueError: ``after`` is ahead of the job's events.
        """
        status = self.status(job_id, identity)
        if after > status.last_seq:
            raise ValueError(f"Last-Event-ID is ahead of job {job_id!r}'s events")
        if status.final_seq is not None and after >= status.final_seq:
            return None
        return status

    def attach(self, job_id: str, stream: Attachable, after: int) -> None:
        """Subscribe ``stream`` to the job's events after ``after``; detach it when it ends.

        :raises UnknownJob: the job is gone (purged since :meth:`resume`).
        """
        stream.on_close(lambda: self.detach(job_id, stream))
        if not self.broker.subscribe(job_id, stream, after):
            raise UnknownJob(job_id)

    def detach(self, job_id: str, stream: Subscriber) -> None:
        """A stream has ended: unsubscribe it, and apply the disconnect policy.

        A stream ended as too slow (:attr:`EventStream.too_slow
        <flask_sse_flush.EventStream.too_slow>`) is not a client that left:
        its client is on its way back, so the policy does not apply to it.
        """
        remaining = self.broker.unsubscribe(job_id, stream)
        if getattr(stream, "too_slow", False):
            return
        if remaining == 0 and self.on_disconnect == "cancel" and self.broker.cancel(job_id):
            log.debug("cancelled job %s: its last client left", job_id)
