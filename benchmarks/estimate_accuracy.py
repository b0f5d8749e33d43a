"""How close the estimate under Steps is to the runs it describes, when the machine's load changes.

For each load (0, then LOAD busy processes, default 2 on this 2-core machine) and each kind of
short run: a fresh probe on the machine as it is, then the load starts (as when another visitor or
process gets busy a minute after the estimate), then two runs through the app's own Train handler
(status line, curves and all). The first run is estimated by the probe alone; the second by the
probe and the first run (`Paces.observe`, what the page shows after a run). Each row says the
estimated range, the run's time in the app (`final.run_seconds`) and their ratio to the range's
high end.

    .venv/bin/python benchmarks/estimate_accuracy.py             # ~4 min here
    .venv/bin/python benchmarks/estimate_accuracy.py --load 0 3

Writes results/estimate_accuracy_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.report import RESULTS_DIR, environment, load_average, write_report  # noqa: E402
from demo.app import controls as controls_view  # noqa: E402
from demo.app.limits import Limits  # noqa: E402
from demo.app.session import LiveSessions  # noqa: E402
from demo.app.streaming import StopRequests  # noqa: E402
from demo.app.views.training import Handlers  # noqa: E402
from demo.budget.memory import Estimator  # noqa: E402
from demo.budget.pace import Paces  # noqa: E402

KINDS = (  # short runs, where a fixed cost or a change of load shows most
    {"dataset": "digits", "arch": "mlp", "steps": 300, "robustness": False},
    {"dataset": "digits", "arch": "mlp", "steps": 300, "robustness": True},
    {"dataset": "digits", "arch": "mlp", "steps": 300, "target": "features", "robustness": False},
    {"dataset": "digits", "arch": "lenet", "steps": 200, "robustness": True},
    {"dataset": "moons", "arch": "mlp", "steps": 1500, "robustness": True},
    {"dataset": "digits", "arch": "mlp", "steps": 1500, "robustness": True},
)
BASE = {"penalty": 0.01, "method": "projection", "num_projections": 1, "target": "logits", "batch_size": 32,
        "lr": 0.001, "seed": 0, "device": "cpu", "num_classes": 100}


@contextlib.contextmanager
def busy(processes: int):
    """`processes` Python loops that keep a core each busy, for the duration of the block."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5 if processes else 0.0)
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def run(handlers: Handlers, values: dict) -> float:
    """One run through the Train handler; its time in the app (run_seconds)."""
    *_, last = handlers.train(None, values, request=None)
    return last[0]["runs"][-1]["record"]["final"]["run_seconds"]


def measure(load: int) -> list[dict]:
    space = Limits(max_seconds=3600.0)
    handlers = Handlers(space, Estimator(), StopRequests(), Paces(), LiveSessions(space.session_ttl, space.max_runs))
    rows = []
    for kind in KINDS:
        values = {name: {**BASE, **kind}[name] for name in controls_view.CONFIG_FIELDS}
        cfg = controls_view.config_from(values, space)
        handlers.paces.get(cfg)  # the probe, on the machine as it is
        with busy(load):
            for attempt in ("probe only", "probe and the last run"):
                low, high = handlers.paces.cached(cfg).seconds_range(cfg.steps, cfg.evaluations())
                seconds = run(handlers, values)
                rows.append({"kind": " · ".join(f"{v}" for v in kind.values()), "load": load, "estimate": attempt,
                             "low_s": round(low, 3), "high_s": round(high, 3), "run_s": round(seconds, 3),
                             "ratio_to_high": round(seconds / high, 3), "within": low * 0.9 <= seconds <= high * 1.1})
                print(rows[-1], flush=True)
    return rows


def table(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# The estimate under Steps against the runs it describes",
        "",
        f"{env['device_name']}, torch {env['torch']}, {env['torch_threads']} torch thread(s), {env['date']}, "
        f"load average {env['load_average_start']} at the start, {report['load_average_end']} at the end.",
        "",
        "Each kind is probed on the machine as it is; then `load` busy processes start, and two runs go "
        "through the app's Train handler. `within`: the run took between 0.9 x the range's low end and "
        "1.1 x its high end.",
        "",
        "| kind | load | estimated from | range (s) | run (s) | run / high | within |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['kind']} | {r['load']} | {r['estimate']} | {r['low_s']:.2f}-{r['high_s']:.2f} | "
                     f"{r['run_s']:.2f} | {r['ratio_to_high']:.2f} | {'yes' if r['within'] else 'no'} |")
    for attempt in ("probe only", "probe and the last run"):
        for load in sorted({r["load"] for r in report["rows"]}):
            chosen = [r for r in report["rows"] if r["estimate"] == attempt and r["load"] == load]
            worst = max(r["ratio_to_high"] for r in chosen)
            inside = sum(r["within"] for r in chosen)
            lines.append(f"\n- {attempt}, load {load}: {inside} of {len(chosen)} within; "
                         f"the slowest run took {worst:.2f} x the range's high end.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, nargs="+", default=[0, 2], help="busy processes during the runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app's default: 1)")
    parser.add_argument("--name", default="estimate_accuracy_cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"environment": environment("cpu"), "rows": []}
    for load in args.load:
        report["rows"] += measure(load)
    report["load_average_end"] = load_average()
    write_report(report, table(report), RESULTS_DIR / args.name, print)


if __name__ == "__main__":
    main()
