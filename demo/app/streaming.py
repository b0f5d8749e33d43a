"""What every streaming view shares: the accelerator's concurrency id, wall-clock pacing of
updates, training in a worker thread, and Stop.

Why a worker thread: gradio iterates a handler's generator one `next()` at a time, and neither a
cancel nor a Stop flag is seen before that `next()` returns. Training yields an event every few
steps, but one event can take seconds (an evaluation of the exact ‖J‖ on resnet, the attacks at the
end of a run). `in_background` runs the stream in a thread and hands the handler an item, or a
tick every `poll_s`, so the handler answers Stop within a tick whatever the model.

Why Stop is a request, not a cancel: a cancelled generator cannot yield again, so the page kept the
last update sent before the click while the status line was redrawn later from the session: the
two could disagree. With `StopRequests` the Train handler itself ends the run and sends one last
update (session, status and figures from the same record).
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACCELERATOR", "HEAVY", "SKIP", "StopRequests", "Throttle", "in_background"]

ACCELERATOR = "accelerator"  # concurrency_id of every event that trains or measures
HEAVY_INTERVAL_S = 0.5  # at most ~2 figure updates a second: the browser keeps up, Stop stays quick
# Between heavy updates, an empty update (gr.skip) at most this often: a cancel (a headless
# client's job.cancel()) closes the generator at its next yield, so this bounds its delay.
SKIP_INTERVAL_S = 0.1
POLL_S = 0.1  # how often a handler waiting on the worker looks for Stop
# How long a stopped handler waits for the worker to finish its current event before its own
# event ends. The browser ignores Train while the previous Train event is pending, so this is
# short; a worker still busy after it (seconds of attacks) ends by itself at its next event.
JOIN_S = 1.0
HEAVY, SKIP = "heavy", "skip"


@dataclass
class Throttle:
    """Wall-clock pacing of a streaming handler (one per handler call, in its locals): `next()`
    says HEAVY at most every `heavy_s` seconds (and for the final update), SKIP at most every
    `skip_s` in between (an empty update: a cancellation point), else None (no message)."""

    heavy_s: float = HEAVY_INTERVAL_S
    skip_s: float = SKIP_INTERVAL_S
    last_heavy: float = -math.inf
    last_yield: float = -math.inf

    def next(self, *, final: bool = False) -> str | None:
        now = time.monotonic()
        if final or now - self.last_heavy >= self.heavy_s:
            self.last_heavy = self.last_yield = now
            return HEAVY
        if now - self.last_yield >= self.skip_s:
            self.last_yield = now
            return SKIP
        return None


_DONE = object()


@dataclass
class _Failure:
    error: BaseException


def in_background(stream: Iterator[Any], stop: threading.Event, poll_s: float = POLL_S,
                  join_s: float = JOIN_S) -> Iterator[Any]:
    """Iterate `stream` in a worker thread: yields its items, and None after every `poll_s` without
    one. Setting `stop` (or closing this generator) makes the worker close `stream` at its next
    item. An exception in `stream` is raised here. Closing waits up to `join_s` for the worker, and
    not at all in the server's event loop (where gradio closes a cancelled generator)."""
    items: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            for item in stream:
                if stop.is_set():
                    break
                items.put(item)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            items.put(_Failure(exc))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            items.put(_DONE)

    worker = threading.Thread(target=work, name="jp-stream", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = items.get(timeout=poll_s)
            except queue.Empty:
                yield None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        # A close from the event loop (gradio closing a cancelled generator) must not block every
        # session: the worker then ends by itself at its next event.
        if worker.is_alive() and not _in_event_loop():
            worker.join(join_s)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


@dataclass
class StopRequests:
    """Stop, per browser session: one per app (it describes running handlers, not data).

    `begin(session)` when a Train or Sweep handler starts returns the Event that `request(session)`
    sets; `running(session)` does the same as a context manager, ending it however the handler ends.
    A Stop pressed while that session's run still waited in the queue counts too: `pressed(session)`
    notes when Train was pressed, and a run begins stopped if its session's previous run ended, then
    Train was pressed, then Stop."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _running: dict[str, threading.Event] = field(default_factory=dict)
    _times: dict[str, dict[str, float]] = field(default_factory=dict)

    def pressed(self, session: str) -> None:
        self._note(session, "pressed")

    def request(self, session: str) -> bool:
        """Stop the session's run; True if one was running (else a queued run will begin stopped)."""
        with self._lock:
            event = self._running.get(session)
            if event is not None:
                event.set()
                return True
        self._note(session, "stop")
        return False

    def begin(self, session: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            times = self._times.get(session, {})
            # Stopped while queued: Train pressed after the previous run ended, then Stop. A Stop that
            # came after a run had ended, with no press since, is for nothing, not for the next run.
            pressed = times.get("pressed", -math.inf)
            if times.get("ended", -math.inf) < pressed < times.get("stop", -math.inf):
                event.set()
            self._running[session] = event
        return event

    @contextmanager
    def running(self, session: str) -> Iterator[threading.Event]:
        event = self.begin(session)
        try:
            yield event
        finally:
            self.end(session, event)

    def end(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._running.get(session) is event:
                del self._running[session]
        self._note(session, "ended")

    def _note(self, session: str, what: str) -> None:
        with self._lock:
            self._times.setdefault(session, {})[what] = time.monotonic()
            if len(self._times) > 10_000:  # sessions come and go: forget the oldest
                for old in list(self._times)[: len(self._times) // 2]:
                    del self._times[old]
