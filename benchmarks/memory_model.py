"""The memory model of demo/memory.py against measured peaks.

For each architecture, method and batch: the estimate (from the probe at demo.budget.memory's two small
batches) and the peak actually measured on one forward + penalty + backward at full size (torch's
allocator events through the profiler on a CPU, max_memory_allocated on CUDA), and their ratio.
Writes benchmarks/results/memory_model_<device>.json and .md.

    .venv/bin/python benchmarks/memory_model.py     # CPU, about a minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from benchmarks.report import RESULTS_DIR, environment, write_report  # noqa: E402
from demo.budget import memory
from demo.budget import timing as bench  # noqa: E402
from demo.engine.config import RunConfig  # noqa: E402
from jacobian_penalty import jacobian_penalty  # noqa: E402

SHAPE, CLASSES = (1, 28, 28), 100
GRID = [  # (method, projections, batch)
    ("projection", 1, 256),
    ("projection", 4, 256),
    ("jvp", 1, 256),
    ("fd", 1, 256),
    ("exact", 1, 64),
]


def measured(arch: str, method: str, n: int, batch: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = models.build(arch, SHAPE, CLASSES).to(device)
    x, y = torch.rand(batch, *SHAPE, device=device), torch.randint(CLASSES, (batch,), device=device)
    params = list(model.parameters())

    def step() -> None:
        logits, penalty = jacobian_penalty(model, x, method=method, num_projections=n)
        (F.cross_entropy(logits, y) + penalty).backward(inputs=params)

    step()
    return bench.peak_memory_mb(step, device, lambda: model.zero_grad(set_to_none=True)) or float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", nargs="+", default=list(models.ARCHITECTURES))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    for arch in args.archs:
        started = time.perf_counter()
        probe = memory.measure_probe(arch, SHAPE, CLASSES, device)
        probe_s = time.perf_counter() - started
        for method, n, batch in GRID:
            cfg = RunConfig(dataset="synthetic", arch=arch, method=method, num_projections=n, batch_size=batch,
                            robustness=False)
            # The step's own part, before the safety margin: what the model predicts of this step.
            estimate = (memory.estimate(cfg, probe, CLASSES).peak_mb - probe.state_mb) / memory.SAFETY
            actual = measured(arch, method, n, batch, device)
            rows.append({"arch": arch, "method": method, "num_projections": n, "batch_size": batch,
                         "estimate_mb": estimate, "measured_mb": actual, "ratio": estimate / actual,
                         "probe_s": probe_s})
            log(f"{arch} {method} n={n} B={batch}: estimate {estimate:.1f} MB, measured {actual:.1f} MB")
    ratios = [r["ratio"] for r in rows]
    report = {"environment": environment(device), "rows": rows,
              "ratio": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)},
              "safety_margin": memory.SAFETY}
    lines = [f"# The memory model against measured peaks, on {device.type}", "",
             f"torch {report['environment']['torch']}, {report['environment']['date']}; input {SHAPE}, "
             f"C = {CLASSES}. Estimate: demo.budget.memory's model of one forward + penalty + backward (before its "
             f"safety margin of {memory.SAFETY:g}x and without parameters and optimizer state); measured: the "
             "same step at full size.", "",
             "| arch | method | projections | batch | estimate (MB) | measured (MB) | estimate / measured "
             "| probe (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['method']} | {r['num_projections']} | {r['batch_size']} | "
                     f"{r['estimate_mb']:.1f} | {r['measured_mb']:.1f} | {r['ratio']:.2f} | {r['probe_s']:.2f} |")
    q = report["ratio"]
    lines += ["", f"estimate / measured: min {q['min']:.2f}, median {q['median']:.2f}, max {q['max']:.2f}.", ""]
    write_report(report, "\n".join(lines), args.out / f"memory_model_{device.type}", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
