"""Helpers shared by the tests that drive a real, launched app (imported as `apphelpers`)."""

from __future__ import annotations

import contextlib
import re
import time

from gradio_client import Client

from demo.app.limits import Limits
from demo.app.ui import build_demo, launch

LOCAL_URL = re.compile(r"Running on local URL:\s+(http://127\.0\.0\.1:\d+/?)")


@contextlib.contextmanager
def served(space: Limits | None = None):
    """The app launched through demo.app.ui.launch on loopback, gradio's way: prevent_thread_lock
    and the URL launch() returns (gradio finds the port itself, so no free-port race); closed on exit."""
    demo = build_demo(space)
    _, url, _ = launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield demo, url if url.endswith("/") else url + "/"
    finally:
        for attempt in range(5):  # gradio's queue.close() iterates a deque its workers may still touch
            try:
                demo.close()
                break
            except RuntimeError as exc:
                if "mutated during iteration" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2)


def url_from_log(text: str) -> str | None:
    """The local URL a `python app.py` child printed (gradio picks the port: 7860 or the next free one)."""
    found = LOCAL_URL.search(text)
    if found is None:
        return None
    url = found.group(1)
    return url if url.endswith("/") else url + "/"


def runs(client: Client) -> list[dict]:
    """The client session's runs table (/runs) as one dict per row."""
    table = client.predict(api_name="/runs")
    return [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]


def wait_for(predicate, timeout: float = 120.0, every: float = 0.1):
    """The first truthy value of predicate(), polled until timeout (then the test fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")
