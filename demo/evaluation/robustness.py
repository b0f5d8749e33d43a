"""Accuracy of a classifier under perturbed inputs: Gaussian noise, FGSM and PGD.

For a classifier f with logits f(x) of shape (N, C) and labels y, the robust accuracy at strength
s is the fraction of samples still classified correctly after a perturbation of strength s:

    acc(s) = 1/N sum_n [argmax_c f(x_n + delta_n(s))_c == y_n]

- Gaussian noise: delta = sigma * z, z ~ N(0, I). Measures sensitivity to random perturbations.
- FGSM (Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples",
  arXiv:1412.6572): one signed-gradient step of the cross-entropy L under the L-inf norm,

      x_adv = x + epsilon * sign(grad_x L(f(x), y)).

- PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks",
  arXiv:1706.06083): projected gradient ascent on L inside the L-inf ball of radius epsilon,
  from a uniform random start in the ball,

      x_{k+1} = Proj_{||x' - x||_inf <= epsilon}(x_k + alpha * sign(grad L(f(x_k), y))),

  with step alpha = 2.5 epsilon / steps by default, a common choice: large enough that the
  iterates can cross the ball and reach its boundary from any start.

Every perturbed input is clipped to the data's value range, (0, 1) for images, so that the
perturbed input is still a valid input; 2-D points are unbounded (value_range None). Images are
perturbed in pixel space [0, 1] (MNIST convention: L-inf epsilon 0.1 to 0.3).

Gradients are taken with respect to the input only, with torch.autograd.grad: no parameter's
`.grad` is ever written. The model runs in eval mode (every submodule's mode is restored
afterwards), on the device and dtype of x. All randomness comes from seeded torch.Generators, so
a seed fixes the results. A robust accuracy from FGSM alone overstates robustness; PGD with
several steps and a random start is the honest check (Jacobian regularisation lowers the
sensitivity to small perturbations but guarantees no robustness).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTACKS",
    "Stopped",
    "checkpoint",
    "STRENGTH_NAMES",
    "accuracy",
    "default_grid",
    "evaluate",
    "fgsm",
    "gaussian_noise",
    "perturbed_examples",
    "pgd",
]

ValueRange = tuple[float, float] | None

ATTACKS = ("noise", "fgsm", "pgd")
# The name of each attack's strength in records: noise has a sigma, the L-inf attacks an epsilon.
STRENGTH_NAMES = MappingProxyType({"noise": "sigma", "fgsm": "epsilon", "pgd": "epsilon"})

# (sigmas, epsilons) per dataset kind, in input units. Images live in [0, 1]: L-inf epsilons up
# to 0.3 follow the MNIST convention; sigma 0.5 is heavy noise. 2-D points are unbounded, with
# coordinates of order 1 and gaps between classes of a few tenths (two moons: about 0.5), so
# the grids reach that scale, where an undefended model loses most of its accuracy.
_GRIDS = MappingProxyType(
    {
        "image": ((0.0, 0.1, 0.2, 0.3, 0.5), (0.0, 0.05, 0.1, 0.2, 0.3)),
        "points": ((0.0, 0.1, 0.2, 0.4, 0.8), (0.0, 0.05, 0.1, 0.2, 0.4)),
    }
)

# Default PGD step as a multiple of epsilon / steps: 2.5 lets the iterates cross the ball.
PGD_STEP_FACTOR = 2.5

StopCheck = Callable[[], bool] | None


class Stopped(Exception):
    """An evaluation was abandoned between two of its pieces because its `should_stop()` said so."""


def checkpoint(should_stop: StopCheck) -> None:
    """Raise Stopped when asked to: evaluations call it between attack levels and batches, so that
    a Stop ends the work within one piece (seconds at most), not after the whole grid."""
    if should_stop is not None and should_stop():
        raise Stopped


def default_grid(kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (sigmas, epsilons) to evaluate for a dataset kind, "image" or "points".

    Both start at 0 (clean accuracy) and increase.
    """
    if kind not in _GRIDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(_GRIDS)}")
    return _GRIDS[kind]


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of samples of x (N, ...) whose argmax logit equals the label y (N,)."""
    _check_batch(x, y, batch_size)
    with _eval_mode(model), torch.no_grad():
        correct = sum(
            _correct(model, x[i : i + batch_size], y[i : i + batch_size])
            for i in range(0, len(x), batch_size)
        )
    return float(correct) / len(x)


def gaussian_noise(
    x: Tensor, sigma: float, *, value_range: ValueRange, generator: torch.Generator | None
) -> Tensor:
    """x + sigma * z with z ~ N(0, I), clipped to value_range unless it is None.

    The generator may live on any device: z is drawn there and moved to x's device, so a CPU
    generator gives the same noise whatever x's device. None uses torch's global generator.
    """
    _check_strength("sigma", sigma)
    _check_range(value_range)
    noise = _randn(x, generator)
    return _clip(x.detach() + sigma * noise, value_range)


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, epsilon: float, *, value_range: ValueRange
) -> Tensor:
    """Fast gradient sign method: x + epsilon * sign(grad_x CE(f(x), y)), clipped to value_range.

    An L-inf attack of radius epsilon (Goodfellow et al. 2015). Returns a detached tensor like x.
    """
    _check_strength("epsilon", epsilon)
    _check_range(value_range)
    x = x.detach()
    with _eval_mode(model):
        x_adv = x + epsilon * _loss_gradient_sign(model, x, y)
    return _clip(x_adv, value_range)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    value_range: ValueRange,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent on the cross-entropy under L-inf (Madry et al. 2018).

    Starts at x + u with u uniform in [-epsilon, epsilon]^D (or at x if random_start is False),
    then takes `steps` signed-gradient steps of size step_size (default 2.5 epsilon / steps),
    projecting onto the epsilon-ball around x and clipping to value_range after each. The
    generator (any device; None uses torch's global one) draws the random start. Returns a
    detached tensor like x.
    """
    _check_strength("epsilon", epsilon)
    _check_range(value_range)
    if steps < 1:
        raise ValueError(f"PGD needs at least one step, got steps={steps}")
    if step_size is None:
        step_size = PGD_STEP_FACTOR * epsilon / steps
    _check_strength("step_size", step_size)
    x = x.detach()
    x_adv = x
    if random_start:
        uniform = _rand(x, generator)  # (N, ...) in [0, 1)
        x_adv = _project(x, x + epsilon * (2 * uniform - 1), epsilon, value_range)
    with _eval_mode(model):
        for _ in range(steps):
            x_adv = x_adv + step_size * _loss_gradient_sign(model, x_adv, y)
            x_adv = _project(x, x_adv, epsilon, value_range)
    return x_adv


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    value_range: ValueRange,
    sigmas: tuple[float, ...] | list[float],
    epsilons: tuple[float, ...] | list[float],
    pgd_steps: int = 10,
    seed: int = 0,
    batch_size: int = 512,
    should_stop: StopCheck = None,
) -> dict[str, list[dict[str, float]]]:
    """Accuracy under Gaussian noise at each sigma and under FGSM and PGD at each epsilon.

    Returns {"noise": [{"sigma", "accuracy"}], "fgsm": [{"epsilon", "accuracy"}], "pgd": [...]}
    with plain Python floats (JSON-able), in the order of the grids. Strength 0 reports the clean
    accuracy without running an attack. Each noise level and each PGD level draws from its own
    generator seeded with `seed`: a level's result does not depend on the rest of the grid, and
    all levels see the same underlying draws scaled by their strength (common random numbers),
    so the curves are smooth in the strength.
    """
    _check_batch(x, y, batch_size)
    _check_range(value_range)
    grids = {"noise": tuple(sigmas), "fgsm": tuple(epsilons), "pgd": tuple(epsilons)}
    for kind, grid in grids.items():
        for strength in grid:
            _check_strength(STRENGTH_NAMES[kind], strength)
    x, y = x.detach(), y.detach()
    # FGSM is deterministic; its generators go unused.
    generators = {kind: [_generator(x, seed) for _ in grid] for kind, grid in grids.items()}
    # Correct counts per level stay on the device until the end: no host sync per batch.
    counts = {
        kind: torch.zeros(len(grid), dtype=torch.long, device=x.device)
        for kind, grid in grids.items()
    }
    with _eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with torch.no_grad():
                clean = _correct(model, xb, yb)
            for kind, grid in grids.items():
                for i, strength in enumerate(grid):
                    if strength == 0:
                        counts[kind][i] += clean
                        continue
                    checkpoint(should_stop)  # raises Stopped: a level takes at most seconds
                    x_perturbed = _perturb(
                        model, xb, yb, kind, strength, value_range, generators[kind][i], pgd_steps
                    )
                    with torch.no_grad():
                        counts[kind][i] += _correct(model, x_perturbed, yb)
    return {
        kind: [
            {STRENGTH_NAMES[kind]: float(strength), "accuracy": count / len(x)}
            for strength, count in zip(grid, counts[kind].tolist(), strict=True)
        ]
        for kind, grid in grids.items()
    }


def perturbed_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    kind: str,
    strength: float,
    value_range: ValueRange,
    seed: int = 0,
    pgd_steps: int = 10,
) -> tuple[Tensor, Tensor]:
    """A few inputs perturbed by `kind` ("noise", "fgsm" or "pgd") at `strength` (sigma or
    epsilon), and the model's predicted classes for them: (x_perturbed like x, predictions (N,)).

    For a gallery in the UI. Seeded like `evaluate`: with the same seed, these inputs get the
    same noise and PGD start as they would as the first batch of `evaluate`.
    """
    if kind not in ATTACKS:
        raise ValueError(f"unknown perturbation {kind!r}; expected one of {list(ATTACKS)}")
    _check_strength("strength", strength)
    x, y = x.detach(), y.detach()
    with _eval_mode(model):
        x_perturbed = _perturb(
            model, x, y, kind, strength, value_range, _generator(x, seed), pgd_steps
        ).clone()  # strength 0 returns x itself
        with torch.no_grad():
            predictions = model(x_perturbed).argmax(dim=1)
    return x_perturbed, predictions


def _perturb(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    kind: str,
    strength: float,
    value_range: ValueRange,
    generator: torch.Generator,
    pgd_steps: int,
) -> Tensor:
    """x perturbed by one of ATTACKS at strength (sigma or epsilon); x itself at strength 0."""
    if strength == 0:
        return x
    if kind == "noise":
        return gaussian_noise(x, strength, value_range=value_range, generator=generator)
    if kind == "fgsm":
        return fgsm(model, x, y, strength, value_range=value_range)
    return pgd(model, x, y, strength, steps=pgd_steps, value_range=value_range, generator=generator)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the model in eval mode (dropout off, norms on running statistics), then restore
    every submodule's own mode: a model may be partly frozen in eval on purpose."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _loss_gradient_sign(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """sign(d CE / d x) for a batch x (N, ...), without touching any parameter's `.grad`."""
    # enable_grad: callers (a UI handler, an evaluation loop) may be inside torch.no_grad().
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        # Summed, not averaged: each sample's gradient then does not depend on the batch size.
        # Only the sign is used, so the scale changes nothing else.
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def _project(x: Tensor, x_adv: Tensor, epsilon: float, value_range: ValueRange) -> Tensor:
    """Nearest point to x_adv in the L-inf ball of radius epsilon around x, clipped to the range.

    Clipping after the projection keeps the ball: x itself lies in the range.
    """
    delta = torch.clamp(x_adv - x, min=-epsilon, max=epsilon)
    return _clip(x + delta, value_range).detach()


def _clip(x: Tensor, value_range: ValueRange) -> Tensor:
    return x if value_range is None else torch.clamp(x, min=value_range[0], max=value_range[1])


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Number of correct predictions in a batch, as a 0-d tensor on the device (no host sync)."""
    return (model(x).argmax(dim=1) == y).sum()


def _generator(like: Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=like.device).manual_seed(seed)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal numbers shaped like `like`, on its device and dtype.

    A generator lives on one device: draw there and move, so a CPU generator can seed a CUDA run.
    """
    if generator is None:
        return torch.randn_like(like)
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


def _rand(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform numbers in [0, 1) shaped like `like`, on its device and dtype (see _randn)."""
    if generator is None:
        return torch.rand_like(like)
    uniform = torch.rand(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return uniform.to(like.device)


def _check_strength(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be a number >= 0, got {value}")


def _check_range(value_range: ValueRange) -> None:
    if value_range is not None and not value_range[0] < value_range[1]:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")


def _check_batch(x: Tensor, y: Tensor, batch_size: int) -> None:
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(
            f"need as many labels as inputs and at least one, got {len(x)} and {len(y)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
