"""The forum thread's Jacobian penalty next to ours, step by step on the same model and data.

The PyTorch forum thread the project started from ("How to penalize norm of end-to-end
Jacobian") does, for every batch:

    x.requires_grad_()
    y = model(x)                                       # (B, C)
    y.backward(torch.ones_like(y), retain_graph=True)  # writes x.grad AND every parameter's .grad
    penalty = x.grad.data.norm(2)                      # .data: a constant without a graph
    loss = cross_entropy(y, t) + strength * penalty
    loss.backward()                                    # adds onto the .grad left by the first backward
    optimizer.step()                                   # and no zero_grad() anywhere in the loop

Three things go wrong, and `compare` measures each of them:

1. `.data` detaches: d penalty / d theta = 0, so the penalty cannot lower ||J||.
2. `y.backward(ones)` also accumulates d(sum y)/d theta into every parameter's `.grad`, and without
   `zero_grad()` every earlier step's gradient stays there too: the optimiser follows junk.
3. A ones vector gives one vector-Jacobian product, 1^T J_b = the column sums of J_b, so the
   "norm" is sqrt(sum_b ||J_b^T 1||^2), not the Frobenius norm sqrt(sum_b ||J_b||_F^2).

Ours is `jacobian_penalty.jacobian_penalty` (torch.autograd.grad with create_graph=True, no `.grad`
written) with `zero_grad()` before each step. Pure torch: the UI draws what `compare` yields.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demo.evaluation.robustness import accuracy, checkpoint
from jacobian_penalty import jacobian_norms, jacobian_penalty

__all__ = [
    "APPROACHES",
    "column_sum_norms",
    "compare",
    "ours_penalty",
    "parameter_gradient",
    "thread_penalty",
]

APPROACHES = ("thread", "ours")
EVAL_SAMPLES = 256  # fixed test subset for the exact ||J||_F and the column-sum norms


def thread_penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The thread's steps 1-3, as written: returns (y, penalty) with penalty = ||x.grad||_2.

    Side effects, as in the thread: writes x.grad (x must be a leaf) and adds d(sum y)/d theta to
    every parameter's `.grad`. The penalty is computed from `.data`, so it has no graph.
    """
    x.requires_grad_(True)
    y = model(x)
    y.backward(torch.ones_like(y), retain_graph=True)
    return y, x.grad.data.norm(2)


def ours_penalty(model: nn.Module, x: Tensor, *, method: str = "exact", generator=None) -> tuple[Tensor, Tensor]:
    """The library's penalty: (y, batch mean of ||J_b||_F^2), differentiable w.r.t. the parameters."""
    return jacobian_penalty(model, x, method=method, generator=generator)


def parameter_gradient(value: Tensor, parameters: Sequence[Tensor]) -> list[Tensor]:
    """d value / d theta for each parameter, zeros where value does not depend on it.

    A value without a graph (the thread's `.data` penalty) has an exactly zero gradient.
    Uses torch.autograd.grad: no parameter's `.grad` is written.
    """
    if not value.requires_grad:
        return [torch.zeros_like(p) for p in parameters]
    grads = torch.autograd.grad(value, list(parameters), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]


def column_sum_norms(model: nn.Module, x: Tensor) -> Tensor:
    """||J_b^T 1|| per sample, shape (B,): what a ones vector in backward() measures."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        y = model(x_in)
        (vjp,) = torch.autograd.grad(y, x_in, torch.ones_like(y))  # (B, ...) = 1^T J_b per sample
    return vjp.reshape(x.shape[0], -1).norm(dim=1)


def compare(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    penalty: float = 0.1,
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    method: str = "projection",
    report_every: int = 10,
    warmup_steps: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, dict[str, float]]]:
    """Train two copies of `model` side by side, the thread's way and ours, on the same batches.

    With `warmup_steps` > 0 both copies start from `model` trained that many steps with plain
    cross-entropy: a model that has learned something has a large ||J||, so whether a penalty
    lowers it shows at once (from a fresh initialisation ||J|| is small and grows as it learns).
    Yields {"thread": report, "ours": report} at step 0 and every `report_every` steps, where a
    report holds: step, ce_loss, penalty_value (what the approach adds before lambda),
    penalty_grad_norm (||d penalty / d theta||), grad_pollution (||g_used - g_loss|| / ||g_loss||,
    g_used the .grad the optimiser stepped with, g_loss the true gradient of the written loss),
    test_accuracy, jacobian_norm (mean exact ||J||_F on a test subset) and column_sum_norm
    (mean ||J^T 1|| there). Both copies use Adam with learning rate `lr`. `should_stop` is asked at
    every warm-up and training step (robustness.checkpoint raises Stopped when it says yes).
    """
    batches = torch.Generator(device=x_train.device).manual_seed(seed)
    probes = torch.Generator(device=x_train.device).manual_seed(seed + 1)
    x_eval, y_eval = x_test[:EVAL_SAMPLES], y_test[:EVAL_SAMPLES]
    size = min(batch_size, x_train.shape[0])

    def batch() -> tuple[Tensor, Tensor]:
        idx = torch.randperm(x_train.shape[0], generator=batches, device=x_train.device)[:size]
        return x_train[idx], y_train[idx]

    start = copy.deepcopy(model)
    if warmup_steps > 0:
        _warm_up(start, batch, warmup_steps, lr, should_stop)
    models = {name: copy.deepcopy(start) for name in APPROACHES}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=lr) for name, m in models.items()}
    for m in models.values():
        m.zero_grad(set_to_none=True)

    yield {name: _evaluate(m, x_eval, y_eval, step=0) for name, m in models.items()}
    for step in range(1, steps + 1):
        checkpoint(should_stop)
        x, t = batch()
        report = step % report_every == 0 or step == steps
        stats = {
            "thread": _thread_step(models["thread"], optimizers["thread"], x, t, penalty, report),
            "ours": _our_step(models["ours"], optimizers["ours"], x, t, penalty, method, probes, report),
        }
        if report:
            yield {
                name: {**_evaluate(m, x_eval, y_eval, step=step), **stats[name]} for name, m in models.items()
            }


def _warm_up(model: nn.Module, batch, steps: int, lr: float, should_stop=None) -> None:
    """Plain cross-entropy training, the common starting point of both approaches."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        checkpoint(should_stop)
        x, t = batch()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), t).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)


def _thread_step(model, optimizer, x, t, strength, measure) -> dict[str, float]:
    x = x.detach().clone()  # a fresh leaf, as a new batch from a DataLoader would be
    y, term = thread_penalty(model, x)
    ce = F.cross_entropy(y, t)
    loss = ce + strength * term
    stats = _loss_gradients(model, ce, loss, term) if measure else None
    loss.backward()  # onto the .grad that y.backward(ones) and all earlier steps left
    if measure:
        stats["grad_pollution"] = _pollution(model, stats.pop("_g_loss"))
    optimizer.step()
    return stats or {}


def _our_step(model, optimizer, x, t, strength, method, probes, measure) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    y, term = ours_penalty(model, x, method=method, generator=probes)
    ce = F.cross_entropy(y, t)
    loss = ce + strength * term
    stats = _loss_gradients(model, ce, loss, term) if measure else None
    loss.backward()
    if measure:
        stats["grad_pollution"] = _pollution(model, stats.pop("_g_loss"))
    optimizer.step()
    return stats or {}


def _loss_gradients(model, ce, loss, term) -> dict:
    """Numbers for a report, taken before loss.backward(): the gradient the loss as written has."""
    params = list(model.parameters())
    term_grad = parameter_gradient(term, params)
    return {
        "ce_loss": ce.item(),
        "penalty_value": term.item(),
        "penalty_grad_norm": _norm(term_grad),
        "_g_loss": [g.detach() for g in parameter_gradient(loss, params)],
    }


def _pollution(model: nn.Module, g_loss: list[Tensor]) -> float:
    """||.grad - g_loss|| / ||g_loss||: 0 when .grad is exactly the gradient of the loss."""
    used = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    diff = _norm([u - g for u, g in zip(used, g_loss, strict=True)])
    return diff / max(_norm(g_loss), 1e-12)


def _norm(tensors: list[Tensor]) -> float:
    return torch.sqrt(sum(t.detach().pow(2).sum() for t in tensors)).item()


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, *, step: int) -> dict[str, float]:
    was_training = model.training
    model.eval()
    test_accuracy = accuracy(model, x, y)
    norms = jacobian_norms(model, x)
    column_sums = column_sum_norms(model, x)
    model.train(was_training)
    return {
        "step": step,
        "test_accuracy": test_accuracy,
        "jacobian_norm": norms.mean().item(),
        "column_sum_norm": column_sums.mean().item(),
    }
