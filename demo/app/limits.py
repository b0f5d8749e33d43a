"""Space-wide limits on what one visitor may ask of the app, read from environment variables.

A public Space shares one machine between everyone, so a run's length and the queue are bounded
by whoever deploys it:

    JP_MAX_STEPS     most training steps a run may ask for (a larger request is refused)
    JP_MAX_SECONDS   most seconds one event may hold the accelerator: a run's training, evaluations
                     and attacks together (its time budget is clamped to it; `training_seconds`)
    JP_QUEUE_SIZE    most events waiting in the queue (more get "queue full")
    JP_CONCURRENCY   events that train or measure at the same time (they share the accelerator)
    JP_MAX_RUNS      runs kept per browser session (the oldest is dropped beyond it)
    JP_SESSION_TTL   seconds a session's runs are kept after its last update (gradio keeps those of
                     a session whose page was closed for a fixed hour instead)
    JP_MAX_SESSIONS  sessions gradio keeps a record of (~0.2 MB each, never freed otherwise);
                     beyond it the least recently used one is dropped, runs and all
    JP_SESSION_EVENTS              events one session may have waiting or running at once
    JP_SESSION_ACCELERATOR_EVENTS  of those, events that train; and, counted apart, as many of
                                   the page's own duration estimates (demo.app.fairness)
    JP_CLIENT_EVENTS               events one client address may have waiting (a client makes
                                   fresh sessions for free); default half the queue, at least 2
    JP_LISTEN_GRACE  seconds an event may wait for its client to listen before it is dropped
    JP_TORCH_THREADS torch's intra-op threads in the server (the models are small: on a shared
                     2-core machine two OpenMP threads spin against the web server and each
                     other and made the default run 5x slower here than one thread)
    JP_MAX_MEMORY_MB the memory budget of one run, in MB (unset: 60% of the memory available when
                     the run is checked; demo.budget.memory)

The defaults suit one person on a laptop. `Limits.from_env()` is read once, when the app is
built; `check` says in plain words when RunConfig into the one that may run here, or says in plain words why not.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from demo.engine.config import MAX_STEPS, ConfigError, RunConfig

__all__ = ["Limits", "check", "time_budget", "training_seconds"]

# Of a run's time budget, the share kept for what comes after training: the final evaluation and,
# with robustness, the attacks (the longest, PGD on 500 test points, took up to a fifth of a run
# here). Training stops at the rest, so the run as a whole ends within its budget.
AFTER_TRAINING_SHARE = MappingProxyType({True: 0.25, False: 0.05})

PREFIX = "JP_"
MAY_BE_ZERO = frozenset({"memory_ceiling_mb", "proxy_hops"})  # where 0 means "off"


@dataclass(frozen=True)
class Limits:
    max_steps: int = 20_000
    max_seconds: float = 300.0
    queue_size: int = 20
    concurrency: int = 1
    max_runs: int = 20
    session_ttl: float = 2 * 3600.0
    max_sessions: int = 1000
    session_events: int = 8
    session_accelerator_events: int = 2
    client_events: int = 0  # 0: half the queue, at least 2 (demo.app.fairness)
    listen_grace: float = 10.0
    torch_threads: int = 1
    max_memory_mb: float = 0.0  # 0: the memory budget is demo.budget.memory's share of what is available
    # How far the server's address space may grow (demo.budget.memory.set_ceiling); None: a share of
    # the memory available; 0 (JP_MEMORY_CEILING_MB=0): no ceiling.
    memory_ceiling_mb: float | None = None
    # Trusted proxies in front of the server, whose X-Forwarded-For names the client (the queue's
    # per-address share): 1 on a Hugging Face Space (SPACE_ID set), else 0 unless JP_PROXY_HOPS says.
    proxy_hops: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """Limits from JP_* variables (JP_MAX_STEPS, ...); unset ones keep their defaults.

        A value that is not a positive number raises ValueError naming the variable: a
        misconfigured Space should fail at start, not run without its limits.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            name = PREFIX + field.name.upper()
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}.") from None
            if not (number > 0 or (number == 0 and field.name in MAY_BE_ZERO)) or number == float("inf"):
                raise ValueError(f"{name} must be a positive finite number, got {raw!r}.")
            values[field.name] = int(number) if field.type == "int" else number
        if environ.get("SPACE_ID") and "proxy_hops" not in values:
            values["proxy_hops"] = 1  # a Space's own proxy adds the visitor's address last
        limits = cls(**values)
        return dataclasses.replace(limits, max_steps=min(limits.max_steps, MAX_STEPS))


def time_budget(asked: float | int | str | None, limits: Limits) -> float:
    """The time budget a run gets here: what was asked, clamped to max_seconds (0 or nothing, "no
    limit", becomes max_seconds). A value that is not a number is passed on for RunConfig to explain."""
    try:
        seconds = float(asked or 0.0)
    except (TypeError, ValueError, OverflowError):
        return asked  # type: ignore[return-value]
    return float(limits.max_seconds if seconds <= 0 else min(seconds, limits.max_seconds))


def training_seconds(cfg: RunConfig) -> float:
    """Seconds a run may train for, out of its time budget (0: no limit): what is left once the
    final evaluation and attacks have their share."""
    return cfg.time_budget * (1.0 - AFTER_TRAINING_SHARE[bool(cfg.robustness)])


def check(cfg: RunConfig, limits: Limits) -> None:
    """Raise ConfigError in plain words when `cfg` asks for more than this app allows."""
    if cfg.steps > limits.max_steps:
        raise ConfigError(
            f"{cfg.steps} steps is more than this app allows ({limits.max_steps} per run). "
            "Ask for fewer steps, or run it on your own machine (python -m demo train)."
        )
