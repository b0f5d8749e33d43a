"""What a training step costs with each Jacobian penalty estimator: time, ratio, peak memory.

One step is what `demo.train` does per batch: forward + penalty + backward + optimizer step
(Adam), with loss = cross_entropy + lambda * penalty. Each method's step is timed on the same
model and batch as a plain cross-entropy step, and

    ratio = t(method step) / t(plain step)

is the number that carries across machines. Repetitions of all methods are interleaved (round
r runs every method once, in an order rotated by r), so a load change on a shared machine hits
every method alike; the ratio is the median over rounds of the per-round ratio, the time the
median over rounds. Fast steps are repeated within a sample until it lasts MIN_SAMPLE_S, so
timer resolution does not matter, and follow one untimed step of their own, so they do not pay
for the caches that the previous method's step emptied. CUDA is synchronised around every sample.
The clock is wall time, or process CPU time (`clock="cpu"`): with one torch thread on a busy
machine it leaves out the time other processes hold the cores.

Peak memory is the most that one step holds at once of what it allocates itself (model,
optimizer state, batch and the previous step's gradients excluded): on CUDA from
torch.cuda.max_memory_allocated, on the CPU from the allocation events of
torch.profiler(profile_memory=True) summed in time order (tracemalloc does not see torch's
allocator, and getrusage's maxrss only ever grows). It is measured on one more, untimed step, as
the profiler slows a step down.

Methods: "plain" (the baseline, always measured and returned first), the estimators of
`jacobian_penalty.METHODS`, and "loop": the forum thread's answer, C separate VJPs with
create_graph (one per output), only for C <= LOOP_MAX_CLASSES.

`python -m demo bench --help` (or benchmarks/penalty_cost.py) runs the grid and writes JSON and
markdown to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import models
from jacobian_penalty import METHODS, jacobian_norms, jacobian_penalty

__all__ = [
    "PLAIN",
    "LOOP",
    "LOOP_MAX_CLASSES",
    "method_names",
    "make_step",
    "peak_memory_mb",
    "time_steps",
    "chunk_sweep",
    "backward_comparison",
    "environment",
    "markdown",
    "main",
]

PLAIN = "plain"
LOOP = "loop"
LOOP_MAX_CLASSES = 100  # the loop is C double-backprop passes: beyond this it is only slow
PENALTY_WEIGHT = 0.01  # lambda; the cost does not depend on it (any lambda > 0 builds the same graph)
LEARNING_RATE = 1e-4  # small, so hundreds of timed steps leave the model about where it started
MIN_SAMPLE_S = 0.02  # a timed sample lasts at least this long: fast steps repeat inside it
MAX_STEPS_PER_SAMPLE = 50
WARMUP_STEPS = 2  # first steps allocate optimizer state and warm caches
SLOW_STEP_S = 0.25  # a step this slow is warm after one step (and timed once per sample)
MEGABYTE = 2**20

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
DEFAULT_ARCHS = ("mlp", "lenet", "resnet")
DEFAULT_CLASSES = (10, 100, 1000)
DEFAULT_CHUNKS = (1, 10, 100)  # exact's chunk sizes in the memory sweep (None = all rows is added)


# ---------------------------------------------------------------------------------------------
# One training step per method


def _penalty_step(method: str, chunk_size: int | None, generator: torch.Generator):
    def penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        return jacobian_penalty(model, x, method=method, generator=generator, chunk_size=chunk_size)

    return penalty


def _loop_penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The forum thread's fix: one VJP with create_graph per output coordinate (C passes)."""
    x_in = x.detach().requires_grad_(True)
    y = model(x_in)  # (B, C)
    total = x.new_zeros(())
    for c in range(y.shape[1]):
        # The thread's unit vector e_c for every sample: the VJP gives row c of each J_b.
        unit = torch.zeros_like(y)
        unit[:, c] = 1
        (row,) = torch.autograd.grad(y, x_in, unit, create_graph=True, retain_graph=True)  # (B, ...)
        total = total + row.pow(2).sum()
    return y, total / x.shape[0]


def make_step(
    method: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    backward_inputs: bool = False,
) -> Callable[[], None]:
    """A closure doing one training step of `method` on (x, y), as `demo.train` does it.

    backward_inputs: call loss.backward(inputs=parameters) instead of loss.backward(), so autograd
    skips the gradient with respect to the penalty's input copy of x, which nobody reads.
    """
    if method == PLAIN:
        penalty_fn = None
    elif method == LOOP:
        penalty_fn = _loop_penalty
    elif method in METHODS:
        penalty_fn = _penalty_step(method, chunk_size, generator)
    else:
        raise ValueError(f"Unknown method {method!r}; choose from {', '.join(method_names())}.")
    inputs = [p for p in model.parameters() if p.requires_grad] if backward_inputs else None

    def step() -> None:
        if penalty_fn is None:
            loss = F.cross_entropy(model(x), y)
        else:
            logits, penalty = penalty_fn(model, x)
            loss = F.cross_entropy(logits, y) + PENALTY_WEIGHT * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=inputs)
        optimizer.step()

    return step


def method_names() -> tuple[str, ...]:
    return (PLAIN, *METHODS, LOOP)


# ---------------------------------------------------------------------------------------------
# Timing and memory


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(name: str, device: torch.device) -> Callable[[], float]:
    if name == "wall":
        return time.perf_counter
    if name == "cpu" and device.type == "cpu":
        return time.process_time
    raise ValueError(f"clock must be 'wall', or 'cpu' on a CPU device; got {name!r} on {device.type}.")


def _interleaved_times(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device, clock: str = "wall"
) -> dict[str, list[float]]:
    """Seconds per step of every closure, `repeats` samples each, interleaved round by round."""
    now = _clock(clock, device)
    per_sample: dict[str, int] = {}
    once_s: dict[str, float] = {}
    for name, step in steps.items():
        for _ in range(WARMUP_STEPS):
            _synchronize(device)
            start = now()
            step()
            _synchronize(device)
            once = max(now() - start, 1e-6)
            if once > SLOW_STEP_S:
                break
        once_s[name] = once
        per_sample[name] = max(1, min(MAX_STEPS_PER_SAMPLE, math.ceil(MIN_SAMPLE_S / once)))
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
            n = per_sample[name]
            if once_s[name] < SLOW_STEP_S:
                steps[name]()  # untimed: caches warm again after the previous method's step
            _synchronize(device)
            start = now()
            for _ in range(n):
                steps[name]()
            _synchronize(device)
            times[name].append((now() - start) / n)
    return times


def peak_memory_mb(
    fn: Callable[[], Any], device: torch.device, release: Callable[[], None] | None = None
) -> float | None:
    """MB that fn() holds at its peak, above what was allocated when it began; None if unmeasurable.

    `release` frees what fn leaves behind (a step's parameter gradients): it runs before the
    measurement, so fn does not free the previous step's, and, on the CPU, after fn inside the
    profiler, so that no block allocated while profiling outlives the profiler (the profiler would
    later report its release against the wrong measurement).
    """
    release = release or (lambda: None)
    release()
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        release()
        return peak / MEGABYTE
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
            release()
        events = prof.profiler.kineto_results.events()
    except (RuntimeError, AttributeError):  # a profiler already running, or an API change
        return None
    # Every allocation (+bytes) and free (-bytes) of torch's CPU allocator, in time order.
    changes = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    peak = max(itertools.accumulate(nbytes for _, nbytes in changes), default=0)
    return max(peak, 0) / MEGABYTE


def _measure(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device, measure_memory: bool,
    clock: str = "wall", release: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Interleaved timing of every step; ratio to the first step (the baseline) per round."""
    times = _interleaved_times(steps, repeats, device, clock)
    baseline = times[next(iter(steps))]
    results = {}
    for name, samples in times.items():
        results[name] = {
            "ms_per_step": 1e3 * statistics.median(samples),
            "ms_samples": [round(1e3 * t, 4) for t in samples],
            "ratio": statistics.median(t / b for t, b in zip(samples, baseline, strict=True)),
            "peak_memory_mb": peak_memory_mb(steps[name], device, release) if measure_memory else None,
        }
    return results


def _setup(arch, num_classes, batch_size, input_shape, device, seed=0):
    """A fresh model, its optimizer and a fixed random batch (inputs in [0, 1], random labels)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build(arch, tuple(input_shape), num_classes).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x = torch.rand((batch_size, *input_shape), generator=gen).to(device)
    y = torch.randint(num_classes, (batch_size,), generator=gen).to(device)
    probes = torch.Generator(device=device).manual_seed(seed + 1)
    return device, model, optimizer, x, y, probes


def _resolve_methods(methods: Sequence[str], num_classes: int, include_loop: bool) -> list[str]:
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(method_names())}.")
    wanted = [PLAIN] + [m for m in dict.fromkeys(methods) if m not in (PLAIN, LOOP)]
    if (include_loop or LOOP in methods) and num_classes <= LOOP_MAX_CLASSES:
        wanted.append(LOOP)
    return wanted


def time_steps(
    arch: str,
    num_classes: int,
    methods: Sequence[str],
    *,
    batch_size: int = 64,
    input_shape: Sequence[int] = (1, 28, 28),
    device: str | torch.device = "cpu",
    repeats: int = 5,
    include_loop: bool = False,
    chunk_size: int | None = None,
    measure_memory: bool = True,
    clock: str = "wall",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time one training step of each method on one model and batch; one row per method.

    Rows come in the order plain, then `methods` (plain is always measured: it is the
    baseline, and its ratio is exactly 1), then "loop" when `include_loop` (or "loop" is in
    `methods`) and num_classes <= LOOP_MAX_CLASSES. `chunk_size` is passed to "exact".
    `clock`: "wall" (time.perf_counter, the default) or "cpu" (time.process_time, CPU only: on a
    shared machine with one torch thread it does not count time spent waiting for other
    processes; with several threads their spin-waiting inflates it).

    Each row: method, arch, num_classes, batch_size, input_shape, device, chunk_size,
    ms_per_step (median), ms_samples (every round), ratio (median of per-round ratios to plain),
    peak_memory_mb (None when not measured), memory_source.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    wanted = _resolve_methods(methods, num_classes, include_loop)
    device, model, optimizer, x, y, probes = _setup(arch, num_classes, batch_size, input_shape, device, seed)
    steps = {m: make_step(m, model, optimizer, x, y, chunk_size=chunk_size, generator=probes) for m in wanted}
    results = _measure(steps, repeats, device, measure_memory, clock, _releaser(optimizer))
    common = {
        "arch": arch,
        "num_classes": num_classes,
        "batch_size": batch_size,
        "input_shape": list(input_shape),
        "device": device.type,
        "clock": clock,
        "torch_threads": torch.get_num_threads(),
    }
    return [
        {
            "method": m,
            **common,
            "chunk_size": chunk_size if m == "exact" else None,
            **results[m],
            "memory_source": _memory_source(device) if measure_memory else None,
        }
        for m in wanted
    ]


def chunk_sweep(
    arch: str,
    num_classes: int,
    chunk_sizes: Sequence[int | None],
    *,
    batch_size: int = 64,
    input_shape: Sequence[int] = (1, 28, 28),
    device: str | torch.device = "cpu",
    repeats: int = 3,
    clock: str = "wall",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time and peak memory of "exact" against its chunk size, in a training step and in evaluation.

    "train" is a full step with create_graph=True: every chunk's graph is kept for the backward
    pass, so chunking bounds only the transient batched VJP. "eval" is `jacobian_norms`
    (create_graph=False, as in demo.train's evaluation): each chunk is freed before the next.
    Ratios are to a plain step on the same model and batch, interleaved as in `time_steps`.
    """
    device, model, optimizer, x, y, probes = _setup(arch, num_classes, batch_size, input_shape, device, seed)
    steps = {(PLAIN, None): make_step(PLAIN, model, optimizer, x, y)}
    for k in chunk_sizes:
        steps[("train", k)] = make_step("exact", model, optimizer, x, y, chunk_size=k, generator=probes)
        steps[("eval", k)] = _eval_norms(model, x, k)
    keyed = {f"{mode}/{k}": fn for (mode, k), fn in steps.items()}
    results = _measure(keyed, repeats, device, True, clock, _releaser(optimizer))
    return [
        {"mode": mode, "arch": arch, "num_classes": num_classes, "batch_size": batch_size, "chunk_size": k,
         "device": device.type, **results[f"{mode}/{k}"], "memory_source": _memory_source(device)}
        for mode, k in steps
        if mode != PLAIN
    ]


def backward_comparison(
    arch: str,
    num_classes: int,
    methods: Sequence[str] = ("projection",),
    *,
    batch_size: int = 64,
    input_shape: Sequence[int] = (1, 28, 28),
    device: str | torch.device = "cpu",
    repeats: int = 5,
    clock: str = "wall",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each method's step with the caller's loss.backward() and with loss.backward(inputs=params).

    The penalty differentiates f with respect to a private copy of x that requires grad; a plain
    loss.backward() then also computes the gradient with respect to that copy, through the first
    layer: work nobody reads. Rows: method, backward ("all" or "params"), ms_per_step, ratio to
    a plain step (interleaved), peak_memory_mb.
    """
    device, model, optimizer, x, y, probes = _setup(arch, num_classes, batch_size, input_shape, device, seed)
    steps = {PLAIN: make_step(PLAIN, model, optimizer, x, y)}
    for m in methods:
        for backward in ("all", "params"):
            steps[f"{m}/{backward}"] = make_step(
                m, model, optimizer, x, y, generator=probes, backward_inputs=backward == "params"
            )
    results = _measure(steps, repeats, device, True, clock, _releaser(optimizer))
    return [
        {"method": name.split("/")[0], "backward": name.split("/")[1], "arch": arch, "num_classes": num_classes,
         "batch_size": batch_size, "device": device.type, **results[name]}
        for name in steps
        if name != PLAIN
    ]


def _releaser(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def release() -> None:
        optimizer.zero_grad(set_to_none=True)

    return release


def _eval_norms(model: nn.Module, x: Tensor, chunk_size: int | None) -> Callable[[], None]:
    def run() -> None:
        jacobian_norms(model, x, chunk_size=chunk_size)

    return run


def _memory_source(device: torch.device) -> str:
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler allocation events"


# ---------------------------------------------------------------------------------------------
# The benchmark grid, files and CLI


def environment(device: str | torch.device) -> dict[str, Any]:
    """Where and with what the numbers were taken."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": _load_average(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo bench",
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `python -m demo bench -- --archs mlp`: argparse keeps the separator
        argv = argv[1:]
    args = _parser().parse_args(argv)
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
    env["load_average_end"] = _load_average()
    report = {"environment": env, "settings": settings, "penalty_weight": PENALTY_WEIGHT,
              "rows": rows, "chunk_sweep": sweep, "backward_comparison": backward}
    write_report(report, markdown(report), args.out / f"{args.name}_{device.type}", log)
    return 0


def write_report(report: dict, table: str, stem: Path, log) -> None:
    """stem.json (the numbers) and stem.md (the table) side by side, for benchmarks/results/."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table)
    log(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


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
