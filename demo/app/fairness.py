"""The queue's fairness: what one session or one client may hold of it, and events nobody listens to.

Gradio's queue serves events in arrival order, whoever sent them: one client that joins twenty
trainings fills it for everyone, and an event whose client never opens the stream that would
carry its results runs anyway, for nobody. So, counted from gradio's own queue (its waiting
events and the running ones):
- a session holds at most `Limits.session_events` events, and at most
  `Limits.session_accelerator_events` of those that train (concurrency_id "accelerator"); the
  page's own duration estimates (`measurement`) wait in the same line but count apart, with the same
  cap: an estimate still measuring must not make the Train pressed beside it look like a second
  run (it was refused with "a run or measurement waiting"); a client address at most
  `Limits.client_events` waiting (a client can make fresh sessions for free, not fresh
  addresses). Past that, /queue/join and /call get one sentence (429);
- an event whose session has not listened (GET /queue/data, or /call/<api>/<event_id>) for
  `Limits.listen_grace` seconds is dropped from the queue, or stopped at its next update if it
  runs. Gradio itself drops a session's events when its stream closes; this covers the streams
  that were never opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from demo.app.limits import Limits

ACCELERATOR = "accelerator"  # the concurrency_id of events that train or measure (demo.app.streaming)
REAP_EVERY = 1.0  # seconds between two looks for events nobody listens to
MEASUREMENT = "_jp_measurement"  # the mark `measurement` puts on a handler


def measurement(fn: Callable) -> Callable:
    """Mark `fn` as the page's own measurement (the estimate under Steps): bounded by the probe's
    cap, and counted apart from the session's runs at the door."""
    setattr(fn, MEASUREMENT, True)
    return fn


def is_measurement(block_fn: Any) -> bool:
    """Whether gradio's BlockFunction `block_fn` runs a handler marked by `measurement`."""
    return bool(getattr(getattr(block_fn, "fn", None), MEASUREMENT, False))


class Fairness:
    """Per-app bookkeeping of who listens, and the caps; `queue` returns gradio's Queue (or None
    before the app runs)."""

    def __init__(self, queue: Callable[[], Any], limits: Limits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.limits = limits
        self.clock = clock
        self.streams: dict[str, int] = {}  # session -> streams open now
        self.heard: dict[str, float] = {}  # session -> when its last stream closed (clock)
        self.task: asyncio.Task | None = None

    # -- the caps, at the door -------------------------------------------------------------
    def refusal(self, session: str | None, fn: Any, client: str) -> str | None:
        """A sentence when the session or the client already holds its share of the queue."""
        events = self.events()
        accelerator = getattr(fn, "concurrency_id", None) == ACCELERATOR
        mine = [e for e in events if session is not None and e.session_hash == session]
        if accelerator:
            kind = is_measurement(fn)
            alike = sum(e.concurrency_id == ACCELERATOR and is_measurement(e.fn) == kind for e in mine)
            if alike >= self.limits.session_accelerator_events:
                if kind:
                    return "This page is still measuring how long a run takes: wait a few seconds."
                return ("This session already has a run waiting or running: "
                        "wait for it to finish (or press Stop) before starting another.")
        if len(mine) >= self.limits.session_events:
            return f"This session already has {len(mine)} requests waiting or running: wait for them to finish."
        # An address's share counts what waits: that is what fills the queue (what runs is bounded by
        # the concurrency), and a full queue is gradio's to say.
        theirs = sum(_client_of(e) == client for e in self.waiting())
        if theirs >= (self.limits.client_events or max(2, self.limits.queue_size // 2)):
            return (f"Your address already has {theirs} requests waiting on this server, its share "
                    "of the queue: wait for them to finish.")
        return None

    def waiting(self) -> list[Any]:
        queue = self.queue()
        if queue is None:
            return []
        return [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]

    def events(self) -> list[Any]:
        """Gradio's waiting and running events."""
        queue = self.queue()
        if queue is None:
            return []
        waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
        running = [e for job in queue.active_jobs if job for e in job]
        return waiting + running

    def session_of(self, event_id: str) -> str | None:
        queue = self.queue()
        event = queue.event_ids_to_events.get(event_id) if queue is not None else None
        return event.session_hash if event is not None else event_id  # gradio's fallback: the id itself

    # -- listening ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def listening(self, session: str) -> Iterator[None]:
        self.streams[session] = self.streams.get(session, 0) + 1
        try:
            yield
        finally:
            self.streams[session] -= 1
            if not self.streams[session]:
                del self.streams[session]
            self.heard[session] = self.clock()

    def unheard(self) -> list[Any]:
        """Events whose session has had no stream open for listen_grace seconds (counted from when
        the event joined, or when the session's last stream closed if that is later)."""
        now, grace = self.clock(), self.limits.listen_grace
        found = []
        for event in self.events():
            session = event.session_hash
            if session in self.streams:
                continue
            since = max(getattr(event, "enqueue_time", now), self.heard.get(session, 0.0))
            if now - since > grace:
                found.append(event)
        return found

    async def reap(self) -> int:
        """Drop the unheard events; returns how many."""
        queue = self.queue()
        if queue is None:
            return 0
        dropped = self.unheard()
        for event in dropped:
            await queue.clean_events(event_id=event._id)
        live = {e.session_hash for e in self.events()}
        for session in [s for s in self.heard if s not in live and s not in self.streams]:
            del self.heard[session]  # forgotten once nothing of the session is left to judge
        return len(dropped)

    def start(self) -> None:
        """Start the reaper on the server's event loop (once; called on every request)."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._reaper())

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY)
            with contextlib.suppress(Exception):  # a change in gradio's internals must not stop serving
                await self.reap()


def _client_of(event: Any) -> str:
    request = getattr(event, "request", None)
    if request is None:
        return ""
    forwarded = request.headers.get("x-forwarded-for") if hasattr(request, "headers") else None
    if forwarded:
        return forwarded.split(",")[0].strip()
    client = getattr(request, "client", None)
    return str(client.host) if client is not None else ""
