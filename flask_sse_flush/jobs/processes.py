"""``executor="process"``: each job's render in a child process of its own.

A CPU-bound render in a native thread shares the web worker's interpreter
lock with the hub that writes every stream's events: each socket write
waits for the job to hand the lock back (the "GIL convoy"). In a child
process it shares nothing. The parent side is pure I/O (a greenlet on the
hub under gevent, a thread otherwise): it starts the child, hands it the
render and the payload, and relays the child's reports to the job's
:class:`~flask_sse_flush.Progress`, which publishes them as usual.

The child is a fresh interpreter running :func:`main`,
so nothing of the worker's hub, sockets or locks crosses into it, and the
render must be importable by name: a module-level function (it is pickled
by reference). The wire between them is JSON lines:

* parent to child: the job (``render``, ``payload``, ``path``), then
  ``cancel`` if the job is cancelled (the child's next report raises
  :class:`~flask_sse_flush.Cancelled`; a child that does not end within
  :attr:`ProcessRender.cancel_grace` seconds, because it never reports
  again, is terminated, then killed);
* child to parent: ``{"p": [percent, phase]}`` per report and
  ``{"e": [name, data]}`` per :meth:`Progress.event
  <flask_sse_flush.Progress.event>`, then one of
  ``{"result": {...}}``, ``{"cancelled": message}`` or ``{"error": message,
  "type": class name, "user": is it a RenderError}``.

The child's own standard output goes to its standard error (the server's
log), so a render's ``print`` cannot break the wire.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from ..exceptions import Cancelled, RenderError, SSEFlushError
from ..runtime import Channel, new_channel
from .job import Progress, RenderFunction

__all__ = ["ProcessRender", "RenderProcessError", "main"]


_CHILD = "import sys; from flask_sse_flush.jobs.processes import main; sys.exit(main())"


class RenderProcessError(SSEFlushError):
    """The render failed in its child process; the message is the child's error.

    :attr:`type_name` is the class of the exception the child raised, which
    the default ``error_message`` names (its message stays in the log).
    """

    def __init__(self, message: str, type_name: str = "RenderProcessError") -> None:
        super().__init__(message)
        self.type_name = type_name


class ProcessRender:
    """A render callable that runs ``render`` in a child process.

    :param render: a module-level ``render(payload, progress) -> dict``.
    :raises TypeError: ``render`` cannot be pickled by reference.
    """

    #: Seconds a cancelled child has to end by itself (its next report
    #: raises :class:`~flask_sse_flush.Cancelled`, which it may catch to
    #: clean up) before it is sent ``SIGTERM``; as long again, then ``SIGKILL``.
    cancel_grace = 1.0

    def __init__(self, render: RenderFunction) -> None:
        try:
            self._pickled = base64.b64encode(pickle.dumps(render)).decode("ascii")
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(
                "executor='process' runs render in a child process, so it must be a "
                f"module-level function the child can import by name, not {render!r}: {exc}"
            ) from None
        self.render = render

    def __repr__(self) -> str:
        return f"ProcessRender({self.render!r})"

    def __call__(self, payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        import subprocess  # gevent's, under gevent: this greenlet waits cooperatively

        spec = {"render": self._pickled, "payload": payload, "path": sys.path}
        # Not `-m flask_sse_flush.jobs.processes`: the package's __init__ imports
        # this module first, and runpy would warn about running it twice.
        command = [sys.executable, "-c", _CHILD]
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as child:
            assert child.stdin is not None and child.stdout is not None
            stdin = child.stdin
            stdin.write(json.dumps(spec) + "\n")
            stdin.flush()
            # A cancel may come from any thread or greenlet, and the child
            # may never report again (a long sleep, a computation): the
            # reaper, beside this relay, passes it on and ends the child if
            # it does not end by itself. The relay owns the reaper: it tells
            # it the job is over and waits for it.
            signals: Channel[str] = new_channel()
            progress.on_cancel(lambda: signals.put("cancel"))
            reaper = threading.Thread(
                target=self._reap,
                args=(child, stdin, signals),
                name="flask-sse-flush render process reaper",
                daemon=True,
            )
            reaper.start()
            try:
                outcome = _relay(child.stdout, progress)
            except BaseException:
                child.kill()  # the job is over here; so is the child
                raise
            finally:
                signals.put("done")
                reaper.join()
                signals.close()
        if outcome is None:
            if progress.cancelled:
                raise Cancelled("the job was cancelled")  # and its process ended for it
            raise RenderProcessError(f"the render's process exited ({child.returncode})")
        if "result" in outcome:
            result: Mapping[str, Any] = outcome["result"]  # RenderJob checks that it is one
            return result
        if "cancelled" in outcome:
            progress.cancel()
            raise Cancelled(str(outcome["cancelled"]))
        message = str(outcome.get("error") or "the render failed")
        if outcome.get("user"):
            raise RenderError(message)
        raise RenderProcessError(message, str(outcome.get("type") or "Exception"))

    def _reap(self, child: Any, stdin: IO[str], signals: Channel[str]) -> None:
        """Until the relay is done: on a cancel, tell the child, then end it if it lingers."""
        import subprocess

        if signals.get(None) != "cancel":
            return
        _tell(stdin, "cancel")
        for end in (child.terminate, child.kill):
            try:
                child.wait(timeout=self.cancel_grace)
                return
            except subprocess.TimeoutExpired:
                end()


def _relay(lines: IO[str], progress: Progress) -> dict[str, Any] | None:
    for line in lines:
        message = json.loads(line)
        if "p" in message:
            percent, phase = message["p"]
            if not progress.cancelled:
                progress(percent, phase)
        elif "e" in message:
            name, data = message["e"]
            if not progress.cancelled:
                progress.event(name, data)  # checked in the child already
        else:
            return dict(message)
    return None


def _tell(stdin: IO[str], word: str) -> None:
    try:
        stdin.write(word + "\n")
        stdin.flush()
    except (OSError, ValueError):
        pass  # the child has ended already


def main() -> int:
    """The child: read the job, run it, report on the wire."""
    wire = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout = sys.stderr  # a render's print() goes to the log, not the wire
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock:
            wire.write(json.dumps(message, separators=(",", ":")) + "\n")

    spec = json.loads(sys.stdin.readline())
    sys.path[:0] = [entry for entry in spec["path"] if entry not in sys.path]
    progress = Progress(
        lambda percent, phase: send({"p": [percent, phase]}),
        lambda name, data: send({"e": [name, data]}),
    )

    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                progress.cancel()

    threading.Thread(target=listen, daemon=True).start()
    try:
        render = pickle.loads(base64.b64decode(spec["render"]))
        result = render(spec["payload"], progress)
        # Whether it is a dict, and whether the job was cancelled meanwhile,
        # the job in the parent checks, as for any executor.
        send({"result": dict(result) if isinstance(result, Mapping) else result})
    except Cancelled as exc:
        send({"cancelled": str(exc) or "the job was cancelled"})
    except BaseException as exc:
        import traceback

        traceback.print_exc()  # to the server's log, in full
        send(
            {
                "error": str(exc) or type(exc).__name__,
                "type": type(exc).__name__,
                "user": isinstance(exc, RenderError),
            }
        )
    wire.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
