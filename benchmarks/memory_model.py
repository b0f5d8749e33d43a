"""The memory model of demo/budget/memory.py against measured peaks, over the settings space.

For each architecture x method x C x batch x probes in GRID: the model's estimate of one
forward + penalty + backward (from its probe, before the safety margin, without parameters and
optimizer state) and the peak actually measured on that step at full size (torch's allocator
events through the profiler on a CPU, max_memory_allocated on CUDA). The number that matters is
measured / (estimate x safety margin): above 1, a run the budget lets through could be larger than
the budget thought. Exact with C = 1000 and 2000 on 28x28 inputs goes by 784 forward-mode columns.
Those steps are measured differently on a CPU: the profiler records every allocation of 784
forward-mode passes and its own record outgrew the step (past 14 GB for a 4 GB step, which is what
ended an earlier run of this script), so each runs in a fresh process, and the measurement is how
far its resident memory grew during the step (the peak RSS, reset after set-up): glibc's heap
overhead included, so it errs high, never low.
Writes benchmarks/results/memory_model_<device>.json and .md; one row is printed as it is measured.

    .venv/bin/python benchmarks/memory_model.py             # CPU, about 15 minutes on 2 cores
    .venv/bin/python benchmarks/memory_model.py --quick     # a subset, about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from benchmarks.report import RESULTS_DIR, environment, write_report  # noqa: E402
from demo.budget import costs, memory  # noqa: E402
from demo.budget import timing as bench  # noqa: E402
from demo.engine.config import RunConfig  # noqa: E402
from demo.engine.data import input_shape  # noqa: E402
from jacobian_penalty import jacobian_penalty  # noqa: E402

DATASET = "synthetic"  # 1x28x28 inputs, C from 2 to 2000
# (method, projections, classes, batch): rows by reverse mode (C <= 784), columns by forward mode
# (C > 784), probes at 1 to 64, batches from 2 (where a fitted line fooled the old model) to 256.
GRID = [
    ("exact", 1, 100, 2), ("exact", 1, 100, 64), ("exact", 1, 1000, 2), ("exact", 1, 2000, 2), ("exact", 1, 2000, 4),
    ("projection", 1, 100, 256), ("projection", 4, 100, 2), ("projection", 16, 100, 32),
    ("projection", 64, 100, 32), ("projection", 64, 2000, 8),
    ("jvp", 1, 100, 256), ("jvp", 4, 100, 2), ("jvp", 16, 100, 32), ("jvp", 16, 2000, 32),
    ("fd", 1, 100, 256), ("fd", 16, 100, 32),
]
PROFILED_PRODUCTS = 1000  # above this many products a step's profiler record outgrows the machine (CPU)
RSS_FLOOR_MB = 256  # estimates below this are checked on the allocator's figure (see _row)
QUICK = {("exact", 1, 100, 2), ("exact", 1, 1000, 2), ("projection", 16, 100, 32), ("jvp", 16, 100, 32),
         ("fd", 16, 100, 32), ("projection", 1, 100, 256)}


def measured(cfg: RunConfig, classes: int, device: torch.device) -> float:
    """The peak of the run's own forward + penalty + backward at full size, in MB."""
    shape = input_shape(cfg.dataset)
    torch.manual_seed(0)
    model = models.build(cfg.arch, shape, classes).to(device)
    x = torch.rand(cfg.batch_size, *shape, device=device)
    y = torch.randint(classes, (cfg.batch_size,), device=device)
    params = list(model.parameters())

    def step() -> None:
        logits, term = jacobian_penalty(model, x, method=cfg.method, num_projections=cfg.num_projections)
        (F.cross_entropy(logits, y) + term).backward(inputs=params)

    return bench.peak_memory_mb(step, device, lambda: model.zero_grad(set_to_none=True)) or float("nan")


def measured_in_child(cfg: RunConfig, classes: int) -> float:
    """How far a fresh process's resident memory grows over one step of `cfg`, in MB."""
    case = json.dumps({"arch": cfg.arch, "method": cfg.method, "num_projections": cfg.num_projections,
                       "batch_size": cfg.batch_size, "classes": classes})
    done = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _child(case: dict) -> None:
    """Print how far this process's peak RSS grows over one step of `case`, in MB (run alone)."""
    cfg = RunConfig(dataset=DATASET, arch=case["arch"], method=case["method"],
                    num_projections=case["num_projections"], batch_size=case["batch_size"],
                    num_classes=case["classes"], robustness=False)
    shape = input_shape(cfg.dataset)
    torch.manual_seed(0)
    model = models.build(cfg.arch, shape, case["classes"])
    params = list(model.parameters())

    def step(batch: int, method: str) -> None:
        x = torch.rand(batch, *shape)
        y = torch.randint(case["classes"], (batch,))
        logits, term = jacobian_penalty(model, x, method=method, num_projections=cfg.num_projections)
        (F.cross_entropy(logits, y) + term).backward(inputs=params)
        model.zero_grad(set_to_none=True)

    # A small step of the same kind first: what loads once (kernels, forward-mode decompositions,
    # threads) is not the step's. Then the step itself, measured as the probe measures it.
    step(1, "jvp" if costs.products(cfg, case["classes"]).mode == "columns" else cfg.method)
    print(bench.resident_growth_mb(lambda: step(cfg.batch_size, cfg.method)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one case, measured in its own process
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", nargs="+", default=list(models.ARCHITECTURES))
    parser.add_argument("--quick", action="store_true", help="a subset of the grid")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--max-mb", type=float, default=8000.0,
                        help="cases estimated above this (with the margin) are listed, not measured")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out, measure the rest")
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    device = torch.device(args.device)
    bench.quiet_profiler()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    grid = [g for g in GRID if not args.quick or g in QUICK]
    # The exact cases by 784 columns are the slow ones (a forward-mode pass each): measured last.
    tasks = sorted(((arch, *g) for g in grid for arch in args.archs), key=lambda t: t[1] == "exact" and t[3] > 784)
    previous = args.out / f"memory_model_{device.type}.json"
    skipped: list[dict] = []
    if args.resume and previous.exists():
        kept = json.loads(previous.read_text())
        rows, skipped = kept["rows"], kept.get("not_measured", [])
    done = {(r["arch"], r["method"], r["num_projections"], r["classes"], r["batch_size"]) for r in rows + skipped}
    for arch, method, n, classes, batch in tasks:
        if (arch, method, n, classes, batch) in done:
            continue
        cfg = RunConfig(dataset=DATASET, arch=arch, method=method, num_projections=n, batch_size=batch,
                        num_classes=classes, robustness=False)
        case = {"arch": arch, "method": method, "num_projections": n, "classes": classes, "batch_size": batch}
        started = time.perf_counter()
        try:
            probe = memory.measure_probe(cfg, classes, device)
        except ValueError as refused:  # the library refuses it (jvp through layer norm): nothing to measure
            skipped.append({**case, "why": f"refused by the library: {str(refused).split(':')[0]}"})
            log(f"{case}: refused by the library")
            continue
        probe_s = time.perf_counter() - started
        # The step's own part, before the safety margin: what the model predicts of this step.
        estimate = (memory.estimate(cfg, probe, classes).peak_mb - probe.state_mb) / memory.SAFETY
        if estimate * memory.SAFETY > args.max_mb:
            skipped.append({**case, "estimate_mb": estimate,
                            "why": f"estimated above --max-mb {args.max_mb:.0f} MB: not measured on this machine"})
            log(f"{case}: estimated {estimate:.0f} MB, not measured")
            _write(rows, skipped, device, args.out, log)
            continue
        started = time.perf_counter()
        made = costs.products(cfg, classes)
        # The profiler's record of 784 forward-mode passes, or of 2000 rows at batch 4, outgrows the step
        # itself (past 14 GB; it ended earlier runs of this script): those are measured by RSS alone.
        by_rss_only = device.type == "cpu" and (made.mode == "columns" or made.count > PROFILED_PRODUCTS)
        allocator = None if by_rss_only else measured(cfg, classes, device)
        rss = measured_in_child(cfg, classes) if device.type == "cpu" else None
        rows.append(_row(arch, method, n, classes, batch, made, estimate, allocator, rss, probe_s,
                         time.perf_counter() - started))
        log(f"{arch} {method} n={n} C={classes} B={batch} ({made.count} {made.mode}): estimate {estimate:.1f} MB, "
            f"allocator {allocator}, RSS {rss}, checked ratio {rows[-1]['ratio']:.2f}")
        _write(rows, skipped, device, args.out, log)  # after every row: a run cut short keeps what it measured
    return 0


def _row(arch, method, n, classes, batch, made, estimate, allocator, rss, probe_s, step_s) -> dict:
    """One row: the checked measurement is the allocator's peak, and the RSS growth too where the
    step is large enough for RSS to resolve it (below RSS_FLOOR_MB, thread arenas and page
    granularity add a few MB that no budget of this size is about)."""
    checked = [m for m in (allocator,) if m is not None]
    if rss is not None and (allocator is None or estimate >= RSS_FLOOR_MB):
        checked.append(rss)
    actual = max(checked)
    return {"arch": arch, "method": method, "num_projections": n, "classes": classes, "batch_size": batch,
            "mode": made.mode, "products": made.count, "estimate_mb": estimate, "allocator_mb": allocator,
            "rss_mb": rss, "measured_mb": actual, "ratio": actual / estimate,
            "ratio_with_margin": actual / (estimate * memory.SAFETY), "probe_s": probe_s, "step_s": step_s}


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _write(rows: list[dict], skipped: list[dict], device: torch.device, out: Path, log) -> None:
    if not rows:
        return
    worst = max(rows, key=lambda r: r["ratio"])
    report = {"environment": environment(device), "rows": rows, "safety_margin": memory.SAFETY,
              "worst": {"ratio": worst["ratio"], "ratio_with_margin": worst["ratio_with_margin"],
                        "case": {k: worst[k] for k in ("arch", "method", "num_projections", "classes", "batch_size")}},
              "least": min(r["ratio"] for r in rows), "not_measured": skipped}
    env = report["environment"]
    lines = [f"# The memory model against measured peaks, on {device.type}", "",
             f"{env['device_name']}, torch {env['torch']}, {env['date']}, CUDA available: "
             f"{env['cuda_available']} (no GPU figures here); dataset {DATASET} (1x28x28). Estimate: "
             "demo.budget.memory's model of one forward + penalty + backward, before its safety margin of "
             f"{memory.SAFETY:g}x and without parameters and optimizer state; measured: the same step at full size. "
             "Measured two ways: torch's allocator events (the profiler; not for the 784-column steps, whose "
             "profiler record outgrows the step, nor above 1000 rows), and how far a fresh process's peak resident "
             "memory grows over "
             f"the step (RSS; what the kernel counts). ratio = the larger of the two (RSS only where the estimate is "
             f"{RSS_FLOOR_MB} MB or more) / estimate; with the margin it must stay <= 1.", "",
             "| arch | method | n | C | batch | products | estimate (MB) | allocator (MB) | RSS (MB) | ratio "
             "| with margin | probe (s) |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['method']} | {r['num_projections']} | {r['classes']} | {r['batch_size']} | "
                     f"{r['products']} {r['mode']} | {r['estimate_mb']:.1f} | {_mb(r['allocator_mb'])} | "
                     f"{_mb(r['rss_mb'])} | "
                     f"{r['ratio']:.2f} | {r['ratio_with_margin']:.2f} | {r['probe_s']:.2f} |")
    w = report["worst"]
    small = [r for r in rows if r["rss_mb"] is not None and r["estimate_mb"] < RSS_FLOOR_MB]
    excess = max((r["rss_mb"] - r["estimate_mb"] * memory.SAFETY for r in small), default=0.0)
    report["small_rss_excess_mb"] = excess
    lines += ["", f"Below {RSS_FLOOR_MB} MB the RSS growth exceeded the estimate with its margin by at most "
                  f"{max(excess, 0.0):.1f} MB.", ""]
    lines += [f"- not measured: {s['arch']}, {s['method']}, n = {s['num_projections']}, C = {s['classes']}, "
              f"batch {s['batch_size']}: {s['why']}" for s in skipped]
    lines += ["", f"Worst measured / estimate: {w['ratio']:.2f} ({w['case']}), {w['ratio_with_margin']:.2f} with the "
                  f"margin; least {report['least']:.2f} (the model errs high there).", ""]
    write_report(report, "\n".join(lines), out / f"memory_model_{device.type}", lambda *a: None)


if __name__ == "__main__":
    sys.exit(main())
