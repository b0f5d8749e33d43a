"""One run from a visitor's request to their session: what Train and Sweep share.

`run_stream(cfg)` is the only part that touches the accelerator: it iterates `train(cfg)` and
yields CPU data (the run record and, when they change, CPU weights). `follow(cfg, run_id, stop)`
runs it in a worker thread (demo.app.streaming.in_background) and paces what the handler shows:
a heavy update at most every half second, a cheap skip in between (a cancellation point for
headless clients), and always one last update. That last update comes from the record as it
stands when the run ends, marked "stopped" if Stop ended it, so the status line, the curves and
the session a handler draws from it show the same numbers.

Stop is a `StopRequests` request (demo.app.streaming), for Train and Sweep alike. The worker
passes it into the engine (`train(cfg, stop=...)`), which checks it at every step and between the
attacks' levels, so a stopped run's computation ends within one step or one attack level, and the
handler waits for it (STOP_WAIT_S at most) before its event ends: the accelerator's slot is free
only when the work has stopped.

Time: a run's time budget (JP_MAX_SECONDS at most, demo.app.limits) covers the whole event. The
engine trains for `limits.training_seconds` of it, leaving the rest to the final evaluation and
attacks; at the budget itself the same stop ends whatever still runs, and the run is kept as it
stands, saying so. Every other event that uses the accelerator (/thread, /thorough, /cost) stops
at JP_MAX_SECONDS through `deadline`. No event holds the accelerator past its limit.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from demo.app.limits import training_seconds
from demo.app.streaming import HEAVY, SKIP, StopRequests, Throttle, in_background
from demo.app.zerogpu import on_gpu, on_zero_gpu
from demo.engine.config import RunConfig
from demo.engine.record import RUNNING, Recorder, kept, new_record
from demo.engine.train import Evaluation, Finished, out_of_memory, train

__all__ = ["FINAL", "Tick", "follow", "run_stream", "visitor", "wire_stop"]

FINAL = "final"
_SMALLER = "Try a smaller batch size, fewer projections, or the 'projection' method instead of 'exact'."
OUT_OF_MEMORY = f"The machine ran out of memory before this run could start (the server's memory ceiling). {_SMALLER}"
OUT_OF_MEMORY_DURING = f"The machine ran out of memory during this run (the server's memory ceiling). {_SMALLER}"
# How long a stopped handler waits for the engine to notice: one step, or one attack level
# (PGD-10 on 500 test points is the longest piece, a few seconds on vit here).
STOP_WAIT_S = 30.0


@dataclass(frozen=True)
class Tick:
    """What a streaming handler shows next: SKIP (nothing), HEAVY (a live update) or FINAL (the
    last one). `run` is {"id", "record", "weights"}; `fresh` says its weights changed since the
    previous HEAVY or FINAL tick (a field or an image grid to redraw)."""

    kind: str
    run: dict[str, Any]
    fresh: bool = False


@on_gpu  # ZeroGPU: runs in a GPU worker for gpu_duration(cfg) seconds; unchanged elsewhere
def run_stream(cfg: RunConfig, should_stop: Callable[[], bool] | None = None
               ) -> Iterator[tuple[dict[str, Any], dict | None]]:
    """train(cfg) folded into its run record: (record, CPU weights or None) after every event.

    Weights come with Evaluation and Finished events only. Everything yielded is CPU data, so
    this generator can run in another process (ZeroGPU's spaces.GPU wraps it). Each record is a
    copy: the Recorder goes on changing its own while the handler draws and stores this one (in
    another thread, see in_background). `should_stop` reaches the engine, which ends the run at its
    next step or attack level once it says yes.
    """
    recorder = Recorder(cfg)
    for event in train(cfg, stop=should_stop):
        recorder.add(event)
        fresh = isinstance(event, (Evaluation, Finished)) and bool(event.state_dict)
        yield copy.deepcopy(recorder.record), (recorder.state_dict if fresh else None)


def deadline(seconds: float | None) -> Callable[[], bool]:
    """A stop check that says yes `seconds` after it was made (never, for None or 0)."""
    start = time.monotonic()
    return lambda: bool(seconds) and time.monotonic() - start > seconds


def run_limit_s(cfg: RunConfig) -> float | None:
    """How long a run's event may hold the accelerator: its time budget, the final evaluation and
    attacks included (None: no budget, no limit)."""
    return cfg.time_budget if cfg.time_budget > 0 else None


def follow(cfg: RunConfig, run_id: int, stop: threading.Event) -> Iterator[Tick]:
    """Run `cfg` as run `run_id` in a worker thread; the ticks a handler shows, ending with FINAL."""
    run = {"id": run_id, "record": new_record(cfg), "weights": {}}
    started = time.monotonic()
    past_limit = deadline(run_limit_s(cfg))
    # This run's own halt: set when it ends or is closed, so a sweep's next run starts afresh,
    # while `stop` (the visitor's Stop) ends every run of the handler.
    halt = threading.Event()

    def should_stop() -> bool:
        return stop.is_set() or halt.is_set() or past_limit()

    # A closure cannot cross into ZeroGPU's worker process: there Stop closes the stream instead.
    engine_cfg = cfg.replace(time_budget=training_seconds(cfg))  # the rest is the attacks' share
    stream = in_background(run_stream(engine_cfg, None if on_zero_gpu() else should_stop), halt, join_s=STOP_WAIT_S)
    pace, fresh, failed = Throttle(), False, False
    try:
        try:
            for item in stream:
                if item is not None:
                    record, weights = item
                    if weights is not None:
                        run, fresh = {**run, "weights": weights}, True
                    run = {**run, "record": record}
                if stop.is_set():
                    break
                finished = run["record"]["status"] != RUNNING
                update = pace.next(final=finished)
                if finished:
                    yield Tick(FINAL, _timed(run, started), fresh)
                    return
                if update == SKIP:
                    yield Tick(SKIP, run)
                elif update == HEAVY:
                    yield Tick(HEAVY, run, fresh)
                    fresh = False
        except (MemoryError, RuntimeError) as exc:
            # The engine ends a run whose step fails to allocate with its own status; under the
            # server's memory ceiling the worker around it can fail too (its thread's stack, the
            # record's copy): the same run, the same ending, with what it had shown kept.
            if not out_of_memory(exc):
                raise
            failed = True
        if failed:
            message = OUT_OF_MEMORY if not run["record"]["history"] else OUT_OF_MEMORY_DURING
            ended = {**run["record"], "status": "out_of_memory", "message": message}
            yield Tick(FINAL, _timed({**run, "record": ended}, started), fresh)
            return
        # Stopped (the stream may end first: its worker saw Stop too): the record as it stands.
        record = kept(run["record"])
        if past_limit() and not stop.is_set():
            record = {**record, "message": f"The app's time limit ({run_limit_s(cfg):.0f} s, attacks included) was "
                                           "reached before the run finished; it is kept as it stands."}
        yield Tick(FINAL, _timed({**run, "record": record}, started), fresh)
    finally:
        stream.close()


def _timed(run: dict[str, Any], started: float) -> dict[str, Any]:
    """The run with `final.run_seconds`: how long it held the accelerator in the app, from its start
    to its last update, attacks included (the engine's `elapsed` counts its training only). The
    status line says it, and the next estimate of its kind learns from it (Paces.observe)."""
    record = run["record"]
    final = {**record.get("final", {}), "run_seconds": time.monotonic() - started}
    return {**run, "record": {**record, "final": final}}


def visitor(request: gr.Request | None) -> str:
    """The browser session a request comes from: what Stop is keyed by."""
    return str(getattr(request, "session_hash", "") or "")


@dataclass(frozen=True)
class _StopHandlers:
    """Methods, not lambdas: gradio finds the gr.Request parameter by its annotation."""

    stops: StopRequests

    def pressed(self, request: gr.Request) -> None:
        self.stops.pressed(visitor(request))

    def stop(self, request: gr.Request) -> None:
        self.stops.request(visitor(request))


def wire_stop(start: gr.Button, stop: gr.Button, stops: StopRequests) -> None:
    """Stop for the run that `start` begins (Train or Run sweep). Outside the accelerator's limit, so
    both act at once: a Stop also reaches a run that still waits its turn (it begins stopped)."""
    handlers = _StopHandlers(stops)
    start.click(handlers.pressed, None, None, api_visibility="private", show_progress="hidden",
                concurrency_limit=None)
    stop.click(handlers.stop, None, None, api_visibility="private", show_progress="hidden",
               concurrency_limit=None)
