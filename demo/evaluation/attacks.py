"""Attacks that do not trust the model's gradient, and checks that flag gradient masking.

A model can fool gradient attacks without being robust: its gradients point nowhere useful
(saturated units, shattered or obfuscated gradients), so FGSM and PGD find nothing while a
perturbation that breaks it exists. AutoAttack's authors (Croce & Hein 2020, "Reliable evaluation
of adversarial robustness with an ensemble of diverse parameter-free attacks", arXiv:2003.01690)
re-evaluated published defences and saw reported robust accuracies fall, on MNIST from 64% to 0%.
So beside noise, FGSM and PGD a run is also attacked by

- Square (Andriushchenko et al. 2020, arXiv:1912.00049): a random search over square-shaped L-inf
  perturbations that reads only the model's outputs, never a gradient;
- APGD-CE (Croce & Hein 2020), AutoAttack's step-size-free PGD, in the "thorough" evaluation,

both from torchattacks (a well-kept library, tested against its reference implementations), and
the results are read for the signs of masking: PGD weaker than FGSM, the gradient-free attack
stronger than the gradient ones, and accuracy that does not fall to chance when epsilon is so
large that any input can be reached.

torchattacks works on inputs in [0, 1]. Images are there already; 2-D points are mapped into a
box that holds every point and its epsilon-ball, with one scale for all coordinates, so an L-inf
ball stays an L-inf ball (its radius divided by the scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor, nn

ValueRange = tuple[float, float] | None

SQUARE_SAMPLES, SQUARE_QUERIES = 200, 100  # the default evaluation: seconds on 2 CPU cores
THOROUGH_SQUARE_SAMPLES, THOROUGH_SQUARE_QUERIES = 500, 1000
APGD_STEPS = 20
# Accuracy differences below this are noise (Square runs on a subset of the PGD points).
TOLERANCE = 0.05
# An epsilon that reaches every input: images span [0, 1]; 2-D points lie within a few units.
UNBOUNDED_EPSILON = MappingProxyType({"image": 1.0, "points": 4.0})


@dataclass(frozen=True)
class _Box:
    """An affine map of the data into [0, 1]: u = (x - low) / scale, one scale for all coordinates."""

    low: float
    scale: float

    @classmethod
    def around(cls, x: Tensor, value_range: ValueRange, margin: float) -> _Box:
        if value_range is not None:
            low, high = value_range
            return cls(float(low), float(high - low))
        low, high = float(x.min()) - margin, float(x.max()) + margin
        return cls(low, max(high - low, 1e-6))

    def to_unit(self, x: Tensor) -> Tensor:
        return (x - self.low) / self.scale

    def from_unit(self, u: Tensor) -> Tensor:
        return self.low + u * self.scale


class _InBox(nn.Module):
    """The model as torchattacks sees it: images (N, C, H, W) in [0, 1], mapped back to the data's
    shape and range before the forward (2-D points travel as 1 x 1 x D images)."""

    def __init__(self, model: nn.Module, box: _Box, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.box, self.shape = model, box, shape

    def forward(self, u: Tensor) -> Tensor:
        return self.model(self.box.from_unit(u).reshape(u.shape[0], *self.shape))


def square(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, *, value_range: ValueRange,
           queries: int = SQUARE_QUERIES, seed: int = 0, margin: float | None = None) -> Tensor:
    """x perturbed by the Square attack within the L-inf ball of radius epsilon (a detached tensor)."""
    return _attack("Square", model, x, y, epsilon, value_range, margin,
                   n_queries=queries, seed=seed, loss="margin")


def apgd(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, *, value_range: ValueRange,
         steps: int = APGD_STEPS, seed: int = 0, margin: float | None = None) -> Tensor:
    """x perturbed by APGD on the cross-entropy within the L-inf ball of radius epsilon."""
    return _attack("APGD", model, x, y, epsilon, value_range, margin, steps=steps, seed=seed, loss="ce")


def _attack(name: str, model: nn.Module, x: Tensor, y: Tensor, epsilon: float, value_range: ValueRange,
            margin: float | None, **options) -> Tensor:
    if epsilon == 0:
        return x.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchattacks' own deprecation warnings at import
        import torchattacks
    box = _Box.around(x, value_range, epsilon if margin is None else margin)
    wrapped = _InBox(model, box, tuple(x.shape[1:]))
    as_image = x if x.dim() == 4 else x.reshape(x.shape[0], 1, 1, -1)  # (N, C, H, W) for torchattacks
    was_training = [m.training for m in model.modules()]
    try:
        attack = getattr(torchattacks, name)(wrapped, norm="Linf", eps=epsilon / box.scale, **options)
        u_adv = attack(box.to_unit(as_image.detach()).clamp(0, 1), y)
    finally:
        for module, mode in zip(model.modules(), was_training, strict=True):
            module.train(mode)
    return box.from_unit(u_adv).reshape(x.shape).detach()


def masking_flags(results: dict[str, list[dict[str, float]]], *, kind: str, num_classes: int) -> list[str]:
    """Plain sentences for each sign of gradient masking in a run's robustness results."""
    flags = []
    by_epsilon = {attack: {r["epsilon"]: r["accuracy"] for r in rows}
                  for attack, rows in results.items() if rows and "epsilon" in rows[0]}
    fgsm, pgd = by_epsilon.get("fgsm", {}), by_epsilon.get("pgd", {})
    weaker = [e for e in pgd if e in fgsm and e > 0 and pgd[e] > fgsm[e] + TOLERANCE]
    if weaker:
        flags.append(f"PGD left more accuracy than FGSM at epsilon {_list(weaker)}: a many-step attack should "
                     "do at least as well as its first step, so the gradients are misleading it (gradient masking).")
    for name in ("square", "apgd"):
        attack = by_epsilon.get(name, {})
        stronger = [e for e in attack if e in pgd and e > 0 and attack[e] < pgd[e] - TOLERANCE]
        if stronger:
            what = "the gradient-free Square attack" if name == "square" else "APGD"
            flags.append(f"{what} beat PGD at epsilon {_list(stronger)}: PGD's robust accuracy overstates the "
                         "model's robustness there.")
    unbounded = by_epsilon.get("unbounded", {})
    chance = 1.0 / max(num_classes, 1)
    for epsilon, acc in unbounded.items():
        if acc > chance + 0.1:
            reach = "image" if kind == "image" else "point"
            flags.append(f"PGD at epsilon {epsilon:g}, large enough to reach any {reach}, "
                         f"left {acc:.0%} accuracy (chance is {chance:.0%}): the attack cannot follow the gradient, "
                         "a sign of masking, not of robustness.")
    return flags


def _list(epsilons: list[float]) -> str:
    return ", ".join(f"{e:g}" for e in sorted(epsilons))


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, value_range: ValueRange, epsilons: tuple[float, ...],
             kind: str, seed: int = 0, thorough: bool = False, pgd_steps: int = 10,
             should_stop: Callable[[], bool] | None = None) -> dict[str, list[dict]]:
    """{"square": [{epsilon, accuracy}], "unbounded": [...], and "apgd" when thorough}.

    Square runs on the first SQUARE_SAMPLES points with SQUARE_QUERIES queries (thorough: more of
    both); "unbounded" is PGD at an epsilon that reaches any input, where accuracy must fall to
    chance unless gradients mislead the attack. `should_stop` is asked before each attack level
    (robustness.checkpoint raises Stopped).
    """
    from demo.evaluation.robustness import accuracy, checkpoint, pgd  # one module's attacks, the other's accuracy

    def level(attack: Callable[[float], Tensor], e: float, labels: Tensor) -> dict[str, float]:
        checkpoint(should_stop)
        return {"epsilon": float(e), "accuracy": accuracy(model, attack(e), labels)}

    samples, queries = (THOROUGH_SQUARE_SAMPLES, THOROUGH_SQUARE_QUERIES) if thorough else (SQUARE_SAMPLES,
                                                                                          SQUARE_QUERIES)
    xs, ys = x[:samples], y[:samples]
    margin = max(epsilons, default=0.0)
    results = {"square": [
        level(lambda e: square(model, xs, ys, e, value_range=value_range, queries=queries, seed=seed, margin=margin),
              e, ys)
        for e in epsilons
    ]}
    if thorough:
        results["apgd"] = [
            level(lambda e: apgd(model, x, y, e, value_range=value_range, seed=seed, margin=margin), e, y)
            for e in epsilons
        ]
    checkpoint(should_stop)
    large = UNBOUNDED_EPSILON[kind]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    reached = pgd(model, x, y, large, steps=pgd_steps, value_range=value_range, generator=generator)
    results["unbounded"] = [{"epsilon": large, "accuracy": accuracy(model, reached, y)}]
    return results
