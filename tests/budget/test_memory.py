"""The memory budget: the estimate against a measured peak, the budget from the environment, the
refusal in plain words, and a CPU allocation failure ending a run as CUDA's does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from demo.budget import memory
from demo.budget import timing as bench
from demo.engine import train as train_module
from demo.engine.config import ConfigError, RunConfig
from jacobian_penalty import jacobian_penalty

CPU = torch.device("cpu")


def measured_peak_mb(arch: str, method: str, num_projections: int, batch: int, classes: int) -> float:
    """The peak of one forward + penalty + backward, measured the same way as the probe, at full size."""
    torch.manual_seed(0)
    model = models.build(arch, (1, 8, 8), classes)
    x, y = torch.rand(batch, 1, 8, 8), torch.randint(classes, (batch,))
    params = list(model.parameters())

    def step():
        logits, penalty = jacobian_penalty(model, x, method=method, num_projections=num_projections)
        (F.cross_entropy(logits, y) + penalty).backward(inputs=params)

    step()
    return bench.peak_memory_mb(step, CPU, lambda: model.zero_grad(set_to_none=True))


CASES = [("lenet", "exact", 1), ("vit", "exact", 1), ("vit", "projection", 3)]


@pytest.mark.parametrize(("arch", "method", "n"), CASES)
def test_the_estimate_is_within_a_factor_of_the_measured_peak(arch, method, n):
    probe = memory.measure_probe(arch, (1, 8, 8), 10, CPU)
    cfg = RunConfig(dataset="digits", arch=arch, method=method, num_projections=n, batch_size=96, robustness=False)
    estimated = memory.estimate(cfg, probe, 10).peak_mb - probe.state_mb
    actual = measured_peak_mb(arch, method, n, 96, 10)
    assert 0.6 < estimated / actual < 2.5, (estimated, actual)


def test_graphs_held_follow_the_method():
    shape = (1, 28, 28)
    assert memory.graphs_held(RunConfig(dataset="synthetic", method="exact"), shape, 100) == 100
    assert memory.graphs_held(RunConfig(dataset="moons", method="exact"), (2,), 2) == 2
    assert memory.graphs_held(RunConfig(dataset="synthetic", num_projections=3), shape, 100) == 3
    assert memory.graphs_held(RunConfig(dataset="synthetic", method="jvp", num_projections=3), shape, 100) == 9
    assert memory.graphs_held(RunConfig(dataset="synthetic", penalty=0.0), shape, 100) == 0


def test_the_budget_comes_from_the_environment_or_the_available_memory():
    assert memory.budget_mb(CPU, {"JP_MAX_MEMORY_MB": "1234"}) == 1234
    assert 0 < memory.budget_mb(CPU, {}) <= memory.available_mb()
    for bad in ("lots", "-5", "0", "inf"):
        with pytest.raises(ValueError, match="JP_MAX_MEMORY_MB"):
            memory.budget_mb(CPU, {"JP_MAX_MEMORY_MB": bad})


def test_a_run_over_the_budget_is_refused_with_what_to_lower():
    estimator = memory.Estimator({"JP_MAX_MEMORY_MB": "1500"})
    big = RunConfig(dataset="synthetic", arch="vit", method="exact", batch_size=512)
    with pytest.raises(ConfigError) as caught:
        estimator.check(big, 100, CPU)
    message = str(caught.value)
    assert "1.5 GB" in message and "batch size of" in message and "'projection' method" in message
    fitting = int(message.split("batch size of ")[1].split()[0])
    # The batch it names fits, and one more would not: the advice is the largest that passes.
    estimator.check(big.replace(batch_size=fitting), 100, CPU)
    with pytest.raises(ConfigError):
        estimator.check(big.replace(batch_size=fitting + 1), 100, CPU)


def test_a_cpu_allocation_failure_ends_the_run_as_out_of_memory_and_the_next_run_works(monkeypatch):
    real, calls = train_module.take_step, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 8:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 25769803776 bytes.")
        return real(*args)

    events = list(train_module.train(RunConfig(steps=30, report_every=5, eval_every=10, robustness=False),
                                     step=failing))
    progress = [e for e in events if isinstance(e, train_module.Progress)]
    assert progress and progress[-1].step == 5  # what came before the failure reached the consumer
    assert events[-1].status == "out_of_memory" and events[-1].message.startswith("The machine ran out of memory")
    assert list(train_module.train(RunConfig(steps=10, robustness=False)))[-1].status == "completed"


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch):
    def broken(*args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        list(train_module.train(RunConfig(steps=10, robustness=False), step=broken))
