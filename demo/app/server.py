"""What a public server of the app refuses, and the session folders it leaves behind.

- `Gate`, an ASGI middleware in front of gradio's routes: the app takes no file, so the upload
  route is closed (gradio's max_file_size bounds one file, not how many a request carries); the
  monitoring dashboard is closed unless JP_MONITORING=1; a request body is at most MAX_BODY
  bytes; and a call with the wrong number of values gets one sentence naming the values the
  endpoint expects (gradio would answer "Error" and log a traceback). Gradio's direct REST route
  around the queue (`/gradio_api/run/<api>`) is closed by `queue(api_open=False)` in demo.app.ui.
- Session folders (demo.app.session) are named with the server's pid: at start the folders of
  servers that no longer run are removed, at shutdown this server's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.app.session import FOLDER_PREFIX

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

# Routes nobody needs on this app, by path (gradio serves them under /gradio_api and at the root).
UPLOAD = re.compile(r"^(/gradio_api)?/upload(_progress)?/?$")
MONITORING = re.compile(r"^(/gradio_api)?/monitoring(/.*)?$")
CALL = re.compile(r"^/gradio_api/call/(?P<api>[^/]+)/?$")
JOIN = re.compile(r"^/gradio_api/queue/join/?$")
MAX_BODY = 2**20  # bytes: the largest honest request (a few settings and run ids) is under 2 KB


@dataclass(frozen=True)
class Signature:
    """The values one endpoint takes: all its inputs (as the page sends them) or those the API
    shows (session state left out), and their names for messages."""

    api_name: str
    sizes: frozenset[int]
    names: tuple[str, ...]


def signatures(demo: Any) -> dict[str | int, Signature]:
    """Each named endpoint's Signature, keyed by api_name and by the function's id (queue/join)."""
    table: dict[str | int, Signature] = {}
    for fn in demo.fns.values():
        if not fn.api_name:
            continue
        shown = [block for block in fn.inputs if not getattr(block, "skip_api", False)]
        names = tuple(str(getattr(block, "label", None) or type(block).__name__) for block in shown)
        signature = Signature(str(fn.api_name), frozenset({len(fn.inputs), len(shown)}), names)
        table[str(fn.api_name)] = signature
        table[fn._id] = signature
    return table


class Gate:
    """Answers with a plain sentence what must not reach gradio; passes everything else on."""

    def __init__(self, app: ASGIApp, monitoring: bool = False,
                 endpoints: Callable[[], dict[str | int, Signature]] | None = None) -> None:
        self.app = app
        self.monitoring = monitoring
        self.endpoints = endpoints or dict

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if UPLOAD.match(path):
            await _answer(send, 403, "This app takes no uploads.")
            return
        if MONITORING.match(path) and not self.monitoring:
            await _answer(send, 403, "Monitoring is off on this server (set JP_MONITORING=1 to turn it on).")
            return
        if scope.get("method") == "POST" and (CALL.match(path) or JOIN.match(path)):
            body = await _read_body(receive)
            if body is None:
                await _answer(send, 413, f"A request to this app is at most {MAX_BODY // 1024} KB.")
                return
            reason = self._wrong_values(path, body)
            if reason:
                await _answer(send, 422, reason)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _wrong_values(self, path: str, body: bytes) -> str | None:
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            return "The request is not valid JSON."
        if not isinstance(payload, dict):
            return "The request must be a JSON object with a \"data\" list."
        call = CALL.match(path)
        key = call.group("api") if call else payload.get("fn_index")
        signature = self.endpoints().get(key) if isinstance(key, str | int) else None
        if signature is None:
            return None  # gradio answers unknown endpoints itself
        data = payload.get("data")
        if not isinstance(data, list):
            return f"/{signature.api_name} takes a \"data\" list of {len(signature.names)} values."
        if len(data) not in signature.sizes:
            names = ", ".join(signature.names) or "no values"
            return f"/{signature.api_name} expects {len(signature.names)} values ({names}), got {len(data)}."
        return None


async def _read_body(receive: Callable) -> bytes | None:
    """The whole request body, or None past MAX_BODY."""
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
    """Session folders under the temp folder: all of them, or those of server `pid`."""
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
