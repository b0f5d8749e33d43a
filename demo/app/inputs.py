"""Checks of the raw values an endpoint receives (its events use preprocess=False), with messages
in plain words that name each field as the page shows it.

Any HTTP client can send any JSON: a 5000-item list, 10**400, NaN, a dict where a number goes.
Gradio's own preprocessing answers some of those with a generic error and a traceback in the
server's log; these checks answer all of them with one sentence (gr.Error, no traceback).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from demo.app.session import RunNotFound
from demo.engine.config import ConfigError, shown
from demo.engine.data import DatasetUnavailable
from jacobian_penalty import ForwardModeUnsafe, SampleCouplingError

# Runs one request may name: a session keeps at most JP_MAX_RUNS (20 by default), and a longer
# list only makes the server look up the same few runs thousands of times.
MAX_CHOSEN = 20
MAX_ID_LENGTH = 40  # characters of a run id as text; longer is not a run's name


def refuse(message: str) -> gr.Error:
    """The app's one way to say no: a toast with `message`, no traceback in the server's log."""
    return gr.Error(message, print_exception=False)


@contextmanager
def plain_errors(prefix: str = "") -> Iterator[None]:
    """Errors meant for the visitor (a bad setting, a dataset that cannot be had, a run that does
    not fit, a run that is not in the session, a method the library refuses for this model) become
    `refuse(prefix + message)`; anything else is a fault and propagates."""
    try:
        yield
    except (ConfigError, DatasetUnavailable, RunNotFound, ForwardModeUnsafe, SampleCouplingError) as exc:
        raise refuse(f"{prefix}{exc}") from None


def run_id(value: Any, label: str = "Run") -> str:
    """One run, as the page's dropdowns send it: "" (the newest), "3", "#3" or 3."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_ID_LENGTH:
        return str(value)
    if isinstance(value, str) and len(value) <= MAX_ID_LENGTH:
        return value.strip()
    raise refuse(f"{label}: choose a run by its number (like 3 or #3), got {shown(value)}.")


def run_ids(value: Any, label: str = "Runs") -> list[str]:
    """Several runs: a list of at most MAX_CHOSEN ids, duplicates dropped (first kept)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise refuse(f"{label}: send a list of run numbers, got {shown(value)}.")
    if len(value) > MAX_CHOSEN:
        raise refuse(f"{label}: choose at most {MAX_CHOSEN} runs at a time, got {len(value)}.")
    return list(dict.fromkeys(run_id(v, label) for v in value))


def choice(value: Any, label: str, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    raise refuse(f"{label}: choose one of {', '.join(choices)}, got {shown(value)}.")


def number(value: Any, label: str, low: float, high: float, *, whole: bool = False) -> float:
    """A finite number in [low, high] (a whole one if `whole`), from a JSON number or a numeric string."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            value = float(value.strip())
        except ValueError:
            raise refuse(f"{label} must be a number, got {shown(value)}.") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse(f"{label} must be a number, got {shown(value)}.")
    if isinstance(value, int) and abs(value) > 10**15:
        raise refuse(f"{label} must be a number from {low:g} to {high:g}; this one has {len(str(abs(value)))} digits.")
    if not math.isfinite(value) or not low <= value <= high:
        raise refuse(f"{label} must be a number from {low:g} to {high:g}, got {shown(value)}.")
    if whole and value != int(value):
        raise refuse(f"{label} must be a whole number, got {shown(value)}.")
    return int(value) if whole else float(value)
