"""A bounded load test of the app on loopback: N clients x M training runs through gradio_client.

    python benchmarks/load_test.py                         # 8 clients x 3 runs of 100 steps
    python benchmarks/load_test.py --clients 3 --runs 2    # the size tests/app/test_load.py runs
    python benchmarks/load_test.py --rounds 6              # a soak: 6 rounds of 8 clients x 3 runs,
                                                           # the server's memory after each round

The app is launched for real (demo.app.ui.build_demo + demo.app.ui.launch) in a child process on
127.0.0.1 and a free port, so its memory is measured alone; the clients are threads here, each
with its own session, training one run after another. Nothing leaves the machine, the number of
runs is fixed and every wait has a deadline, so the test stops by itself.

Measured: completed runs and errors; time to first update (submit -> the first streamed output:
queue wait plus the run's start) and run time, p50/p95; the server's RSS (after gc.collect() in
the server) before the load (after one warm-up run whose session has expired), its peak, right
after the load (sessions still alive) and after every session's time to live has passed and the
clients have left.

The clients stay connected, idle, until their sessions expire, and leave then: gradio keeps the
state of a session whose connection closed for one hour (SessionState.STATE_TTL_WHEN_CLOSED),
whatever gr.State's time_to_live says, so sessions that left at once would be measured an hour
later. The time to live (--session-ttl) must exceed a run's wait in the queue, or a client's
session expires between its runs (harmless here: its next run starts a fresh session).

Writes benchmarks/results/load_test.{json,md} with the machine and versions (--out changes it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
START_TIMEOUT_S = 120  # importing torch and gradio on a busy 2-core machine
RUN_TIMEOUT_S = 300  # one run, queue wait included
EXPIRY_TIMEOUT_S = 60  # beyond the sessions' time to live
POLL_S = 0.02  # how often a client looks for its first update
SAMPLE_S = 0.2  # how often the server's RSS is sampled during the load
MIB = 2**20


# ---------------------------------------------------------------------------------------------
# The server (child process): the app plus a line protocol on stdin/stdout for measurements


def _rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc (Linux only)")


def _trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS shows live memory, not free lists."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def serve(port: int, session_ttl: float, concurrency: int, queue_size: int) -> None:
    """Launch the app and answer one JSON line per command: `measure` or `quit`."""
    from demo.app.limits import Limits
    from demo.app.ui import build_demo, launch

    space = Limits.from_env()
    space = Limits(**{**asdict(space), "session_ttl": session_ttl, "concurrency": concurrency,
                      "queue_size": queue_size})
    demo = build_demo(space)
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    print(json.dumps({"ready": port, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "measure":
            gc.collect()
            collected = _rss_bytes()
            _trim()
            shells = list(demo.state_holder.session_data.values())
            states = [value for shell in shells for value in list(shell.state_data.values())]
            print(json.dumps({
                "rss": collected,
                "rss_trimmed": _rss_bytes(),
                "sessions": len(shells),  # gradio's per-session records (config copies)
                # sessions still holding runs (a state read after it expired comes back empty)
                "live_states": sum(bool(isinstance(v, dict) and v.get("runs")) for v in states),
                "empty_states": sum(not (isinstance(v, dict) and v.get("runs")) for v in states),
                "untimed_states": sum(len(set(shell.state_data) - set(shell._state_ttl)) for shell in shells),
            }), flush=True)
        elif line.strip() == "quit":
            break
    demo.close()


class Server:
    """The child process running `serve`; `measure()` asks it for its memory."""

    def __init__(self, session_ttl: float, concurrency: int, queue_size: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "serve", "--port", str(self.port), "--session-ttl", str(session_ttl),
             "--concurrency", str(concurrency), "--queue-size", str(queue_size)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.pid = self.process.pid
        self._read(START_TIMEOUT_S)  # {"ready": port}

    def _read(self, timeout: float) -> dict:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"the app did not answer within {timeout:.0f} s (exit code {self.process.poll()})")
        return json.loads(result[0])

    def measure(self) -> dict:
        self.process.stdin.write("measure\n")
        self.process.stdin.flush()
        return self._read(60)

    def rss(self) -> int:
        return _rss_bytes(self.pid)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own child, by its handle
                self.process.wait(timeout=30)


@contextlib.contextmanager
def server(session_ttl: float, concurrency: int, queue_size: int) -> Iterator[Server]:
    running = Server(session_ttl, concurrency, queue_size)
    try:
        yield running
    finally:
        running.close()


# ---------------------------------------------------------------------------------------------
# The clients


@dataclass
class ClientResult:
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    first_update_s: list[float] = field(default_factory=list)
    run_s: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)  # its runs are over


def one_client(url: str, index: int, runs: int, steps: int, robustness: bool, result: ClientResult,
               leave: threading.Event) -> None:
    """One visitor: a session that trains `runs` runs, one after another, stays until `leave`."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # noqa: BLE001 - every failure is a measured error, not a crash
        result.errors.append(f"client {index}: could not connect: {exc}")
        result.done.set()
        return
    try:
        for run in range(runs):
            submitted = time.perf_counter()
            job = client.submit(steps=steps, seed=index * runs + run, penalty=0.01, robustness=robustness,
                                api_name="/train")
            deadline = submitted + RUN_TIMEOUT_S
            while not job.outputs() and not job.done() and time.perf_counter() < deadline:
                time.sleep(POLL_S)
            first = time.perf_counter() - submitted
            try:
                status, _, _ = job.result(timeout=max(1.0, deadline - time.perf_counter()))
            except Exception as exc:  # noqa: BLE001
                result.errors.append(f"client {index} run {run}: {type(exc).__name__}: {exc}"[:300])
                continue
            if f"Finished {steps} steps" not in status:
                result.errors.append(f"client {index} run {run}: ended with {status[:200]!r}")
                continue
            result.completed += 1
            result.first_update_s.append(first)
            result.run_s.append(time.perf_counter() - submitted)
    finally:
        result.done.set()
        leave.wait(EXPIRY_TIMEOUT_S + RUN_TIMEOUT_S)
        client.close()


def visit(url: str, clients: int, runs: int, steps: int, robustness: bool, app: Server, session_ttl: float,
          sampler: Sampler | None = None) -> tuple[list[ClientResult], dict, dict, float, int]:
    """`clients` visitors at once; returns their results, the server measured right after their
    runs and after their sessions expired and they left, the wall time and clients left hanging."""
    results = [ClientResult() for _ in range(clients)]
    leave = threading.Event()
    threads = [threading.Thread(target=one_client, args=(url, i, runs, steps, robustness, results[i], leave))
               for i in range(clients)]
    started = time.perf_counter()
    with sampler or contextlib.nullcontext():
        for thread in threads:
            thread.start()
        for result in results:
            result.done.wait(runs * RUN_TIMEOUT_S + 60)
    wall = time.perf_counter() - started
    loaded = app.measure()
    wait_for_expiry(app, session_ttl)
    leave.set()
    for thread in threads:
        thread.join(60)
    return results, loaded, app.measure(), wall, sum(thread.is_alive() for thread in threads)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Sampler:
    """The server's RSS every SAMPLE_S seconds in a thread, for the peak under load."""

    def __init__(self, app: Server) -> None:
        self.app, self.peak, self._stop = app, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, self.app.rss())
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_expiry(app: Server, session_ttl: float) -> dict:
    """Wait until the server holds no session's runs any more (time to live passed), then measure."""
    deadline = time.monotonic() + session_ttl + EXPIRY_TIMEOUT_S
    time.sleep(session_ttl)
    while True:
        measured = app.measure()
        if measured["live_states"] == 0 or time.monotonic() > deadline:
            return measured
        time.sleep(0.5)


def load_test(clients: int, runs: int, steps: int, *, robustness: bool = False, session_ttl: float = 10.0,
              concurrency: int = 1, queue_size: int | None = None) -> dict:
    """Launch the app, warm it up, run the load, measure; returns the results as a dict."""
    queue_size = queue_size or max(20, clients + 1)
    with server(session_ttl, concurrency, queue_size) as app:
        # Warm-up: lazy imports, the dataset, torch's kernels and allocator pools; its session
        # expires before the baseline so that both ends are measured with no session alive.
        [warm], _, before, _, _ = visit(app.url, 1, 1, steps, robustness, app, session_ttl)
        if warm.errors:
            raise RuntimeError(f"the warm-up run failed: {warm.errors}")
        sampler = Sampler(app)
        results, loaded, after, wall, unfinished = visit(app.url, clients, runs, steps, robustness, app,
                                                         session_ttl, sampler)

    first = [t for r in results for t in r.first_update_s]
    run_times = [t for r in results for t in r.run_s]
    completed = sum(r.completed for r in results)
    return {
        "parameters": {"clients": clients, "runs_per_client": runs, "steps": steps, "robustness": robustness,
                       "session_ttl_s": session_ttl, "concurrency": concurrency, "queue_size": queue_size,
                       "run": f"digits/mlp, penalty 0.01, projection, batch 64, {steps} steps"},
        "completed": completed,
        "expected": clients * runs,
        "errors": [e for r in results for e in r.errors],
        "unfinished_clients": unfinished,
        "wall_s": wall,
        "runs_per_s": completed / wall if wall > 0 else 0.0,
        "first_update_s": {"p50": percentile(first, 50), "p95": percentile(first, 95), "max": max(first, default=0)},
        "run_s": {"p50": percentile(run_times, 50), "p95": percentile(run_times, 95), "max": max(run_times, default=0)},
        "memory_mib": {
            "before": before["rss"] / MIB,
            "before_trimmed": before["rss_trimmed"] / MIB,
            "peak": sampler.peak / MIB,
            "loaded": loaded["rss"] / MIB,
            "after": after["rss"] / MIB,
            "after_trimmed": after["rss_trimmed"] / MIB,
            "growth": (after["rss"] - before["rss"]) / MIB,
            "growth_trimmed": (after["rss_trimmed"] - before["rss_trimmed"]) / MIB,
        },
        "sessions": {"live_before": before["live_states"], "live_loaded": loaded["live_states"],
                     "live_after": after["live_states"], "records_after": after["sessions"],
                     "empty_after": after["empty_states"], "untimed_after": after["untimed_states"]},
    }


def soak(clients: int, rounds: int, runs: int, steps: int, *, session_ttl: float = 5.0) -> dict:
    """`rounds` times: `clients` visitors train `runs` runs each, their sessions expire, they leave;
    the server's memory (gc) after every round. A bounded steady state: later rounds end where the
    first ended, give or take the allocator's noise, instead of climbing."""
    queue_size = max(20, clients + 1)
    rows = []
    with server(session_ttl, 1, queue_size) as app:
        [warm], _, start, _, _ = visit(app.url, 1, 1, steps, False, app, session_ttl)
        if warm.errors:
            raise RuntimeError(f"the warm-up run failed: {warm.errors}")
        for index in range(1, rounds + 1):
            results, loaded, after, wall, unfinished = visit(app.url, clients, runs, steps, False, app, session_ttl)
            rows.append({
                "round": index, "completed": sum(r.completed for r in results), "expected": clients * runs,
                "errors": [e for r in results for e in r.errors], "unfinished_clients": unfinished,
                "wall_s": wall, "rss_loaded_mib": loaded["rss"] / MIB, "rss_after_mib": after["rss"] / MIB,
                "rss_after_trimmed_mib": after["rss_trimmed"] / MIB, "live_after": after["live_states"],
                "sessions_recorded": after["sessions"],
            })
    after = [row["rss_after_mib"] for row in rows]
    return {
        "parameters": {"clients": clients, "rounds": rounds, "runs_per_client": runs, "steps": steps,
                       "session_ttl_s": session_ttl,
                       "run": f"digits/mlp, penalty 0.01, projection, batch 64, {steps} steps"},
        "start_mib": start["rss"] / MIB,
        "rounds": rows,
        "growth_first_to_last_mib": after[-1] - after[0],
        "growth_start_to_last_mib": after[-1] - start["rss"] / MIB,
        "largest_round_step_mib": max((b - a for a, b in zip(after, after[1:], strict=False)), default=0.0),
    }


def soak_markdown(result: dict) -> str:
    p, env = result["parameters"], result["environment"]
    lines = [
        f"Soak: {p['rounds']} rounds of {p['clients']} clients x {p['runs_per_client']} runs on 127.0.0.1 "
        f"({p['run']}, session time to live {p['session_ttl_s']:g} s); after each round the sessions expire "
        "and the clients leave, then the server's RSS is read after gc.",
        f"({env['machine']}; Python {env['python']}, torch {env['torch']}, gradio {env['gradio']}, {env['date']})",
        "",
        f"Server RSS after the warm-up: {result['start_mib']:.1f} MiB.",
        "",
        "| round | runs completed | errors | wall (s) | RSS loaded (MiB) | RSS after expiry (MiB) | "
        "after malloc_trim (MiB) | sessions holding runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rounds"]:
        lines.append(f"| {r['round']} | {r['completed']} of {r['expected']} | {len(r['errors'])} | {r['wall_s']:.1f} | "
                     f"{r['rss_loaded_mib']:.1f} | {r['rss_after_mib']:.1f} | {r['rss_after_trimmed_mib']:.1f} | "
                     f"{r['live_after']} |")
    lines += [
        "",
        f"Growth from the first round's end to the last: {result['growth_first_to_last_mib']:+.1f} MiB; "
        f"largest step between rounds: {result['largest_round_step_mib']:+.1f} MiB; from the warm-up to the "
        f"last round: {result['growth_start_to_last_mib']:+.1f} MiB.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Report


def environment() -> dict:
    import gradio
    import gradio_client
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": date.today().isoformat(),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": os.environ.get("JP_TORCH_THREADS", "1 (app default)"),
        "gradio": gradio.__version__,
        "gradio_client": gradio_client.__version__,
    }


def markdown(result: dict) -> str:
    p, env, mem, s = result["parameters"], result["environment"], result["memory_mib"], result["sessions"]
    first, runs = result["first_update_s"], result["run_s"]
    return "\n".join([
        f"Load test: {p['clients']} clients x {p['runs_per_client']} runs on 127.0.0.1 ({p['run']}, "
        f"concurrency {p['concurrency']}, queue {p['queue_size']}, session time to live {p['session_ttl_s']:g} s)",
        f"({env['machine']}, load average {env['load_average'][0]:.1f} at the end; Python {env['python']}, "
        f"torch {env['torch']}, gradio {env['gradio']}, gradio_client {env['gradio_client']}, {env['date']})",
        "",
        "| | value |",
        "|---|---:|",
        f"| runs completed | {result['completed']} of {result['expected']} |",
        f"| errors | {len(result['errors'])} |",
        f"| wall time | {result['wall_s']:.1f} s ({result['runs_per_s']:.2f} runs/s) |",
        f"| time to first update p50 / p95 / max | {first['p50']:.2f} / {first['p95']:.2f} / {first['max']:.2f} s |",
        f"| run time (submit to result) p50 / p95 / max | {runs['p50']:.2f} / {runs['p95']:.2f} / "
        f"{runs['max']:.2f} s |",
        f"| server RSS before (after warm-up, gc) | {mem['before']:.1f} MiB |",
        f"| server RSS peak under load | {mem['peak']:.1f} MiB |",
        f"| server RSS right after (sessions alive, gc) | {mem['loaded']:.1f} MiB |",
        f"| server RSS after the sessions expired and the clients left (gc) | {mem['after']:.1f} MiB |",
        f"| growth before -> after (gc) | {mem['growth']:+.1f} MiB |",
        f"| growth before -> after (gc + malloc_trim) | {mem['growth_trimmed']:+.1f} MiB |",
        f"| sessions holding runs: before / loaded / after | {s['live_before']} / {s['live_loaded']} / "
        f"{s['live_after']} |",
        "",
        "Time to first update is queue wait plus the run's start: with concurrency 1 the runs train one at a "
        "time, so the later clients wait for the earlier runs. Memory is the server process's alone (it runs "
        "in a child process); the clients are threads of the measuring process. The clients stay connected "
        "until their sessions expire, then leave: gradio keeps a closed session's state for a fixed hour.",
        "",
    ] + ([f"Errors: {'; '.join(result['errors'])}", ""] if result["errors"] else []))


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("serve", help="(internal) run the app for the load test")
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--session-ttl", type=float, required=True)
    child.add_argument("--concurrency", type=int, required=True)
    child.add_argument("--queue-size", type=int, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="runs per client, one after another")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--robustness", action="store_true", help="also measure robustness at each run's end")
    parser.add_argument("--session-ttl", type=float, default=10.0, help="seconds a session is kept (JP_SESSION_TTL)")
    parser.add_argument("--concurrency", type=int, default=1, help="runs training at once (JP_CONCURRENCY)")
    parser.add_argument("--rounds", type=int, default=0, help="a soak: this many rounds, memory after each")
    parser.add_argument("--out", type=Path, default=None, help="writes OUT.json and OUT.md "
                        "(default: benchmarks/results/load_test, or soak with --rounds)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.session_ttl, args.concurrency, args.queue_size)
        return 0
    if args.rounds:
        if not (1 <= args.rounds <= 50 and 1 <= args.clients <= 64 and 1 <= args.runs <= 20):
            parser.error("keep it bounded: 1-50 rounds, 1-64 clients, 1-20 runs each")
        result = soak(args.clients, args.rounds, args.runs, args.steps, session_ttl=args.session_ttl)
        result["environment"] = environment()
        out = args.out or RESULTS / "soak"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(soak_markdown(result))
        print(soak_markdown(result))
        return 0 if all(r["completed"] == r["expected"] and not r["errors"] for r in result["rounds"]) else 1
    if not (1 <= args.clients <= 64 and 1 <= args.runs <= 20 and 1 <= args.steps <= 5000):
        parser.error("keep it bounded: 1-64 clients, 1-20 runs each, 1-5000 steps")
    result = load_test(args.clients, args.runs, args.steps, robustness=args.robustness,
                       session_ttl=args.session_ttl, concurrency=args.concurrency)
    result["environment"] = environment()
    write(result, args.out or RESULTS / "load_test")
    print(markdown(result))
    return 0 if result["completed"] == result["expected"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
