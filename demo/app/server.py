"""What a public server of the app refuses at the door, and the folders it leaves behind.

`Gate`, an ASGI middleware in front of all of gradio's routes:
- routes nobody needs on this app are closed (403): the upload routes and the recording upload
  (the app takes no file; gradio's max_file_size bounds one file, not how many a request
  carries), streaming inputs, the deep-link route (it writes a copy of the session's state to
  disk on every call; the app has its own links, demo.app.sharing), and the monitoring dashboard
  unless JP_MONITORING=1;
- every request body is at most MAX_BODY bytes on every route: a larger Content-Length is
  refused before a byte is read, and a body without one is read only up to the limit;
- an event call names an endpoint that exists (an integer fn_index of this app, a known api
  name), with as many values as it takes: otherwise one sentence (gradio would answer "Error",
  or a 500, and log a traceback);
- the queue's fairness (demo.app.fairness): a session's share of the queue, and listening;
- anything gradio fails on unexpectedly is answered with one sentence and logged in one line,
  once per kind, so bad requests cannot flood the log.
Gradio's direct REST route around the queue (`/gradio_api/run/<api>`) is closed by
`queue(api_open=False)` in demo.app.ui.

Session folders (demo.app.session) and this server's gradio cache are named with the server's
pid: at start the folders of servers that no longer run are removed, at shutdown this server's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from demo.app.session import FOLDER_PREFIX

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

# Routes nobody needs on this app, by path (gradio serves them under /gradio_api and at the root).
CLOSED = re.compile(r"^(/gradio_api)?/(upload(_progress)?|process_recording|deep_link|stream/[^/]+(/close)?)/?$")
MONITORING = re.compile(r"^(/gradio_api)?/monitoring(/.*)?$")
CALL = re.compile(r"^/gradio_api/call/(?P<v2>v2/)?(?P<api>[^/]+)/?$")
LISTEN_CALL = re.compile(r"^/gradio_api/call/(v2/)?[^/]+/(?P<event>[^/]+)/?$")
JOIN = re.compile(r"^/gradio_api/queue/join/?$")
LISTEN = re.compile(r"^/gradio_api/queue/data/?$")
MAX_BODY = 2**20  # bytes: the largest honest request (a few settings and run ids) is under 2 KB
MAX_SESSION_HASH = 128  # characters; gradio's own are 11


@dataclass(frozen=True)
class Signature:
    """The values one endpoint takes: all its inputs (as the page sends them) or those the API
    shows (session state left out), and their names for messages."""

    api_name: str
    sizes: frozenset[int]
    names: tuple[str, ...]
    fn: Any = None  # gradio's BlockFunction, for the queue's fairness


def signatures(demo: Any) -> dict[str | int, Signature]:
    """Every endpoint's Signature, keyed by its function's id (queue/join, private ones too) and,
    for named ones, by api_name (/call)."""
    table: dict[str | int, Signature] = {}
    for fn in demo.fns.values():
        shown = [block for block in fn.inputs if not getattr(block, "skip_api", False)]
        names = tuple(str(getattr(block, "label", None) or type(block).__name__) for block in shown)
        name = str(fn.api_name or getattr(fn.fn, "__name__", None) or f"event {fn._id}")
        signature = Signature(name, frozenset({len(fn.inputs), len(shown)}), names, fn)
        if fn.api_name:
            table[str(fn.api_name)] = signature
        table[fn._id] = signature
    return table


class Gate:
    """Answers with a plain sentence what must not reach gradio; passes everything else on."""

    def __init__(self, app: ASGIApp, monitoring: bool = False,
                 endpoints: Callable[[], dict[str | int, Signature]] | None = None,
                 fairness: Any = None, log: Callable[[str], None] | None = None, proxy_hops: int = 0) -> None:
        self.app = app
        self.proxy_hops = proxy_hops  # trusted proxies in front of this server (client_address)
        self.monitoring = monitoring
        self.endpoints = endpoints or dict
        self.fairness = fairness  # demo.app.fairness.Fairness, or None: no per-session caps
        self.once = OnceLog(log)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.fairness is not None:
            self.fairness.start()
        started = []

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                started.append(True)
            await send(message)

        try:
            await self._handle(scope, receive, tracked_send)
        except Exception as exc:  # noqa: BLE001 - whatever gradio fails on gets a sentence, not a 500 page
            self.once(f"{type(exc).__name__} on {_route_kind(scope.get('path', ''))}: {str(exc)[:200]}")
            if not started:
                await _answer(send, 400, "This request could not be handled: its values do not fit the endpoint "
                                         "(see /gradio_api/info for what each endpoint takes).")

    async def _handle(self, scope: Scope, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        refusal = self._closed(path)
        if refusal:
            await _answer(send, 403, refusal)
            return
        length = _content_length(scope)
        if length is not None and length > MAX_BODY:  # refused before a byte is read
            await _answer(send, 413, f"A request to this app is at most {MAX_BODY // 1024} KB.")
            return
        body = None
        if length or _chunked(scope):
            body = await _read_body(receive)
            if body is None:
                await _answer(send, 413, f"A request to this app is at most {MAX_BODY // 1024} KB.")
                return
            receive = _replay(body, receive)
        if scope.get("method") == "POST" and (CALL.match(path) or JOIN.match(path)):
            status, reason = self._wrong_call(scope, path, body or b"")
            if reason:
                await _answer(send, status, reason)
                return
        listener = self._listener(scope, path)
        if listener is not None and self.fairness is not None:
            with self.fairness.listening(listener):
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _closed(self, path: str) -> str | None:
        if CLOSED.match(path):
            return "This app takes no uploads, streams or deep links."
        if MONITORING.match(path) and not self.monitoring:
            return "Monitoring is off on this server (set JP_MONITORING=1 to turn it on)."
        return None

    def _wrong_call(self, scope: Scope, path: str, body: bytes) -> tuple[int, str | None]:
        """(status, reason) when an event call must not reach gradio; (200, None) when it may."""
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            return 422, "The request is not valid JSON."
        if not isinstance(payload, dict):
            return 422, "The request must be a JSON object with a \"data\" list."
        session = payload.get("session_hash")
        if session is not None and not (isinstance(session, str) and 0 < len(session) <= MAX_SESSION_HASH):
            return 422, f"session_hash must be a short text (at most {MAX_SESSION_HASH} characters)."
        call = CALL.match(path)
        endpoints = self.endpoints()
        if call:
            signature = endpoints.get(call.group("api"))
            if signature is None:
                return 404, f"There is no endpoint /{call.group('api')[:40]} on this app (see /gradio_api/info)."
        else:
            key = payload.get("fn_index")
            if type(key) is not int:  # "9", 9.0 and True are not event numbers
                return 422, "fn_index must be a whole number naming one of this app's events."
            signature = endpoints.get(key)
            if signature is None:
                return 404, f"There is no event number {key} on this app."
            if session is None:
                return 422, "A queue/join request needs a session_hash."
        data = payload.get("data")
        if call and call.group("v2"):
            if not isinstance(data if "data" in payload else payload, dict):
                return 422, f"/call/v2/{signature.api_name} takes a JSON object of named values."
        elif not isinstance(data, list):
            return 422, f"/{signature.api_name} takes a \"data\" list of {len(signature.names)} values."
        elif len(data) not in signature.sizes:
            names = ", ".join(signature.names) or "no values"
            return 422, f"/{signature.api_name} expects {len(signature.names)} values ({names}), got {len(data)}."
        if self.fairness is not None:
            refusal = self.fairness.refusal(session, signature.fn, client_address(scope, self.proxy_hops))
            if refusal:
                return 429, refusal
        return 200, None

    def _listener(self, scope: Scope, path: str) -> str | None:
        """The session a GET that listens for events' messages listens for, or None."""
        if scope.get("method") != "GET":
            return None
        if LISTEN.match(path):
            query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
            return (query.get("session_hash") or [None])[0]
        match = LISTEN_CALL.match(path)
        if match and self.fairness is not None:
            return self.fairness.session_of(match.group("event"))
        return None


class OnceLog:
    """One line on stderr per kind of failure, and only the first time: a client that repeats a
    bad request cannot fill the log."""

    def __init__(self, write: Callable[[str], None] | None = None, limit: int = 200) -> None:
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.seen: set[str] = set()
        self.limit = limit  # distinct kinds logged at most: beyond it, nothing more

    def __call__(self, line: str) -> None:
        kind = re.sub(r"\d+", "N", line)[:120]
        if kind in self.seen or len(self.seen) >= self.limit:
            return
        self.seen.add(kind)
        self.write(f"refused a request: {line} (further ones of this kind are not logged)")


def client_address(scope: Scope, proxy_hops: int = 0) -> str:
    """Who sent a request. Behind `proxy_hops` trusted proxies (a Space's: one), the address the
    outermost of them put in X-Forwarded-For, counted from the end: hops further left are what the
    client wrote itself, so anyone could name any address there. With no proxy, the peer."""
    client = scope.get("client") or ("", 0)
    if proxy_hops <= 0:
        return str(client[0])
    for name, value in scope.get("headers") or []:
        if name == b"x-forwarded-for":
            hops = [hop.strip() for hop in value.decode("latin-1").split(",")]
            return hops[-min(proxy_hops, len(hops))]
    return str(client[0])


def _route_kind(path: str) -> str:
    return re.sub(r"/[0-9a-f]{16,}", "/<id>", path)[:80]


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return MAX_BODY + 1  # unreadable: refused as too large
    return None


def _chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers") or [])


async def _read_body(receive: Callable) -> bytes | None:
    """The whole request body, or None past MAX_BODY (read no further)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    """A receive callable that hands gradio the body already read, then the client's messages."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Callable, status: int, text: str) -> None:
    body = json.dumps({"detail": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def monitoring_wanted(environ: MutableMapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get("JP_MONITORING", "").strip() in ("1", "true", "yes")


def session_folders(pid: int | None = None, root: Path | None = None) -> list[Path]:
    """Session folders (and per-server caches) under `root`: all of them, or those of server `pid`."""
    root = Path(tempfile.gettempdir()) if root is None else root
    pattern = f"{FOLDER_PREFIX}{'' if pid is None else f'{pid}-'}*"
    return sorted(p for p in root.glob(pattern) if p.is_dir())


def remove_stale_folders(root: Path | None = None) -> list[Path]:
    """Remove the session folders of servers that no longer run; returns what was removed."""
    removed = []
    for folder in session_folders(root=root):
        pid = _pid_of(folder)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def remove_own_folders(root: Path | None = None) -> None:
    for folder in session_folders(os.getpid(), root):
        shutil.rmtree(folder, ignore_errors=True)


def remove_deep_links(upload_folder: Path) -> None:
    """Gradio's deep-link states (a copy of a session's components per call; the route is closed
    here, but an older server may have written some)."""
    shutil.rmtree(upload_folder / "deep_links", ignore_errors=True)


def cache_folder(environ: MutableMapping[str, str] | None = None) -> Path:
    """This server's own folder for gradio's cache (the downloads it copies, deep links): inside
    GRADIO_TEMP_DIR (or the temp folder), named with the pid so that a restarted server removes
    it (remove_stale_folders) and a stopped one its own (remove_own_folders)."""
    environ = os.environ if environ is None else environ
    base = Path(environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    if base.name.startswith(FOLDER_PREFIX):  # already one of ours (a second Blocks in this process)
        base = base.parent
    return base / f"{FOLDER_PREFIX}{os.getpid()}-cache"


def use_own_cache(environ: MutableMapping[str, str] | None = None) -> Path:
    """Point gradio's cache at cache_folder() (read by each component as it is made, so before the
    Blocks is built) and remove what servers that no longer run left there. Returns the folder."""
    environ = os.environ if environ is None else environ
    folder = cache_folder(environ)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(folder.parent)
    remove_deep_links(folder.parent)
    environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def quiet_torch() -> None:
    """Keep torch's own noise out of the server's log: the profiler's lines (demo.budget.timing)
    and the `torch.jit.script` deprecation that torch's forward-mode decompositions raise when
    they load, on the first jvp; loaded here once with that one warning ignored."""
    from demo.budget import timing

    timing.quiet_profiler()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401


def release_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim): after a big run, the
    freed tensors otherwise stay in the process as free heap and its RSS stays high."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def return_memory_when_idle(busy: Callable[[], bool], every: float = 5.0) -> threading.Thread:
    """A daemon thread that calls release_memory() every `every` seconds while nothing runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                if not busy():
                    release_memory()
            except Exception:  # noqa: BLE001, S110 - a look at gradio's queue must never end the thread
                pass

    thread = threading.Thread(target=loop, name="return-memory", daemon=True)
    thread.start()
    return thread


def _pid_of(folder: Path) -> int | None:
    match = re.match(rf"{re.escape(FOLDER_PREFIX)}(\d+)-", folder.name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
