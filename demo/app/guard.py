"""Every handler's failure as one sentence to the visitor and at most one line in the log.

Gradio answers an exception a handler did not expect with "Error" and prints its traceback, and
does the same for a value its components cannot preprocess: ten bad requests to a private
handler were ten tracebacks of ~60 lines. `guard(demo)` wraps the app's `process_api`, through
which every event passes (preprocessing, the handler, each step of a generator, postprocessing):
- a gr.Error is the app's own plain sentence: it goes to the visitor, without a traceback;
- anything else becomes a gr.Error saying the request could not be handled, and one line in
  the log per kind of failure (handler, exception type, where it was raised), the first time.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from gradio.exceptions import Error

from demo.app.server import OnceLog
from demo.engine.train import out_of_memory

MEMORY = ("The server ran out of memory for this request (past its memory ceiling). Try a smaller batch "
          "size, fewer projections or the 'projection' method.")
PLAIN = ("The server could not handle this request: its values do not fit this part of the app. "
         "Use the page's own controls, or see /gradio_api/info for what each endpoint takes.")


def guard(demo: Any, log: Callable[[str], None] | None = None) -> None:
    """Wrap `demo.process_api` (once) so that no failure reaches the log as a traceback."""
    if getattr(demo.process_api, "guarded", False):
        return
    original = demo.process_api
    once = OnceLog(log)

    async def process_api(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(block_fn, *args, **kwargs)
        except Error as exc:
            exc.print_exception = False  # already in plain words
            raise
        except (StopIteration, StopAsyncIteration):  # a generator's end is not a failure
            raise
        except Exception as exc:  # noqa: BLE001 - the one place every handler's failure passes
            once(f"{_name(demo, block_fn)}: {type(exc).__name__}: {str(exc)[:160]} ({_where(exc)})")
            raise Error(MEMORY if out_of_memory(exc) else PLAIN, print_exception=False) from None

    process_api.guarded = True  # type: ignore[attr-defined]
    demo.process_api = process_api


def _name(demo: Any, block_fn: Any) -> str:
    fn = demo.fns.get(block_fn) if isinstance(block_fn, int) else block_fn
    return str(getattr(fn, "api_name", None) or getattr(getattr(fn, "fn", None), "__name__", None) or "an event")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "no frame"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
