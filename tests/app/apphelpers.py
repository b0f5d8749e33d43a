"""Helpers shared by the tests that drive a real, launched app (imported as `apphelpers`)."""

from __future__ import annotations

import contextlib
import socket
import time

from gradio_client import Client

from demo.app.limits import Limits
from demo.app.ui import build_demo, launch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(space: Limits | None = None):
    """The app launched through demo.app.ui.launch on a free loopback port; closed on exit."""
    demo = build_demo(space)
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


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
