"""Signals and the service lifecycle: SIGTERM stops in order, SIGHUP reloads.

- ``SIGTERM`` / ``SIGINT``: ``STOPPING=1``, then the shutdown steps in the order
  given (the daemon passes: stop capture, drain the pipeline, flush the outbox,
  publish "stopped", close). A step that fails is logged and the next one still
  runs; :meth:`ServiceLifecycle.run` then returns 0 (or 1 if a step failed).
- ``SIGHUP``: ``RELOADING=1``; the new configuration is loaded and validated
  *first*; only a valid one is applied. A bad one is logged and the agent keeps
  running with the old one. ``READY=1`` afterwards either way.

- Work from other threads that must not run beside the pipeline's own control
  (remote commands that restart the pipeline or rebuild engines):
  :meth:`ServiceLifecycle.call_on_main` queues it to the main thread, like a
  SIGHUP, and waits for its result; a stop answers what is still queued with
  :class:`Stopping`.

Signal handlers only record the signal and wake the main thread through a
pipe (os.write is async-signal-safe; taking a lock in a handler could deadlock
the main thread that holds it). The work happens in :meth:`ServiceLifecycle.run`
on the main thread.
"""

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

from agent.service.notify import ServiceNotifier

T = TypeVar("T")

STOP = "stop"
RELOAD = "reload"
CALL = "call"


class Stopping(RuntimeError):
    """The service is stopping: queued work was not run."""


class _Call:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        finally:
            self.done.set()

    def cancel(self) -> None:
        self.error = Stopping("the agent is stopping")
        self.done.set()


ShutdownStep = Tuple[str, Callable[[], None]]


class Reloader(Generic[T]):
    """How to reload: ``load()`` reads and validates (raises on a bad config),
    ``apply(new)`` switches to it. ``describe(exc)`` words a load failure."""

    def __init__(
        self,
        load: Callable[[], T],
        apply: Callable[[T], None],
        describe: Callable[[BaseException], str] = lambda exc: str(exc),
    ) -> None:
        self.load = load
        self.apply = apply
        self.describe = describe


class ServiceLifecycle:
    """Runs the main thread until SIGTERM, handling SIGHUP reloads on the way."""

    def __init__(
        self,
        notifier: ServiceNotifier,
        shutdown_steps: Sequence[ShutdownStep],
        *,
        reloader: Optional[Reloader[Any]] = None,
        status: Optional[Callable[[], str]] = None,
        logger: Optional[logging.Logger] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.shutdown_steps = list(shutdown_steps)
        self.reloader = reloader
        self._status = status
        self._log = logger or logging.getLogger("emotion_agent.service")
        self._clock = clock
        self._events: Deque[str] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._previous: Dict[int, Any] = {}
        self._calls: Deque[_Call] = deque()
        self._main: Optional[threading.Thread] = None  # the thread in run()
        self.stopped = False

    # -- requests (signal handlers, other threads, tests) -------------------------------

    def request_stop(self) -> None:
        self._push(STOP)

    def request_reload(self) -> None:
        self._push(RELOAD)

    def call_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread in :meth:`run` (between signals, never beside a
        reload or the shutdown) and return its result or raise its exception. Called
        from that thread itself, it runs at once. Raises :class:`Stopping` when the
        service stops before it ran."""
        if threading.current_thread() is self._main:
            return fn()
        if self.stopped:
            raise Stopping("the agent is stopping")
        call = _Call(fn)
        self._calls.append(call)
        self._push(CALL)
        if self.stopped:  # stopped meanwhile: nobody will run it
            self._cancel_calls()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[no-any-return]

    def _run_calls(self) -> None:
        while self._calls:
            self._calls.popleft().run()

    def _cancel_calls(self) -> None:
        while self._calls:
            try:
                self._calls.popleft().cancel()
            except IndexError:
                break

    def _push(self, event: str) -> None:
        self._events.append(event)  # deque.append is atomic
        with contextlib.suppress(OSError):  # pipe full: a wake-up is already pending
            os.write(self._wake_w, b"\0")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._push(RELOAD if signum == signal.SIGHUP else STOP)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop, SIGHUP reloads. Call from the main thread."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    # -- the main thread ---------------------------------------------------------------

    def wait(self, timeout: Optional[float]) -> Optional[str]:
        """The next request (STOP before RELOAD), or None after ``timeout`` seconds."""
        if not self._events:
            select.select([self._wake_r], [], [], timeout)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        if not self._events:
            return None
        if STOP in self._events:
            self._events.clear()
            return STOP
        return self._events.popleft()

    def ready(self, status: Optional[str] = None) -> None:
        """The loop runs: READY=1 (with a STATUS line)."""
        self.notifier.ready(status or (self._status() if self._status else None))

    def reload(self) -> bool:
        """Validate the new configuration first; apply it only if valid. True if applied."""
        self.notifier.reloading()
        applied = False
        if self.reloader is None:
            self._log.warning("SIGHUP: reloading is not supported here; ignored")
        else:
            try:
                new = self.reloader.load()
            except Exception as exc:
                self._log.error(
                    "SIGHUP: the new configuration is invalid; keeping the running one:\n%s",
                    self.reloader.describe(exc),
                )
                self.notifier.status("reload failed: configuration invalid, running the old one")
            else:
                try:
                    self.reloader.apply(new)
                except Exception:
                    self._log.exception("SIGHUP: applying the new configuration failed")
                else:
                    applied = True
                    self._log.info("SIGHUP: configuration reloaded")
        self.ready()
        return applied

    def shutdown(self) -> List[Tuple[str, bool]]:
        """STOPPING=1, then every step in order. Returns (step, succeeded) pairs."""
        self.notifier.stopping("stopping")
        results = []
        for name, step in self.shutdown_steps:
            started = self._clock()
            try:
                step()
            except Exception:
                self._log.exception("shutdown step %r failed; continuing", name)
                results.append((name, False))
            else:
                self._log.debug("shutdown step %r took %.2f s", name, self._clock() - started)
                results.append((name, True))
        self.stopped = True
        return results

    def run(
        self,
        on_idle: Optional[Callable[[], None]] = None,
        idle_s: float = 5.0,
    ) -> int:
        """Block until a stop request; reload on SIGHUP; refresh STATUS every ``idle_s``.

        Returns the exit code: 0 after a clean shutdown, 1 if a step failed.
        """
        self._main = threading.current_thread()
        while True:
            event = self.wait(idle_s)
            if event == STOP:
                break
            if event == RELOAD:
                self.reload()
                continue
            if event == CALL:
                self._run_calls()
                continue
            if on_idle is not None:
                try:
                    on_idle()
                except Exception:
                    self._log.exception("periodic task failed")
            if self._status is not None:
                self.notifier.status(self._status())
        self.stopped = True  # no new calls; the queued ones are answered
        self._cancel_calls()
        results = self.shutdown()
        self._main = None
        return 0 if all(ok for _, ok in results) else 1

    def close(self) -> None:
        self.restore_signal_handlers()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
