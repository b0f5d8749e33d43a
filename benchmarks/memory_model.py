"""The memory model of demo/budget/memory.py against measured peaks, over the settings space.

For each architecture x method x C x batch x probes in GRID: the model's estimate of one
forward + penalty + backward (from its probe, before the safety margin, without parameters and
optimizer state) and the peak actually measured on that step at full size (torch's allocator
events through the profiler on a CPU, max_memory_allocated on CUDA). The number that matters is
measured / (estimate x safety margin): above 1, a run the budget lets through could be larger than
the budget thought. Exact with C = 1000 and 2000 on 28x28 inputs goes by 784 forward-mode columns.
Writes benchmarks/results/memory_model_<device>.json and .md; one row is printed as it is measured.

    .venv/bin/python benchmarks/memory_model.py             # CPU, about 15 minutes on 2 cores
    .venv/bin/python benchmarks/memory_model.py --quick     # a subset, about 2 minutes
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", nargs="+", default=list(models.ARCHITECTURES))
    parser.add_argument("--quick", action="store_true", help="a subset of the grid")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    bench.quiet_profiler()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    grid = [g for g in GRID if not args.quick or g in QUICK]
    # The exact cases by 784 columns are the slow ones (a forward-mode pass each): measured last.
    tasks = sorted(((arch, *g) for g in grid for arch in args.archs), key=lambda t: t[1] == "exact" and t[3] > 784)
    for arch, method, n, classes, batch in tasks:
        cfg = RunConfig(dataset=DATASET, arch=arch, method=method, num_projections=n, batch_size=batch,
                        num_classes=classes, robustness=False)
        started = time.perf_counter()
        probe = memory.measure_probe(cfg, classes, device)
        probe_s = time.perf_counter() - started
        # The step's own part, before the safety margin: what the model predicts of this step.
        estimate = (memory.estimate(cfg, probe, classes).peak_mb - probe.state_mb) / memory.SAFETY
        started = time.perf_counter()
        actual = measured(cfg, classes, device)
        made = costs.products(cfg, classes)
        rows.append({"arch": arch, "method": method, "num_projections": n, "classes": classes, "batch_size": batch,
                     "mode": made.mode, "products": made.count, "estimate_mb": estimate, "measured_mb": actual,
                     "ratio": actual / estimate, "ratio_with_margin": actual / (estimate * memory.SAFETY),
                     "probe_s": probe_s, "step_s": time.perf_counter() - started})
        log(f"{arch} {method} n={n} C={classes} B={batch} ({made.count} {made.mode}): estimate {estimate:.1f} MB, "
            f"measured {actual:.1f} MB, ratio {actual / estimate:.2f}")
        _write(rows, device, args.out, log)  # after every row: a run cut short keeps what it measured
    return 0


def _write(rows: list[dict], device: torch.device, out: Path, log) -> None:
    worst = max(rows, key=lambda r: r["ratio"])
    report = {"environment": environment(device), "rows": rows, "safety_margin": memory.SAFETY,
              "worst": {"ratio": worst["ratio"], "ratio_with_margin": worst["ratio_with_margin"],
                        "case": {k: worst[k] for k in ("arch", "method", "num_projections", "classes", "batch_size")}},
              "least": min(r["ratio"] for r in rows)}
    env = report["environment"]
    lines = [f"# The memory model against measured peaks, on {device.type}", "",
             f"{env['device_name']}, torch {env['torch']}, {env['date']}, CUDA available: "
             f"{env['cuda_available']} (no GPU figures here); dataset {DATASET} (1x28x28). Estimate: "
             "demo.budget.memory's model of one forward + penalty + backward, before its safety margin of "
             f"{memory.SAFETY:g}x and without parameters and optimizer state; measured: the same step at full size. "
             "ratio = measured / estimate; with the margin it must stay <= 1.", "",
             "| arch | method | n | C | batch | products | estimate (MB) | measured (MB) | measured / estimate "
             "| with margin | probe (s) |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['method']} | {r['num_projections']} | {r['classes']} | {r['batch_size']} | "
                     f"{r['products']} {r['mode']} | {r['estimate_mb']:.1f} | {r['measured_mb']:.1f} | "
                     f"{r['ratio']:.2f} | {r['ratio_with_margin']:.2f} | {r['probe_s']:.2f} |")
    w = report["worst"]
    lines += ["", f"Worst measured / estimate: {w['ratio']:.2f} ({w['case']}), {w['ratio_with_margin']:.2f} with the "
                  f"margin; least {report['least']:.2f} (the model errs high there).", ""]
    write_report(report, "\n".join(lines), out / f"memory_model_{device.type}", lambda *a: None)


if __name__ == "__main__":
    sys.exit(main())
