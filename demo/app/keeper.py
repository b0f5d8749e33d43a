"""Which sessions the server keeps when it holds as many as it may, and the clean-up of those it drops.

Gradio keeps a record of every session it has seen (its state and a copy of the page's config,
~0.2 MB) up to `state_session_capacity` (JP_MAX_SESSIONS), then drops the least recently used one,
without calling its states' delete callbacks. A request with a fresh session hash costs nothing,
so a thousand cheap /runs calls pushed a visitor's trained runs out, and the dropped sessions
left their download folders behind. `KeptSessions` drops the least recently used session that
holds no runs first (it loses nothing), a session with runs only when every session has some,
and runs each dropped session's delete callbacks (demo.app.session.delete_files) as gradio does
when a session's time to live ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from gradio.state_holder import StateHolder


def holds_runs(value: Any) -> bool:
    """Whether a gr.State value is a session (demo.app.session) with at least one run."""
    return isinstance(value, dict) and bool(value.get("runs"))


class KeptSessions(StateHolder):
    """Gradio's StateHolder with an eviction that spares sessions holding runs, and cleans up."""

    def __init__(self, holds: Callable[[Any], bool] = holds_runs) -> None:
        super().__init__()
        self.holds = holds

    def update(self, session_id: str) -> None:
        with self.lock:
            if session_id in self.session_data:
                self.session_data.move_to_end(session_id)
            while len(self.session_data) > self.capacity:
                victim = self._victim(session_id)
                state = self.session_data.pop(victim)
                self.time_last_used.pop(victim, None)
                _clean_up(state)

    def _victim(self, keep: str) -> str:
        """The least recently used session without runs, else the least recently used one."""
        oldest = None
        for session_id, state in self.session_data.items():  # oldest first
            if session_id == keep:
                continue
            oldest = oldest or session_id
            if not any(self.holds(value) for value in state.state_data.values()):
                return session_id
        return oldest if oldest is not None else keep


def _clean_up(state: Any) -> None:
    """Every state's delete callback, as gradio calls them when a time to live ends."""
    for component, value, _expired in list(state.state_components):
        with contextlib.suppress(Exception):  # one failed clean-up must not stop serving
            component.delete_callback(value)


def install(demo: Any) -> KeptSessions:
    """Put a KeptSessions in place of the launched app's state holder, keeping what it holds."""
    app = demo.server_app
    old = app.state_holder
    kept = KeptSessions()
    kept.set_blocks(demo)
    kept.session_data = old.session_data
    kept.time_last_used = old.time_last_used
    app.state_holder = kept
    return kept
