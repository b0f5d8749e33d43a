"""What a training step costs with each Jacobian penalty estimator, against a plain step.

For each architecture (mlp, lenet, resnet) and number of outputs C (10, 100, 1000): the step
time of every method as a ratio to a plain cross-entropy step on the same model and batch
(interleaved rounds, median), its peak memory, and the forum thread's loop of C VJPs for
C <= 100; then exact's memory against its chunk size, and the caller's loss.backward() against
loss.backward(inputs=params). Writes benchmarks/results/penalty_cost_<device>.json and .md with
the device, versions, CPU and thread counts and the date. The measurement itself is demo.budget.timing,
which the app's Cost view also runs.

    .venv/bin/python benchmarks/penalty_cost.py                  # the CPU grid (a few minutes)
    .venv/bin/python benchmarks/penalty_cost.py --device cuda    # the same on a GPU
    .venv/bin/python benchmarks/penalty_cost.py --help           # every option

`make bench` runs it with the other CPU benchmarks.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from benchmarks.report import RESULTS_DIR, environment, load_average, write_report  # noqa: E402
from demo.budget.timing import (  # noqa: E402
    LOOP,
    LOOP_MAX_CLASSES,
    STRENGTH,
    backward_comparison,
    chunk_sweep,
    time_steps,
)
from jacobian_penalty import METHODS  # noqa: E402

DEFAULT_ARCHS = ("mlp", "lenet", "resnet")
DEFAULT_CLASSES = (10, 100, 1000)
DEFAULT_CHUNKS = (1, 10, 100)  # exact's chunk sizes in the memory sweep (None = all rows is added)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/penalty_cost.py",
        description="Time a training step with each Jacobian penalty method, as a ratio to a plain step; "
        "write JSON and markdown tables.",
    )
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=list(models.ARCHITECTURES))
    parser.add_argument("--classes", nargs="+", type=int, default=list(DEFAULT_CLASSES), help="output counts C")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--no-loop", dest="loop", action="store_false", help="skip the thread's loop of C VJPs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input-shape", nargs="+", type=int, default=[1, 28, 28])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per setting (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: process CPU time (steadier on a busy machine with --threads 1)")
    parser.add_argument("--chunk-size", type=int, default=None, help="exact: output rows per batched VJP")
    parser.add_argument(
        "--max-step-seconds", type=float, default=1.0,
        help="skip a method whose step, extrapolated from the previous C, would take longer",
    )
    parser.add_argument("--sweep-arch", default="mlp", help="architecture of the chunk-size memory sweep")
    parser.add_argument("--sweep-classes", type=int, default=100, help="C of the chunk-size memory sweep")
    parser.add_argument("--sweep-chunks", nargs="*", type=int, default=list(DEFAULT_CHUNKS),
                        help="chunk sizes of the sweep (all rows at once is always added); none: no sweep")
    parser.add_argument("--backward-archs", nargs="*", default=["mlp", "lenet"],
                        help="architectures on which to compare loss.backward() with backward(inputs=params)")
    parser.add_argument("--backward-classes", nargs="*", type=int, default=[10, 1000], help="C of that comparison")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON and markdown")
    parser.add_argument("--name", default="penalty_cost", help="file stem; the device kind is appended")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark grid; write <out>/<name>_<device>.json and .md. Returns an exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for, but no CUDA GPU is available here.", file=sys.stderr)
        return 2
    for arch in {*args.archs, args.sweep_arch, *args.backward_archs}:
        reason = models.incompatibility(arch, tuple(args.input_shape))
        if reason:
            print(f"error: {reason}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    env = environment(device)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "quiet"}
    rows = _grid(args, device, log)
    sweep = []
    if args.sweep_chunks:
        log(f"chunk sweep: exact on {args.sweep_arch}, C={args.sweep_classes}")
        sweep = chunk_sweep(
            args.sweep_arch, args.sweep_classes, [None, *args.sweep_chunks], batch_size=args.batch_size,
            input_shape=args.input_shape, device=device, repeats=max(1, args.repeats // 2), clock=args.clock,
        )
    backward = []
    for arch, num_classes in itertools.product(args.backward_archs, args.backward_classes):
        log(f"backward comparison: {arch}, C={num_classes}")
        backward += backward_comparison(
            arch, num_classes, ["projection"], batch_size=args.batch_size, input_shape=args.input_shape,
            device=device, repeats=args.repeats, clock=args.clock,
        )
    env["load_average_end"] = load_average()
    report = {"environment": env, "settings": settings, "penalty_weight": STRENGTH,
              "rows": rows, "chunk_sweep": sweep, "backward_comparison": backward}
    write_report(report, markdown(report), args.out / f"{args.name}_{device.type}", log)
    return 0


def _grid(args: argparse.Namespace, device: torch.device, log: Callable[..., None]) -> list[dict[str, Any]]:
    """Every (arch, C); methods whose cost grows with C are skipped past the time budget."""
    rows: list[dict[str, Any]] = []
    for arch in args.archs:
        previous: dict[str, tuple[int, float]] = {}  # method -> (C, ms) of its last measurement
        for num_classes in sorted(args.classes):
            methods, skipped = [], []
            wanted = [*args.methods, LOOP] if args.loop and num_classes <= LOOP_MAX_CLASSES else list(args.methods)
            for m in wanted:
                estimate = _extrapolate(previous.get(m), num_classes) if m in (LOOP, "exact") else None
                if estimate is not None and estimate > 1e3 * args.max_step_seconds:
                    skipped.append((m, estimate))
                else:
                    methods.append(m)
            log(f"{arch:>7} C={num_classes:<5} {' '.join(methods)}")
            measured = time_steps(
                arch, num_classes, [m for m in methods if m != LOOP], batch_size=args.batch_size,
                input_shape=args.input_shape, device=device, repeats=args.repeats,
                include_loop=LOOP in methods, chunk_size=args.chunk_size, clock=args.clock,
            )
            for row in measured:
                previous[row["method"]] = (num_classes, row["ms_per_step"])
                log(f"        {row['method']:<10} {row['ms_per_step']:9.2f} ms  x{row['ratio']:.2f}  "
                    f"{_fmt(row['peak_memory_mb'], '.1f')} MB")
            rows += measured
            for m, estimate in skipped:
                rows.append({
                    "method": m, "arch": arch, "num_classes": num_classes, "batch_size": args.batch_size,
                    "input_shape": list(args.input_shape), "device": device.type, "ms_per_step": None,
                    "ratio": None, "peak_memory_mb": None,
                    "skipped": f"estimated {estimate / 1e3:.1f} s per step (linear in C) > {args.max_step_seconds:g} s",
                })
    return rows


def _extrapolate(last: tuple[int, float] | None, num_classes: int) -> float | None:
    if last is None:
        return None
    classes, ms = last
    return ms * num_classes / classes


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: environment, step-time ratios, peak memory, the chunk sweep."""
    env, settings = report["environment"], report["settings"]
    rows = report["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    settings_line = (f"batch {settings['batch_size']}, input {tuple(settings['input_shape'])}, "
                     f"{settings['repeats']} interleaved rounds (median), {settings['clock']} clock, Adam, "
                     f"lambda {report['penalty_weight']}")
    lines = [
        f"# Penalty cost on {env['device']} ({env['device_name']})",
        "",
        f"torch {env['torch']}, Python {env['python']}, {env['cpu_count']} CPUs, {env['torch_threads']} torch "
        f"threads, CUDA available: {env['cuda_available']}, {env['date']}, load average "
        f"{env.get('load_average_start')} -> {env.get('load_average_end')}.",
        "",
        f"Settings: {settings_line}.",
        "",
        "## Step time as a ratio to a plain cross-entropy step (median ms per step)",
        "",
        "| arch | C | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    cells = {(r["arch"], r["num_classes"], r["method"]): r for r in rows}
    keys = list(dict.fromkeys((r["arch"], r["num_classes"]) for r in rows))
    for arch, c in keys:
        lines.append(f"| {arch} | {c} | " + " | ".join(_time_cell(cells.get((arch, c, m))) for m in methods) + " |")
    lines += ["", "## Peak memory of one step above its start (MB)", "",
              "| arch | C | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for arch, c in keys:
        lines.append(f"| {arch} | {c} | " + " | ".join(
            _fmt((cells.get((arch, c, m)) or {}).get("peak_memory_mb"), ".1f") for m in methods) + " |")
    if any("skipped" in r for r in rows):
        lines += ["", "Skipped (-):"]
        lines += [f"- {r['method']} on {r['arch']} at C = {r['num_classes']}: {r['skipped']}"
                  for r in rows if "skipped" in r]
    if report.get("chunk_sweep"):
        sweep = report["chunk_sweep"]
        first = sweep[0]
        lines += ["", f"## exact: peak memory against chunk size ({first['arch']}, C = {first['num_classes']})", "",
                  "train: a training step (create_graph=True); eval: jacobian_norms (no graph).", "",
                  "| mode | chunk | ms | ratio to plain step | peak MB |", "|---|---:|---:|---:|---:|"]
        for r in sweep:
            chunk = "all" if r["chunk_size"] is None else r["chunk_size"]
            lines.append(f"| {r['mode']} | {chunk} | {r['ms_per_step']:.2f} | {r['ratio']:.2f} | "
                         f"{_fmt(r['peak_memory_mb'], '.1f')} |")
    if report.get("backward_comparison"):
        lines += ["", "## The caller's backward: loss.backward() against loss.backward(inputs=params)", "",
                  "all: loss.backward() also computes d loss / d x through the first layer (nobody reads it); "
                  "params: only the parameters' gradients. Ratio to a plain step, interleaved.", "",
                  "| arch | C | method | backward | ms | ratio | peak MB |", "|---|---:|---|---|---:|---:|---:|"]
        for r in report["backward_comparison"]:
            lines.append(f"| {r['arch']} | {r['num_classes']} | {r['method']} | {r['backward']} | "
                         f"{r['ms_per_step']:.2f} | {r['ratio']:.2f} | {_fmt(r['peak_memory_mb'], '.1f')} |")
    source = next((r.get("memory_source") for r in rows if r.get("memory_source")), None)
    lines += ["", f"Memory measured with {source}." if source else "Memory not measured.", ""]
    return "\n".join(lines)


def _time_cell(row: dict[str, Any] | None) -> str:
    if row is None or row.get("ms_per_step") is None:
        return "-"
    return f"{row['ratio']:.2f} ({row['ms_per_step']:.1f})"


if __name__ == "__main__":
    sys.exit(main())
