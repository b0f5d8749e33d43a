"""How much memory a run, a cost measurement or a thread comparison will need at its peak, and
whether the server can give it that.

The model: a training step's peak grows linearly with the batch B, and a penalty adds one graph
per VJP (or JVP) it keeps for the backward pass:

    peak(B) = one(B) + (k - 1) * (two(B) - one(B))

with one(B) and two(B) measured on the real model by a probe (a forward + backward whose penalty
keeps one and two VJP graphs: exact on the first one and two outputs, at two small batches,
peak memory from torch's allocator, fitted as a + b B), and k = num_projections for projection
and fd, three times that for jvp, and min(C, D) for exact (every row's, or column's, graph lives
until the caller's backward); a plain step (lambda = 0) is measured as such. Evaluation and the attacks run on up to
ROBUSTNESS_SAMPLES test points: plain(ROBUSTNESS_SAMPLES) bounds them. Parameters, gradients and
Adam's two moments come on top. benchmarks/memory_model.py checks the model against measured
peaks; docs/memory.md gives its measured error.

The budget is JP_MAX_MEMORY_MB, or DEFAULT_FRACTION of the memory available when the check runs
(MemAvailable; on CUDA, the device's free memory). A request over it is refused in plain words
that say what to lower.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import models
from demo.budget import timing as bench
from demo.budget.costs import step_cost
from demo.engine.config import ConfigError, RunConfig
from demo.engine.data import input_shape as dataset_shape
from jacobian_penalty import jacobian_penalty

DEFAULT_FRACTION = 0.6  # of the available memory: the server, the page and other runs need the rest
# The model's estimate of a step was 0.8-2x the measured peak (benchmarks/results/memory_model_cpu.md):
# the check multiplies it by this, so an underestimate does not let a run through that cannot fit.
SAFETY = 1.25
PROBE_BATCHES = (32, 128)
# Copies of the parameters a run holds: the weights, their gradients, Adam's two moments, and
# about two more of temporaries in Adam's step and the CPU copies of evaluations.
STATE_COPIES = 6
ROBUSTNESS_SAMPLES = 500  # as demo.engine.train: the attacks run on this many test points
MB = 2**20


@dataclass(frozen=True)
class Fit:
    """Peak MB of one step as a + b * batch."""

    a: float
    b: float

    def at(self, batch: int) -> float:
        return max(0.0, self.a + self.b * batch)


@dataclass(frozen=True)
class Probe:
    plain: Fit
    one_graph: Fit
    two_graphs: Fit
    state_mb: float  # parameters, their gradients and Adam's two moments


@dataclass(frozen=True)
class Estimate:
    peak_mb: float
    graphs: float  # VJP/JVP graphs held at once in a step, in units of one projection's
    what: str  # which part dominates, in words


def budget_mb(device: torch.device, environ: Mapping[str, str] | None = None) -> float:
    """JP_MAX_MEMORY_MB, else DEFAULT_FRACTION of the available memory (of the GPU for CUDA)."""
    environ = os.environ if environ is None else environ
    raw = environ.get("JP_MAX_MEMORY_MB", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"JP_MAX_MEMORY_MB must be a number of megabytes, got {raw!r}.") from None
        if not 0 < value < float("inf"):
            raise ValueError(f"JP_MAX_MEMORY_MB must be a positive number of megabytes, got {raw!r}.")
        return value
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return DEFAULT_FRACTION * free / MB
    return DEFAULT_FRACTION * available_mb()


def available_mb() -> float:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else all pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB


def graphs_held(cfg: RunConfig, shape: tuple[int, ...], num_classes: int) -> float:
    """How many VJP/JVP graphs one training step keeps for its backward pass (demo.budget.costs)."""
    del shape  # the cost model reads the dataset's shape itself
    return step_cost(cfg, num_classes).graphs


def estimate(cfg: RunConfig, probe: Probe, num_classes: int) -> Estimate:
    shape = dataset_shape(cfg.dataset)
    k = graphs_held(cfg, shape, num_classes)
    batch = cfg.batch_size
    per_graph = max(0.0, probe.two_graphs.at(batch) - probe.one_graph.at(batch))
    train = probe.plain.at(batch) if k == 0 else probe.one_graph.at(batch) + (k - 1) * per_graph
    attacks = probe.plain.at(ROBUSTNESS_SAMPLES) if cfg.robustness else 0.0
    what = (f"{k:g} Jacobian graph(s) of a batch of {cfg.batch_size}" if train >= attacks
            else f"the attacks on {ROBUSTNESS_SAMPLES} test points")
    return Estimate(probe.state_mb + SAFETY * max(train, attacks), k, what)


def measure_probe(arch: str, shape: tuple[int, ...], num_classes: int, device: torch.device, *,
                  width: int = 256, depth: int = 2) -> Probe:
    """Peak memory of a forward + backward keeping no, one and two VJP graphs, at PROBE_BATCHES,
    fitted in the batch. The optimizer's step is left out: its temporaries do not grow with the
    batch and, at a probe's small batch, would hide the part that does."""
    options = {"width": width, "depth": depth} if arch == "mlp" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.build(arch, shape, num_classes, **options).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    peaks: dict[int, list[float]] = {0: [], 1: [], 2: []}  # graphs held -> peak MB per probe batch
    for batch in PROBE_BATCHES:
        x = torch.rand((batch, *shape), device=device)
        y = torch.randint(num_classes, (batch,), device=device)
        for graphs, values in peaks.items():
            step = _forward_backward(model, params, x, y, graphs)
            values.append(bench.peak_memory_mb(step, device, lambda: model.zero_grad(set_to_none=True)) or 0.0)
    state = STATE_COPIES * _parameters(model) * 4 / MB
    return Probe(_fit(peaks[0]), _fit(peaks[1]), _fit(peaks[2]), state)


def _forward_backward(model: nn.Module, params: list, x: torch.Tensor, y: torch.Tensor, graphs: int):
    """A step whose penalty keeps `graphs` VJP graphs: exact on the first `graphs` outputs, one row a pass."""

    def first_outputs(t: torch.Tensor) -> torch.Tensor:
        return model(t)[:, :graphs]

    def step() -> None:
        if graphs:
            # The outputs are a slice of the logits: the cross-entropy takes the whole logits again,
            # as a run's step would reuse them (one more forward's worth, small beside the graphs).
            _, penalty = jacobian_penalty(first_outputs, x, method="exact", chunk_size=1)
            loss = F.cross_entropy(model(x), y) + penalty
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward(inputs=params)

    return step


class Estimator:
    """Probes cached by what they depend on (one per server, shared by its sessions: the numbers
    describe models, not visitors), and the check that refuses what would not fit."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ
        self._probes: dict[tuple, Probe] = {}
        self._lock = threading.Lock()

    def probe(self, cfg: RunConfig, num_classes: int, device: torch.device) -> Probe:
        shape = dataset_shape(cfg.dataset)
        key = (cfg.arch, shape, num_classes, device.type, cfg.width, cfg.depth)
        with self._lock:
            if key not in self._probes:
                self._probes[key] = measure_probe(cfg.arch, shape, num_classes, device, width=cfg.width,
                                                  depth=cfg.depth)
            return self._probes[key]

    def check(self, cfg: RunConfig, num_classes: int, device: torch.device) -> Estimate:
        """The estimate, or ConfigError in plain words when it exceeds the budget."""
        found = estimate(cfg, self.probe(cfg, num_classes, device), num_classes)
        budget = budget_mb(device, self.environ)
        if found.peak_mb > budget:
            raise ConfigError(_refusal(cfg, found, budget, self.probe(cfg, num_classes, device), num_classes))
        return found


def _refusal(cfg: RunConfig, found: Estimate, budget: float, probe: Probe, num_classes: int) -> str:
    fits = _largest_batch(cfg, probe, num_classes, budget)
    advice = [f"a batch size of {fits} or less" if fits else "a smaller model"]
    if cfg.method == "exact":
        advice.append("the 'projection' method (one graph instead of one per output)")
    elif cfg.num_projections > 1:
        advice.append("fewer projections")
    return (
        f"This run would need about {_size(found.peak_mb)} of memory at its peak ({found.what}), more than "
        f"this server allows ({_size(budget)}). Try {' or '.join(advice)}."
    )


def _largest_batch(cfg: RunConfig, probe: Probe, num_classes: int, budget: float) -> int:
    low, high = 0, cfg.batch_size
    while low < high:  # the estimate grows with the batch: bisect
        middle = (low + high + 1) // 2
        if estimate(cfg.replace(batch_size=middle), probe, num_classes).peak_mb <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _fit(peaks: list[float]) -> Fit:
    (b1, b2), (m1, m2) = PROBE_BATCHES, peaks
    slope = max(0.0, (m2 - m1) / (b2 - b1))
    return Fit(m1 - slope * b1, slope)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _size(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"
