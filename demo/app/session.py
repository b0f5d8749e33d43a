"""A visitor's session: the runs they trained, kept in a gr.State (server memory, per browser tab).

A session is a plain dict, treated as a value: every change returns a new dict (the runs list is
copied, the runs themselves are shared), so a handler that yields a session never disturbs one
that another handler holds.

    {"runs": [run, ...], "next_id": int, "folder": str}
    run = {"id": int, "record": run record (demo.engine.record), "weights": CPU state_dict}

`folder` is a temporary folder the app creates for the session's downloads (never a path the
visitor chose); `delete_files` removes it when gradio drops the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from demo.engine import data
from demo.engine import sweep as sweeps
from demo.engine.record import kept, to_json

__all__ = [
    "FOLDER_PREFIX",
    "LiveSessions",
    "RunNotFound",
    "choices",
    "delete_files",
    "find_run",
    "legend_labels",
    "new_session",
    "reserve_run",
    "table",
    "table_label",
    "with_run",
    "write_files",
]

Session = dict[str, Any]
FOLDER_PREFIX = "jacobian-playground-"
MAX_LIVE = 10_000  # browser sessions a LiveSessions remembers at most (the oldest go first)
TABLE_LABEL = "This session's runs"
LEGEND_FIELDS = ("dataset", "arch", "regularizer", "target", "seed")  # named in a legend when they differ
TABLE_COLUMNS = (
    "run", "status", "dataset", "arch", "regulariser", "λ", "method", "target", "steps", "seed",
    "test acc", "PGD ε", "PGD acc", "Square acc", "‖J‖_F", "time (s)", "device",
)


class RunNotFound(LookupError):
    """The run a visitor asked for is not in their session; the message says so plainly."""


def new_session() -> Session:
    return {"runs": [], "next_id": 1, "folder": ""}


def reserve_run(session: Session | None) -> tuple[Session, int]:
    """A session with an id taken for a new run and its download folder made, and that id."""
    session = session or new_session()
    # The server's pid in the name: a restarted server removes the folders of servers that are gone.
    folder = session["folder"] or tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
    run_id = session["next_id"]
    return {**session, "next_id": run_id + 1, "folder": folder}, run_id


def with_run(session: Session, run: dict[str, Any], max_runs: int) -> Session:
    """The session with `run` added, or replacing the run with its id; the oldest runs beyond
    `max_runs` are dropped (with their weights) so a long session stays small. A running run is
    kept as stopped: that is what it is if its stream ends before its next update."""
    run = {**run, "record": kept(run["record"])}
    runs = [r for r in session["runs"] if r["id"] != run["id"]] + [run]
    runs.sort(key=lambda r: r["id"])
    dropped = session.get("dropped", 0) + max(0, len(runs) - max_runs)
    return {**session, "runs": runs[-max_runs:], **({"dropped": dropped} if dropped else {})}


def table_label(session: Session | None) -> str:
    """The Runs table's title, with a note when older runs were dropped to keep the session small."""
    dropped, kept_runs = (session or {}).get("dropped", 0), len((session or {}).get("runs", []))
    if not dropped:
        return TABLE_LABEL
    return (f"{TABLE_LABEL}: the latest {kept_runs} are kept, {dropped} older run(s) were dropped, "
            "oldest first")


def merged(*sessions_: Session | None) -> Session:
    """One session holding every run of the given copies (a run in several: the later copy's),
    the highest next id and the first folder: what two events of one browser session hold together."""
    runs: dict[int, dict[str, Any]] = {}
    next_id, folder, dropped = 1, "", 0
    for session in sessions_:
        if not session:
            continue
        runs.update({r["id"]: r for r in session["runs"]})
        next_id, folder = max(next_id, session["next_id"]), folder or session["folder"]
        dropped = max(dropped, session.get("dropped", 0))
    return {**new_session(), "runs": [runs[k] for k in sorted(runs)], "next_id": next_id, "folder": folder,
            **({"dropped": dropped} if dropped else {})}


@dataclass
class LiveSessions:
    """The latest session of each browser session, one registry per app.

    gradio hands each event its own copy of the session's state, so two events of one browser
    session running at once (JP_CONCURRENCY > 1, or a sweep beside a Train) would both take run
    #1 and the one that finished last would drop the other's run. Events that add runs go through
    here instead: ids come from the merged session, and every update is merged with what the other
    events added. Sessions not seen for `ttl` seconds are forgotten (gr.State keeps its own copy).
    """

    ttl: float
    max_runs: int
    # Called with (browser session, session) after every run added or updated, outside the lock:
    # the visitor store (demo.app.visitors) keeps each finished run at once, not when the event
    # ends, so a reload in the middle of a sweep keeps the runs it finished.
    on_update: Callable[[str, Session], None] | None = None
    _latest: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, visitor: str, session: Session | None) -> tuple[Session, int]:
        """(the merged session with an id taken, that id)."""
        with self._lock:
            session, run_id = reserve_run(merged(self._get(visitor), session))
            self._put(visitor, session)
        return session, run_id

    def with_run(self, visitor: str, session: Session | None, run: dict[str, Any]) -> Session:
        """The merged session with `run` added or updated (sessions.with_run), kept as the latest."""
        with self._lock:
            session = with_run(merged(session, self._get(visitor)), run, self.max_runs)
            self._put(visitor, session)
        if self.on_update is not None and visitor:
            self.on_update(visitor, session)
        return session

    def _get(self, visitor: str) -> Session | None:
        entry = self._latest.get(visitor) if visitor else None
        return None if entry is None or time.monotonic() - entry[0] > self.ttl else entry[1]

    def _put(self, visitor: str, session: Session) -> None:
        if not visitor:
            return
        self._latest[visitor] = (time.monotonic(), session)
        self._latest.move_to_end(visitor)
        while len(self._latest) > MAX_LIVE or (self._latest and time.monotonic()
                                                - next(iter(self._latest.values()))[0] > self.ttl):
            self._latest.popitem(last=False)


def find_run(session: Session | None, run_id: Any, *, need_weights: bool = False) -> dict[str, Any]:
    """The run with `run_id` ("3", 3 or "#3"); an empty id means the newest run (the newest
    with weights if `need_weights`: a run stopped before its first evaluation has none)."""
    runs = (session or new_session())["runs"]
    if not runs:
        raise RunNotFound("There are no runs in this session yet: press Train first.")
    text = "" if run_id is None else str(run_id).strip().lstrip("#")
    if not text:
        candidates = [run for run in runs if run["weights"]] if need_weights else runs
        return (candidates or runs)[-1]
    for run in runs:
        if str(run["id"]) == text:
            return run
    known = ", ".join(f"#{r['id']}" for r in runs)
    raise RunNotFound(f"There is no run #{text} in this session; its runs are {known}.")


def short_label(run: dict[str, Any]) -> str:
    """For legends: the run's id, λ and estimator."""
    cfg = run["record"]["config"]
    return f"#{run['id']} λ={cfg['penalty']:g} {cfg['method']}"


def legend_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Legend labels for runs drawn together: each run's id, λ and estimator, plus every setting
    that differs between them (dataset, architecture, regulariser, target, seed), so no two read alike."""
    differing = [key for key in LEGEND_FIELDS if len({str(r["record"]["config"].get(key)) for r in runs}) > 1]
    labels = []
    for run in runs:
        cfg = run["record"]["config"]
        extra = [f"seed {cfg['seed']}" if key == "seed" else str(cfg.get(key)) for key in differing]
        labels.append(" ".join([short_label(run), *extra]))
    return labels


def label(run: dict[str, Any]) -> str:
    cfg = run["record"]["config"]
    return (
        f"#{run['id']} λ={cfg['penalty']:g} {cfg['method']} {cfg['arch']}/{cfg['dataset']} "
        f"seed {cfg['seed']} ({run['record']['status']})"
    )


def choices(session: Session | None) -> list[tuple[str, str]]:
    """(label, value) pairs for the run selectors, newest first; values are run ids as text."""
    runs = (session or new_session())["runs"]
    return [(label(run), str(run["id"])) for run in reversed(runs)]


def table(session: Session | None) -> pd.DataFrame:
    """One row per run: configuration summary (the regulariser and its strength), status, test
    accuracy, robust accuracy under PGD and Square at the ε where an unregularised model of that
    kind of data is not already robust (demo.engine.sweep.DEFAULT_EPSILON), ‖J‖_F, time. Accuracies
    and the time read as the status line and the sweep's table show them (3 decimals; the whole run
    in the app, attacks included, where the engine's `elapsed` counts training only)."""
    rows = []
    for run in (session or new_session())["runs"]:
        record, cfg = run["record"], run["record"]["config"]
        final = record.get("final", {})
        epsilon = sweeps.DEFAULT_EPSILON["points" if cfg["dataset"] in data.POINT_SETS else "image"]
        measured = bool(record.get("robustness"))
        rows.append(
            [
                run["id"], record["status"], cfg["dataset"], cfg["arch"],
                "baseline" if cfg["penalty"] == 0 else cfg.get("regularizer", "jacobian"),
                cfg["penalty"], cfg["method"], cfg["target"], final.get("steps", 0), cfg["seed"],
                _rounded(final.get("test_accuracy"), 3), epsilon if measured else None,
                _rounded(sweeps.at_epsilon(record, "pgd", epsilon), 3) if measured else None,
                _rounded(sweeps.at_epsilon(record, "square", epsilon), 3) if measured else None,
                _rounded(final.get("jacobian_norm"), 4), _rounded(final.get("run_seconds", final.get("elapsed")), 1),
                record.get("device", ""),
            ]
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def write_files(session: Session, run: dict[str, Any]) -> tuple[str, str | None]:
    """Write the run's record (the CLI's JSON schema) and its weights (safetensors) into the
    session's folder; returns their paths (weights None when the run has none yet)."""
    from safetensors.torch import save_file

    folder = Path(session["folder"])  # made by reserve_run before the session had any run
    folder.mkdir(exist_ok=True)  # in case a temp cleaner removed it
    json_path = folder / f"run-{int(run['id'])}.json"
    json_path.write_text(to_json(run["record"], indent=1))
    if not run["weights"]:
        return str(json_path), None
    weights_path = folder / f"run-{int(run['id'])}.safetensors"
    save_file({k: v.contiguous() for k, v in run["weights"].items()}, str(weights_path))
    return str(json_path), str(weights_path)


def delete_files(session: Session | None) -> None:
    """gr.State's delete_callback: remove the session's download folder, and only that, with the
    copies gradio made of its files in its cache to serve them (a folder named by the hash of
    each file's bytes: demo.app.server gives gradio's cache a folder of this server's own)."""
    folder = Path((session or {}).get("folder") or "")
    if not (folder.name.startswith(FOLDER_PREFIX) and folder.parent == Path(tempfile.gettempdir())):
        return
    copies = Path(_gradio_cache())
    for path in folder.glob("run-*"):
        copy = copies / _gradio_hash(path)
        if copy.parent == copies and copy.name:
            shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def _gradio_cache() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def _gradio_hash(path: Path) -> str:
    """The name of gradio's cache folder for a copy of `path` (gradio.processing_utils)."""
    from gradio.processing_utils import hash_file

    try:
        return hash_file(path)
    except OSError:
        return ""


def _rounded(value: Any, digits: int) -> float | None:
    if isinstance(value, (int, float)) and value == value:  # NaN != NaN: a run never evaluated
        return round(float(value), digits)
    return None
