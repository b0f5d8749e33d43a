"""A visitor's runs and controls survive a reload and a closed tab, for the session's time to live.

The browser keeps one random token in its localStorage (`gr.BrowserState`, encrypted with a secret
this server drew at start); the server keeps, under that token, the visitor's session (their runs,
demo.app.session) and the values of the controls as they were last on screen. On page load the
token brings both back; without a token (a first visit, another browser, a server that restarted)
the visitor starts afresh and gets a new one.

Which settings a reload shows: a link in the address bar that this visitor did not copy themselves
(someone's shared link) sets the controls; otherwise (no link, or the address bar still holding
the visitor's own "Copy link" from earlier, since changed on screen) the controls come back as they
were last on screen.

The token is 32 random bytes drawn here (`secrets`), never chosen by the browser: a value the
store did not hand out is ignored, so nobody can read another visitor's runs by guessing or by
sending a token of their choice. Entries expire `ttl` seconds after their last save, and beyond
`capacity` visitors the least recently saved one without runs goes first (one with runs only when
all have some: a flood of new tokens cannot push out anyone's runs); either way its download
folder is removed.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from demo.app import keeper
from demo.app import session as sessions

__all__ = ["PageHandlers", "Visitors"]

TOKEN_BYTES = 32
PAGES_PER_VISITOR = 4  # page loads remembered per visitor slot (reloads, tabs), the oldest forgotten
MAX_TOKEN_CHARS = 64  # a token urlsafe-encodes 32 bytes in 43 characters


@dataclass
class Visitors:
    """One per app: visitor token -> {"session", "controls", "saved"} (monotonic seconds)."""

    ttl: float
    capacity: int
    on_drop: Callable[[dict | None], None] = sessions.delete_files
    _known: OrderedDict = field(default_factory=OrderedDict)
    _pages: OrderedDict = field(default_factory=OrderedDict)  # browser session (gradio's hash) -> token
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bind(self, page: str, stored: Any) -> None:
        """Page `page` (gradio's session hash of one page load) belongs to this token's visitor."""
        token = _token_of(stored)
        if not page or token is None:
            return
        with self._lock:
            self._pages[page] = token
            self._pages.move_to_end(page)
            while len(self._pages) > PAGES_PER_VISITOR * max(self.capacity, 1):
                self._pages.popitem(last=False)

    def save_page_session(self, page: str, session: dict | None) -> None:
        """The session of page `page`, saved under its visitor's token as each run finishes (a reload
        in the middle of a sweep keeps what it finished); nothing for a page no token claimed."""
        with self._lock:
            token = self._pages.get(page)
        if token is not None:
            self._update({"visitor": token}, session=session)

    def new_token(self) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            self._known[token] = {"session": None, "controls": {}, "saved": time.monotonic()}
        self._expire(keep=token)
        return token

    def restore(self, stored: Any) -> tuple[str, dict | None, dict[str, Any]]:
        """(token, session or None, controls) for the browser's stored value; a new token when
        the value is not one this store handed out (or its entry expired). `controls` carries the
        visitor's last copied link's query under "_link" when they copied one."""
        token = _token_of(stored)
        self._expire()
        with self._lock:
            entry = self._known.get(token) if token else None
            if entry is not None:
                entry["saved"] = time.monotonic()
                self._known.move_to_end(token)
                return token, entry["session"], dict(entry["controls"])
        return self.new_token(), None, {}

    def save_session(self, stored: Any, session: dict | None) -> None:
        self._update(stored, session=session)

    def save_controls(self, stored: Any, controls: Mapping[str, Any]) -> None:
        with self._lock:
            link = self._known.get(_token_of(stored) or "", {}).get("controls", {}).get("_link")
        self._update(stored, controls={**dict(controls), **({"_link": link} if link is not None else {})})

    def save_link(self, stored: Any, query: Mapping[str, str], settings: Mapping[str, Any] | None = None) -> None:
        """The query of the link this visitor copied: on a reload it is their own, not a shared one.
        `settings` (the link's values, typed) are what was on screen when they copied it: saved as
        the controls too, so a reload right after Copy link cannot lose to a save still on its way."""
        with self._lock:
            entry = self._known.get(_token_of(stored) or "")
            if entry is not None:
                entry["controls"] = {**entry["controls"], **dict(settings or {}), "_link": dict(query)}

    def _update(self, stored: Any, **changes: Any) -> None:
        token = _token_of(stored)
        with self._lock:
            entry = self._known.get(token) if token else None
            if entry is None:  # not a token of ours: nothing is written under a name a browser chose
                return
            entry.update(changes, saved=time.monotonic())
            self._known.move_to_end(token)

    def _expire(self, keep: str | None = None) -> None:
        now, dropped = time.monotonic(), []
        with self._lock:
            for token in list(self._known):
                if now - self._known[token]["saved"] > self.ttl:
                    dropped.append(self._known.pop(token))
            while len(self._known) > self.capacity:
                dropped.append(self._known.pop(self._victim(keep)))
        for entry in dropped:
            self.on_drop(entry["session"])

    def _victim(self, keep: str | None) -> str:
        """The least recently saved visitor without runs (who loses nothing), else the least recently
        saved one; never `keep`, the token just handed out. A new token costs one page load, so a
        flood of them must not push out anyone's runs."""
        others = [token for token in self._known if token != keep]  # least recently saved first
        return next((t for t in others if not keeper.holds_runs(self._known[t]["session"])), others[0])

    def __len__(self) -> int:
        return len(self._known)


def _token_of(stored: Any) -> str | None:
    token = stored.get("visitor") if isinstance(stored, dict) else None
    return token if isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_CHARS else None


@dataclass(frozen=True)
class PageHandlers:
    """The page's load and saves (methods: gradio finds gr.Request by annotation)."""

    visitors: Visitors
    fields: tuple[str, ...]  # the controls, in CONFIG_FIELDS order
    from_url: Callable  # request -> the controls' values from the link (or gr.skip()s)
    settings_of: Callable[[Mapping[str, str]], Mapping[str, Any] | None] = lambda query: {}  # a query, typed

    def load(self, stored: Any, session: dict | None, request: gr.Request = None) -> list[Any]:
        """(browser state, session, *controls, note): a returning visitor gets their runs and the
        controls as they were on screen (unless they opened someone else's link); a new one the
        link's settings and a new token."""
        token, kept_session, controls = self.visitors.restore(stored)
        self.visitors.bind(str(getattr(request, "session_hash", "") or ""), {"visitor": token})
        query = {k: v for k, v in dict(getattr(request, "query_params", None) or {}).items() if k in self.fields}
        shared_link = bool(query) and query != controls.get("_link")
        if shared_link or not any(name in controls for name in self.fields):
            values = self.from_url(request)
        else:
            values = [controls.get(name, gr.skip()) for name in self.fields]
        runs = len((kept_session or {}).get("runs", []))
        note = f"Welcome back: your {runs} run(s) are as you left them." if runs else ""
        return [{"visitor": token}, gr.skip() if kept_session is None else kept_session, *values, note]

    def save_link(self, stored: Any, link: Any) -> None:
        """After Copy link: that link's settings are this visitor's own (see the module docstring)."""
        if isinstance(link, str) and len(link) <= 4000:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))
            query = {k: v for k, v in query.items() if k in self.fields}
            self.visitors.save_link(stored, query, self.settings_of(query))

    def save_session(self, stored: Any, session: dict | None) -> None:
        self.visitors.save_session(stored, session)

    def save_controls(self, stored: Any, *values: Any) -> None:
        self.visitors.save_controls(stored, dict(zip(self.fields, values, strict=True)))
