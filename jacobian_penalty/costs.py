"""What each method costs: one table of passes, time and memory, read by everyone who estimates.

A call of `jacobian_penalty` on a batch of B samples with D inputs and C outputs per sample does
`products` Jacobian products (or forward differences) per sample:

    exact       min(C, D): C rows by reverse-mode VJPs, or D columns by forward-mode JVPs
    projection  n VJPs with random output directions, independent of C
    jvp         n JVPs with random input directions (forward mode), independent of C
    fd          n extra forward passes along random input directions

A training step then backpropagates through all of it. In units of one plain cross-entropy step
(forward + backward, about 3 forward passes):

    time_factor = 1 + PASSES[mode] * products      (a plain step is 1)
    graphs      = GRAPHS[mode] * products          (graphs held for the backward, in units of one
                                                   projection's double-backward graph)

The factors below were measured on this project's models (benchmarks/results/penalty_cost_cpu.md,
memory_model_cpu.md): a VJP with create_graph and the backward through it is about 2 plain steps;
forward mode keeps the tangent's activations beside the primal's and measured about 3 graphs a
probe; a forward difference is one forward and one more backward, about 1 step.

`plan(...)` is the only place these numbers live: the library's `method="auto"`, the app's
ZeroGPU duration and its memory budget all read it, so the app cannot show two different costs for
one method. (The duration under the app's Steps is not a model: it times a few real steps.)
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["AUTO_EXACT_COST_RATIO", "MODES", "Plan", "plan"]

# mode -> (time in plain steps per product, graphs held per product)
MODES = MappingProxyType({
    "rows": (2.0, 1.0),         # reverse mode: VJP with create_graph, then backward through it
    "columns": (2.0, 3.0),      # forward mode by columns: a JVP's primal and tangent graphs
    "probes": (2.0, 1.0),       # projection: one VJP per random output direction
    "jvp_probes": (2.0, 3.0),   # jvp: one dual-number forward per probe, then backward through it
    "differences": (1.0, 1.0),  # fd: one more forward per direction, no double backward
})


# method="auto" takes the exact norm when it costs at most this many times the estimator it would
# otherwise use (projection with the same num_projections): no variance is worth a little time.
AUTO_EXACT_COST_RATIO = 2.0


@dataclass(frozen=True)
class Plan:
    """How one call of a method runs on a batch, and what it costs relative to a plain step."""

    method: str
    mode: str  # one of MODES
    products: int  # Jacobian products (or extra forwards) per sample per call
    time_factor: float  # a training step's time over a plain cross-entropy step's
    graphs: float  # graphs held for the backward, in units of one projection's graph
    forward_mode: bool  # goes through forward-mode AD
    reason: str  # one sentence: why this direction


def plan(method: str, *, inputs: int, outputs: int, num_projections: int = 1,
         forward_mode_safe: bool = True) -> Plan:
    """The plan of `method` for samples of `inputs` numbers in and `outputs` numbers out.

    forward_mode_safe: False when the model has a layer whose forward-mode derivative is wrong or
    missing; exact then goes by rows whatever the shapes.

    method="auto" returns the plan of the method it picks (its `method` field says which): exact
    by rows when C is small, by columns when D is small and forward mode is safe (each costing at
    most AUTO_EXACT_COST_RATIO times the estimator), projection otherwise. `jacobian_penalty(...,
    method="auto", explain=True)` returns the same plan, so the app's estimate and the library's
    choice come from one rule.
    """
    if method == "auto":
        exact = plan("exact", inputs=inputs, outputs=outputs, forward_mode_safe=forward_mode_safe)
        estimator = plan("projection", inputs=inputs, outputs=outputs, num_projections=num_projections)
        if exact.time_factor <= AUTO_EXACT_COST_RATIO * estimator.time_factor:
            return _with_reason(exact, f"auto chose {exact.reason}, {exact.time_factor:g}x a plain step, at most "
                                       f"{AUTO_EXACT_COST_RATIO:g}x projection's {estimator.time_factor:g}x")
        return _with_reason(estimator, f"auto chose projection ({estimator.reason}), {estimator.time_factor:g}x "
                                       f"a plain step: exact would be {exact.time_factor:g}x ({exact.reason})")
    if method == "exact":
        if inputs < outputs and forward_mode_safe:
            return _plan(method, "columns", inputs,
                         f"exact by columns: {inputs} inputs are fewer than {outputs} outputs")
        why = (f"exact by rows: {outputs} outputs" + (" (forward mode is unsafe for this model)"
                                                      if inputs < outputs else f", not more than {inputs} inputs"))
        return _plan(method, "rows", outputs, why)
    if method == "projection":
        return _plan(method, "probes", num_projections, f"{num_projections} random output projection(s)")
    if method == "jvp":
        return _plan(method, "jvp_probes", num_projections, f"{num_projections} forward-mode input probe(s)")
    if method == "fd":
        return _plan(method, "differences", num_projections, f"{num_projections} finite difference(s)")
    raise ValueError(f"Unknown method {method!r}; choose from exact, projection, jvp, fd, auto.")


def _plan(method: str, mode: str, products: int, reason: str) -> Plan:
    time_per, graphs_per = MODES[mode]
    return Plan(method, mode, products, 1.0 + time_per * products, graphs_per * products,
                mode in ("columns", "jvp_probes"), reason)


def _with_reason(p: Plan, reason: str) -> Plan:
    return Plan(p.method, p.mode, p.products, p.time_factor, p.graphs, p.forward_mode, reason)
