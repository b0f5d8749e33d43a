"""Training throughput (samples/s) as seen by each consumer of demo.engine.train.train(cfg).

The same short run is consumed by
  - bare:   a loop that takes every event and does nothing with it (the engine alone);
  - cli:    demo.cli.main.main(["train", ..., "--quiet"]) in this process (Recorder, summary);
  - ui:     the Gradio train handler (views.training.Handlers.train via controls.config_handler),
            iterated directly without a server: Recorder, session updates, status line, figures at most every
            HEAVY_INTERVAL_S seconds and gr.skip() in between;
  - ui+json: the same, plus what Gradio's server does to each heavy update before sending it
            (the figures serialised with plotly's to_json).
The UI rows also give the handler's own share of its time, measured inside the same run (the time
between the training stream's items): a steadier number than the difference of two runs.
Rounds are interleaved (bare, cli, ui, ui+json, then again in a rotated order); samples/s is
steps x batch / time from the first event to the last (wall time, or with --clock cpu the
process's CPU time), median over rounds, and overhead = 1 - samples/s / bare samples/s (median
of the per-round ratios).

The configuration is the one the UI would run (demo.app.controls.config_from: its report and
evaluation intervals), robustness off, so every consumer runs exactly the same training.

    .venv/bin/python benchmarks/train_throughput.py                 # digits/mlp and digits/lenet
    .venv/bin/python benchmarks/train_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root on the path

import torch  # noqa: E402

from benchmarks.report import environment, load_average, write_report  # noqa: E402
from demo.engine.config import RunConfig  # noqa: E402
from demo.engine.train import train  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
UI_GOAL = 0.10  # the UI may cost at most 10% of the training throughput
_END = object()


def bare(cfg: RunConfig) -> None:
    for _ in train(cfg):
        pass


def cli(cfg: RunConfig) -> None:
    from demo.cli.main import main

    argv = ["train", "--quiet", "--no-robustness" if not cfg.robustness else "--robustness"]
    for name, value in cfg.to_dict().items():
        if name != "robustness":
            argv += [f"--{name}", str(value)]
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    if status != 0:
        raise RuntimeError(f"the CLI exited with status {status}")


def _timed(stream: Callable[[RunConfig], Iterator[Any]], clock: Callable[[], float], spent: list[float]):
    """stream, adding to spent[0] the time spent producing its items (training, the Recorder)."""

    def timed(cfg: RunConfig, *args: Any) -> Iterator[Any]:
        items = stream(cfg, *args)
        while True:
            start = clock()
            item = next(items, _END)
            spent[0] += clock() - start
            if item is _END:
                return
            yield item

    return timed


def ui_handler(clock: Callable[[], float]) -> tuple[Callable[..., Any] | None, str]:
    """The UI's train handler as run(cfg, serialise) -> the share of its time spent outside
    training, or None and why it is not usable here."""
    try:
        from demo.app import controls, running
        from demo.app.limits import Limits
        from demo.app.session import LiveSessions
        from demo.app.streaming import StopRequests
        from demo.app.views import training
        from demo.budget.memory import Estimator
        from demo.budget.pace import Paces
    except ImportError as exc:  # the UI is optional: gradio missing, or not written yet
        return None, f"the UI's train handler cannot be imported ({exc})"
    space = Limits(max_seconds=3600.0)  # the throughput of long runs, never refused as too long
    live = LiveSessions(space.session_ttl, space.max_runs)
    handler = controls.config_handler(training.Handlers(space, Estimator(), StopRequests(), Paces(), live).train)

    def run(cfg: RunConfig, serialise: bool) -> float:
        params = inspect.signature(handler).parameters
        values = {name: value for name, value in cfg.to_dict().items() if name in params}
        spent = [0.0]
        start = clock()
        # The handler's own work is what it does between the training stream's items.
        with mock.patch.object(running, "run_stream", _timed(running.run_stream, clock, spent)):
            for update in handler(None, **values):
                if serialise:
                    for value in update:
                        if hasattr(value, "to_json"):  # a plotly figure: what gr.Plot sends
                            value.to_json()
        total = clock() - start
        return 1 - spent[0] / total

    return run, ""


def ui_config(cfg: RunConfig) -> RunConfig:
    """The configuration that the UI would run for these values (its report/eval intervals)."""
    try:
        from demo.app.controls import config_from
        from demo.app.limits import Limits
    except ImportError:
        return cfg
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("report_every", "eval_every", "time_budget")}
    return config_from(values, Limits())


def measure(cfg: RunConfig, rounds: int, clock: Callable[[], float], log: Callable[..., None]) -> dict[str, Any]:
    """Interleaved rounds of every consumer on one configuration; samples/s and overheads."""
    run_ui, why_not = ui_handler(clock)
    consumers: dict[str, Callable[[], Any]] = {"bare": lambda: bare(cfg), "cli": lambda: cli(cfg)}
    if run_ui is not None:
        consumers["ui"] = lambda: run_ui(cfg, False)
        consumers["ui+json"] = lambda: run_ui(cfg, True)
    else:
        log(f"  ui: not measured: {why_not}")
    for fn in consumers.values():  # warm-up: imports, first allocations
        fn()
    samples = cfg.steps * cfg.batch_size
    times: dict[str, list[float]] = {name: [] for name in consumers}
    shares: dict[str, list[float]] = {name: [] for name in consumers}
    names = list(consumers)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = clock()
            share = consumers[name]()
            times[name].append(clock() - start)
            if share is not None:
                shares[name].append(share)
    results = {}
    for name, seconds in times.items():
        per_round = [b / t for b, t in zip(times["bare"], seconds, strict=True)]  # bare time / this time
        results[name] = {
            "samples_per_s": samples / statistics.median(seconds),
            "seconds": [round(t, 4) for t in seconds],
            "overhead": 1 - statistics.median(per_round),
            "in_run_share": statistics.median(shares[name]) if shares[name] else None,
        }
        share = results[name]["in_run_share"]
        log(f"  {name:<8} {results[name]['samples_per_s']:10,.0f} samples/s  overhead {results[name]['overhead']:+.1%}"
            + (f"  handler's own share {share:.1%}" if share is not None else ""))
    return {"config": cfg.to_dict(), "samples": samples, "consumers": results, "ui_unavailable": why_not or None}


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# Training throughput by consumer on {env['device']} ({env['device_name']})",
        "",
        f"torch {env['torch']}, Python {env['python']}, {env['cpu_count']} CPUs, {env['torch_threads']} torch threads, "
        f"CUDA available: {env['cuda_available']}, {env['date']}, load average {env.get('load_average_start')} -> "
        f"{env.get('load_average_end')}. {report['rounds']} interleaved rounds, median, {report['clock']} clock.",
        "",
        "overhead = 1 - samples/s / bare samples/s (median of per-round ratios); goal for the UI: at most "
        f"{UI_GOAL:.0%}.",
        "",
        "in-run share: the part of the UI handler's time spent outside the training stream (status, "
        "session, figures), timed within the same run, so other processes hardly move it.",
        "",
        "| dataset | arch | method | steps x batch | consumer | samples/s | overhead | in-run share |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for run in report["runs"]:
        cfg = run["config"]
        for name, r in run["consumers"].items():
            lines.append(f"| {cfg['dataset']} | {cfg['arch']} | {cfg['method']} | {cfg['steps']} x {cfg['batch_size']} "
                         f"| {name} | {r['samples_per_s']:,.0f} | {r['overhead']:+.1%} | "
                         f"{'-' if r['in_run_share'] is None else format(r['in_run_share'], '.1%')} |")
        if run["ui_unavailable"]:
            lines.append(f"\nUI not measured: {run['ui_unavailable']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["digits:mlp:1500", "digits:lenet:500"],
                        help="DATASET:ARCH:STEPS of each run")
    parser.add_argument("--method", default="projection")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: process CPU time (steadier on a busy machine with --threads 1)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="train_throughput", help="file stem; the device kind is appended")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace(
        "auto", "cpu"))
    env = environment(device)
    runs = []
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for run in args.runs:
        dataset, arch, steps = run.split(":")
        cfg = ui_config(RunConfig(dataset=dataset, arch=arch, method=args.method, steps=int(steps),
                                  batch_size=args.batch_size, device=args.device, robustness=False))
        log(f"{dataset}/{arch}: {cfg.steps} steps of {cfg.batch_size}, report every {cfg.report_every}, "
            f"evaluate every {cfg.eval_every}")
        runs.append(measure(cfg, args.rounds, clock, log))
    env["load_average_end"] = load_average()
    report = {"environment": env, "rounds": args.rounds, "clock": args.clock, "ui_goal": UI_GOAL, "runs": runs}
    write_report(report, markdown(report), args.out / f"{args.name}_{device.type}", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
