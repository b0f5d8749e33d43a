"""How much memory a run, a cost measurement or a thread comparison will need at its peak, and
whether the server can give it that; and the hard ceiling for when the estimate is wrong anyway.

The model. A training step with a Jacobian penalty makes `k` Jacobian products per sample and
keeps each one's graph until the caller's backward, so its peak grows linearly in k once the
graphs outweigh the backward's own temporaries, and linearly in the batch B. `k` and the kind of
product come from the library's one cost table (jacobian_penalty.costs.plan): C rows by reverse
mode or D columns by forward mode for exact (784 columns for a 28x28 image with more than 784
classes), n probes for projection, jvp and fd. A probe measures that same kind of product on the
real model, at the run's own batch when it is small (the batch that fooled a fitted line: a
forward-mode column at batch 2 is several times what a reverse graph at batch 32 predicts), else
at PROBE_BATCH:

    step(k, b) = p(k) measured                          when k <= MAX_PROBED
    step(k, b) = p(K) + (k - K) * (p(K) - p(K/2)) / (K/2)  else, K = 8, 16, 32, 64 doubled until
                                                        the peak visibly grows with the products
                                                        (if it never does: slope p(K) / K)
    step(k, B) = step(k, b) * B / b                     B > b: through the origin, which errs high

with p measured by max_memory_allocated on CUDA, and on the CPU as the larger of torch's allocator
events and the process's resident growth (what the kernel counts: convolution workspaces and heap
stranded between saved tensors are outside the allocator). Evaluation
and the attacks run on ROBUSTNESS_SAMPLES test points: a plain step scaled to that many bounds
them. Parameters, gradients and Adam's two moments come on top, and a safety margin SAFETY on the
step. benchmarks/memory_model.py checks the model against measured peaks over architectures x
methods x C x batch x probes; docs/memory.md gives the worst measured/estimated ratio.

The budget is the app's JP_MAX_MEMORY_MB (demo.app.limits), or DEFAULT_FRACTION of the memory
available when the check runs (MemAvailable; on CUDA, the device's free memory). A request over
it is refused in plain words that say what to lower.

The ceiling (`set_ceiling`): if a run needs more than the model said, the kernel would end the
whole server (a container's memory limit kills, it does not fail an allocation). So the server's
address space is capped at what it uses at start plus CEILING_FRACTION of the memory available
then (JP_MEMORY_CEILING_MB to choose): an allocation past it fails, and the run that made it ends
as "out_of_memory" with a message, its memory freed, the server and the other runs alive.
"""

from __future__ import annotations

import os
import resource
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import models
from demo.budget import timing as bench
from demo.budget.costs import products
from demo.engine.config import ConfigError, RunConfig
from demo.engine.data import input_shape as dataset_shape
from demo.engine.train import ROBUSTNESS_SAMPLES
from jacobian_penalty import jacobian_penalty

DEFAULT_FRACTION = 0.6  # of the available memory: the server, the page and other runs need the rest
# The worst measured/estimated ratio over benchmarks/memory_model.py's grid was below 1 / SAFETY
# (docs/memory.md): the check multiplies the step by this so that no run it lets through is
# larger than the model said.
SAFETY = 1.25
# The resident figure of one and the same small step varies by several MB between measurements
# (an mlp step of 17 MB measured 23 MB once, beside a browser test; glibc's arenas and the page
# cache's share come and go), which a factor on a step of a few MB does not cover: the estimate
# adds it. Against budgets of hundreds of MB and more it changes no decision.
RESIDENT_JITTER_MB = 8.0
PROBE_BATCH = 64  # the batch a probe measures at when the run's is larger
MAX_PROBED = 8  # products measured directly; more are extrapolated from the last two counts measured
MAX_DOUBLED = 64  # products a probe doubles up to; past it a hidden slope is bounded by p(K) / K
# A doubling of the products that raised the peak by less than this fraction is doubled again: in
# a slope read earlier the backward's temporaries still hide part of the graphs (measured: lenet's
# 784 columns at batch 2 with C = 2000 were 1.3x the estimate with 5%).
GROWTH_SEEN = 0.25
# Copies of the parameters a run holds: the weights, their gradients, Adam's two moments, and
# about two more of temporaries in Adam's step and the CPU copies of evaluations.
STATE_COPIES = 6
MAX_PROBES_KEPT = 256  # probes cached per server (each a few numbers); the oldest go first
# Each forward-mode pass with a graph makes a transient copy of a weight (a Linear's transposed
# weight) as large as the largest parameter, frees it, and keeps small saved tensors allocated
# after it; glibc cannot hand the hole back, so the process's resident memory grows by about one
# such copy per pass although torch's allocator (what a probe sees) counts it freed. Measured by
# RSS: mlp, exact by 784 columns, C = 2000, batch 2: 1.2 GB, against 30 MB of torch allocations.
FORWARD_MODE = frozenset({"columns", "jvp_probes"})
CEILING_FRACTION = 0.85  # of the memory available at start: the most the server may grow by
MB = 2**20


@dataclass(frozen=True)
class Probe:
    """Peak MB of one step of the run's kind of product, measured at `batch` for each count in
    `products` (0: a plain step), plus a plain step and the optimizer's state."""

    batch: int
    products: tuple[int, ...]
    peaks: tuple[float, ...]
    plain_mb: float
    state_mb: float  # parameters, their gradients and Adam's two moments
    # Heap that one forward-mode product leaves stranded until the backward (FORWARD_MODE below): 0 for
    # reverse-mode products.
    heap_per_product_mb: float = 0.0


@dataclass(frozen=True)
class Estimate:
    peak_mb: float
    graphs: float  # Jacobian products per sample whose graphs a step holds at once
    what: str  # which part dominates, in words


CGROUP = Path("/sys/fs/cgroup")  # where a container's memory limit is read (container_room_mb)
NO_LIMIT_BYTES = 2**60  # cgroup v1's "no limit" is 2^63 less a page


def budget_mb(device: torch.device, configured_mb: float | None = None) -> float:
    """`configured_mb` (the app's JP_MAX_MEMORY_MB, read by demo.app.limits), else DEFAULT_FRACTION of
    the available memory (of the GPU for CUDA)."""
    if configured_mb:
        return float(configured_mb)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return DEFAULT_FRACTION * free / MB
    return DEFAULT_FRACTION * available_mb()


def available_mb(cgroup: Path = CGROUP) -> float:
    """What can be allocated without swapping: MemAvailable from /proc/meminfo (else all pages),
    and no more than the room left under this process's container limit. In a container the
    machine's free memory says nothing of the limit, and past the limit the kernel ends the
    process: the budget and the ceiling must stay under it."""
    available = _proc_mb("/proc/meminfo", "MemAvailable")
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB if available is None else available
    room = container_room_mb(cgroup)
    return machine if room is None else min(machine, room)


def container_room_mb(cgroup: Path = CGROUP) -> float | None:
    """The memory limit of this process's cgroup less what the cgroup uses (v2: memory.max and
    memory.current; v1: memory/memory.limit_in_bytes and usage_in_bytes); None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (cgroup / limit_file).read_text().strip()
            usage = int((cgroup / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        # v2 writes "max" for none; v1 a number near 2^63 rounded to pages.
        if limit == "max" or not limit.isdigit() or int(limit) >= NO_LIMIT_BYTES:
            return None
        return max(int(limit) - usage, 0) / MB
    return None


def _proc_mb(path: str, key: str) -> float | None:
    """A "key: N kB" line of a /proc file in MB, or None where the file does not say."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def graphs_held(cfg: RunConfig, shape: tuple[int, ...], num_classes: int) -> float:
    """How many Jacobian products' graphs one training step keeps for its backward pass."""
    del shape  # the cost table reads the dataset's shape itself
    return float(products(cfg, num_classes).count)


def probe_batch(cfg: RunConfig) -> int:
    return min(cfg.batch_size, PROBE_BATCH)


def first_counts(count: int) -> tuple[int, ...]:
    """The product counts a probe measures first for a step of `count` products."""
    if count == 0:
        return (0,)
    if count <= MAX_PROBED:
        return (count,)
    return (MAX_PROBED // 2, MAX_PROBED)


def grows(small: float, large: float) -> bool:
    """Whether doubling the products visibly raised the peak: below that, the backward's own
    temporaries hide the graphs, and a slope read there would be too flat."""
    return large - small > max(GROWTH_SEEN * small, 0.05)


def step_mb(probe: Probe, count: int) -> float:
    """The step's peak at the probe's batch for `count` products (measured, or extrapolated in k
    from the last two counts measured)."""
    if count in probe.products:
        return probe.peaks[probe.products.index(count)]
    (k1, k2), (p1, p2) = probe.products[-2:], probe.peaks[-2:]
    per_product = max(0.0, (p2 - p1) / (k2 - k1))
    if not grows(p1, p2):  # the doubling stopped at MAX_DOUBLED with the graphs still hidden:
        per_product = max(per_product, p2 / k2)  # they are at most the whole peak
    return p2 + max(0, count - k2) * per_product


def estimate(cfg: RunConfig, probe: Probe, num_classes: int, *, below_probe: bool = False) -> Estimate:
    """The run's peak. Above the probe's batch the step scales through the origin (errs high);
    below it the probe's own figure stands, unless `below_probe` (advice on a smaller batch,
    which the check of that batch then measures at its own size)."""
    made = products(cfg, num_classes)
    # Through the origin from the probe's batch: a + bB <= (a + b b0) B / b0 when a >= 0 and B >= b0.
    scale = cfg.batch_size / probe.batch if below_probe else max(1.0, cfg.batch_size / probe.batch)
    train = step_mb(probe, made.count) * scale + made.count * probe.heap_per_product_mb
    attacks = probe.plain_mb * max(1.0, ROBUSTNESS_SAMPLES / probe.batch) if cfg.robustness else 0.0
    kind = {"rows": "reverse-mode row", "columns": "forward-mode column", "probes": "projection",
            "jvp_probes": "forward-mode probe", "differences": "finite difference", "plain": "plain"}[made.mode]
    what = (f"{made.count} {kind} graph(s) per sample in a batch of {cfg.batch_size}" if train >= attacks
            else f"the attacks on {ROBUSTNESS_SAMPLES} test points")
    return Estimate(probe.state_mb + SAFETY * max(train, attacks) + RESIDENT_JITTER_MB, float(made.count), what)


def measure_probe(cfg: RunConfig, num_classes: int, device: torch.device) -> Probe:
    """Peak memory of a forward + penalty + backward making the products a step of `cfg` makes
    (at most MAX_PROBED of them) at the probe's batch, and of a plain step. The optimizer's step
    is left out: its temporaries do not grow with the batch or the products."""
    shape = dataset_shape(cfg.dataset)
    options = cfg.model_options()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.build(cfg.arch, shape, num_classes, **options).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        batch = probe_batch(cfg)
        x = torch.rand((batch, *shape), device=device)
        y = torch.randint(num_classes, (batch,), device=device)
        made = products(cfg, num_classes)

        def measure(mode: str, count: int) -> float:
            step = _forward_backward(model, params, x, y, mode, count)
            release = lambda: model.zero_grad(set_to_none=True)  # noqa: E731
            allocated = bench.peak_memory_mb(step, device, release) or 0.0
            # On a CPU the kernel counts more than torch's allocator sees (timing.resident_growth_mb).
            resident = bench.resident_growth_mb(step, release) if device.type == "cpu" else None
            return max(allocated, resident or 0.0)

        counts = list(first_counts(made.count))
        peaks = [measure(made.mode, count) for count in counts]
        # Double the products until the graphs show above the backward's temporaries (or all are made).
        while len(counts) >= 2 and counts[-1] < min(made.count, MAX_DOUBLED) and not grows(*peaks[-2:]):
            counts.append(min(2 * counts[-1], made.count))
            peaks.append(measure(made.mode, counts[-1]))
        plain = peaks[0] if counts == [0] else measure("plain", 0)
    state = STATE_COPIES * _parameters(model) * 4 / MB
    heap = max((p.numel() for p in params), default=0) * 4 / MB if made.mode in FORWARD_MODE else 0.0
    return Probe(batch, tuple(counts), tuple(peaks), plain, state, heap)


def _forward_backward(model: nn.Module, params: list, x: torch.Tensor, y: torch.Tensor, mode: str, count: int):
    """A step that makes `count` products of kind `mode`, with the cross-entropy on the logits."""

    def first_outputs(t: torch.Tensor) -> torch.Tensor:
        return model(t)[:, :count]

    def step() -> None:
        if mode == "plain":
            loss = F.cross_entropy(model(x), y)
        elif mode == "rows":  # exact on the first `count` outputs: `count` reverse-mode rows
            _, term = jacobian_penalty(first_outputs, x, method="exact")
            loss = F.cross_entropy(model(x), y) + term
        else:  # columns are forward-mode products like jvp's probes: one dual forward each
            method = {"columns": "jvp", "jvp_probes": "jvp", "probes": "projection", "differences": "fd"}[mode]
            logits, term = jacobian_penalty(model, x, method=method, num_projections=count)
            loss = F.cross_entropy(logits, y) + term
        loss.backward(inputs=params)

    return step


class Estimator:
    """Probes cached by what they depend on (one per server, shared by its sessions: the numbers
    describe models, not visitors), and the check that refuses what would not fit."""

    def __init__(self, budget_mb: float | None = None) -> None:
        self.budget_mb = budget_mb  # MB; None or 0: DEFAULT_FRACTION of what is available
        self._probes: OrderedDict[tuple, Probe] = OrderedDict()
        self._lock = threading.Lock()

    def probe(self, cfg: RunConfig, num_classes: int, device: torch.device) -> Probe:
        made = products(cfg, num_classes)
        key = (cfg.arch, cfg.dataset, num_classes, device.type, cfg.width, cfg.depth, made.mode,
               first_counts(made.count), probe_batch(cfg), cfg.robustness or made.count == 0)
        with self._lock:
            if key not in self._probes:
                self._probes[key] = measure_probe(cfg, num_classes, device)
                while len(self._probes) > MAX_PROBES_KEPT:
                    self._probes.popitem(last=False)
            self._probes.move_to_end(key)
            return self._probes[key]

    def check(self, cfg: RunConfig, num_classes: int, device: torch.device) -> Estimate:
        """The estimate, or ConfigError in plain words when it exceeds the budget."""
        probe = self.probe(cfg, num_classes, device)
        found = estimate(cfg, probe, num_classes)
        budget = budget_mb(device, self.budget_mb)
        if found.peak_mb > budget:
            raise ConfigError(_refusal(cfg, found, budget, probe, num_classes))
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
        if estimate(cfg.replace(batch_size=middle), probe, num_classes, below_probe=True).peak_mb <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def set_ceiling(growth_mb: float | None = None) -> float | None:
    """Cap this process's address space (RLIMIT_AS) at its present size plus `growth_mb`, so an
    allocation past it fails (and the run that made it ends as out_of_memory) before the kernel
    ends the process. Returns the ceiling in MB, or None where none is set: not on Linux, or with
    CUDA (its driver reserves far more address space than it uses). `growth_mb` (the app's
    JP_MEMORY_CEILING_MB, read with its other limits): None for CEILING_FRACTION of the available
    memory; 0 turns it off."""
    growth = CEILING_FRACTION * available_mb() if growth_mb is None else growth_mb
    if growth == 0 or torch.cuda.is_available():
        return None
    size = address_space_mb()
    if size is None:
        return None
    limit = int((size + growth) * MB)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit / MB


def address_space_mb() -> float | None:
    """This process's virtual size (VmSize), or None where /proc does not say."""
    return _proc_mb("/proc/self/status", "VmSize")


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _size(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"
