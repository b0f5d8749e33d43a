"""What a training step costs with each Jacobian penalty estimator: time, ratio, peak memory.

One step is what `demo.engine.train` does per batch: forward + penalty + backward + optimizer step
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

This module is the measurement the app's Cost view runs; the grids, their command line and the
report files are in benchmarks/ (benchmarks/penalty_cost.py, `make bench`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import models
from demo.evaluation.robustness import checkpoint
from jacobian_penalty import METHODS, jacobian_norms, jacobian_penalty

__all__ = [
    "PLAIN",
    "LOOP",
    "LOOP_MAX_CLASSES",
    "method_names",
    "make_step",
    "step_closure",
    "loop_penalty",
    "interleaved_times",
    "peak_memory_mb",
    "time_steps",
    "chunk_sweep",
    "backward_comparison",
]

PLAIN = "plain"
LOOP = "loop"
LOOP_MAX_CLASSES = 100  # the loop is C double-backprop passes: beyond this it is only slow
STRENGTH = 0.01  # lambda; the cost does not depend on it (any lambda > 0 builds the same graph)
LEARNING_RATE = 1e-4  # small, so hundreds of timed steps leave the model about where it started
MIN_SAMPLE_S = 0.02  # a timed sample lasts at least this long: fast steps repeat inside it
MAX_STEPS_PER_SAMPLE = 50
WARMUP_STEPS = 2  # first steps allocate optimizer state and warm caches
SLOW_STEP_S = 0.25  # a step this slow is warm after one step (and timed once per sample)
MEGABYTE = 2**20



# ---------------------------------------------------------------------------------------------
# One training step per method


def _penalty_step(method: str, chunk_size: int | None, generator: torch.Generator):
    def penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        return jacobian_penalty(model, x, method=method, generator=generator, chunk_size=chunk_size)

    return penalty


def loop_penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
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
    """A closure doing one training step of `method` on (x, y), as `demo.engine.train` does it.

    backward_inputs: call loss.backward(inputs=parameters) instead of loss.backward(), so autograd
    skips the gradient with respect to the penalty's input copy of x, which nobody reads.
    """
    if method == PLAIN:
        penalty_fn = None
    elif method == LOOP:
        penalty_fn = loop_penalty
    elif method in METHODS:
        penalty_fn = _penalty_step(method, chunk_size, generator)
    else:
        raise ValueError(f"Unknown method {method!r}; choose from {', '.join(method_names())}.")
    inputs = [p for p in model.parameters() if p.requires_grad] if backward_inputs else None
    return step_closure(penalty_fn, model, optimizer, x, y, inputs=inputs)


def step_closure(
    penalty_fn: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]] | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    inputs: list[Tensor] | None = None,
) -> Callable[[], None]:
    """One training step with any penalty function `(model, x) -> (logits, term)`, or none: the
    step every timing here (and benchmarks/library_comparison.py's peers) is made of."""

    def step() -> None:
        if penalty_fn is None:
            loss = F.cross_entropy(model(x), y)
        else:
            logits, term = penalty_fn(model, x)
            loss = F.cross_entropy(logits, y) + STRENGTH * term
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


def interleaved_times(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device, clock: str = "wall",
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, list[float]]:
    """Seconds per step of every closure, `repeats` samples each, interleaved round by round.
    `should_stop` is asked before every round (robustness.checkpoint raises Stopped)."""
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
        checkpoint(should_stop)
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


def quiet_profiler() -> None:
    """Keep the C++ profiler (kineto) from writing to stderr: its `profiler_start/stop` lines on
    every measurement, "gpuGetDeviceCount failed" on a machine without a GPU, and "External init
    callback must run in same thread as registerClient" when it first starts in a thread other
    than the one that imported torch. KINETO_LOG_LEVEL=6 is above its highest level (a value the
    deployer set is kept); called in the main thread, this also starts it there once, quietly."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    if threading.current_thread() is threading.main_thread():
        from torch.profiler import ProfilerActivity, profile

        try:
            with profile(activities=[ProfilerActivity.CPU]):
                pass
        except (RuntimeError, AttributeError):  # a profiler already running
            pass


def resident_growth_mb(fn: Callable[[], Any], release: Callable[[], None] | None = None) -> float | None:
    """How far the process's resident memory grows while fn() runs, in MB; None where Linux's
    /proc cannot say. Covers what torch's allocator does not see: oneDNN's convolution workspaces
    (resnet, projection, batch 256: 554 MB resident for 326 MB allocated) and heap left stranded
    between saved tensors. The free heap goes back to the system first (glibc's malloc_trim), so
    pages fn reuses count again; other threads' allocations meanwhile count too (errs high)."""
    release = release or (lambda: None)
    release()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM, the peak RSS, starts again from here
    except (OSError, AttributeError, ValueError):
        return None
    fn()
    grown = _status_kb("VmHWM") - before
    release()
    return max(grown, 0) / 1024


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {key} in /proc/self/status")


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

    quiet_profiler()
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
    clock: str = "wall", release: Callable[[], None] | None = None, should_stop: Callable[[], bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """Interleaved timing of every step against the first (the baseline).

    `ratio` is the step's median time over the baseline's median time, so the ms and the ratio a
    reader sees always agree (ms = ratio x the baseline's ms); `ratio_low`/`ratio_high` are the
    smallest and largest ratio of one round to the same round's baseline, the spread a shared
    machine puts on it (noisy when that range is wide against the differences shown)."""
    times = interleaved_times(steps, repeats, device, clock, should_stop)
    baseline = times[next(iter(steps))]
    baseline_ms = 1e3 * statistics.median(baseline)
    results = {}
    for name, samples in times.items():
        per_round = [t / b for t, b in zip(samples, baseline, strict=True)]
        ms = 1e3 * statistics.median(samples)
        results[name] = {
            "ms_per_step": ms,
            "ms_samples": [round(1e3 * t, 4) for t in samples],
            "ms_low": 1e3 * min(samples),
            "ms_high": 1e3 * max(samples),
            "ratio": ms / baseline_ms,
            "ratio_low": min(per_round),
            "ratio_high": max(per_round),
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
    should_stop: Callable[[], bool] | None = None,
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
    results = _measure(steps, repeats, device, measure_memory, clock, _releaser(optimizer), should_stop)
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
    (create_graph=False, as in demo.engine.train's evaluation): each chunk is freed before the next.
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
