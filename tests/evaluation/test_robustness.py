"""Robust accuracy against oracles: torchattacks for FGSM and PGD, direct computation elsewhere.

A small MLP trained on scikit-learn's 8x8 digits (pixels in [0, 1]) is the model under attack;
a tiny MLP on two 2-D blobs covers unbounded inputs (value_range None).
"""

from __future__ import annotations

import copy
import json
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from sklearn.datasets import load_digits
from torch import nn

from demo.evaluation.robustness import (
    ATTACKS,
    accuracy,
    default_grid,
    evaluate,
    fgsm,
    gaussian_noise,
    perturbed_examples,
    pgd,
)

IMAGE_RANGE = (0.0, 1.0)
ROUNDING = 1e-6  # float32 rounding of x + delta; pixel values are at most 1
TRAIN_STEPS = 300
MONOTONE_SLACK = 0.01  # accuracy may rise by up to 1% between levels (a few test samples)
NOISE_SLACK = 0.02  # noise levels share draws but stay random


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Training leaves .grad behind; clear it so the tests see whether an attack writes one.
    optimizer.zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds waiting on a busy 2-core machine
    (a busy machine measured 31 s with two threads, 15 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """(model, x_test (450, 1, 8, 8) in [0, 1], y_test) with test accuracy above 90%."""
    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = order[:1347], order[1347:]
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    train(model, x[train_idx], y[train_idx], TRAIN_STEPS, lr=3e-3)
    x_test, y_test = x[test_idx], y[test_idx]
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.9
    return model, x_test, y_test


@pytest.fixture(scope="module")
def points():
    """(model, x (400, 2), y): two Gaussian blobs centred at (-1, 0) and (1, 0), float64."""
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = torch.randn(400, 2, generator=generator, dtype=torch.float64) * 0.4
    x[:, 0] += 2.0 * y - 1.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    return train(model, x, y, 200, lr=1e-2), x, y


def falls(curve: list[float], slack: float) -> bool:
    """Non-increasing, up to a rise of `slack` between neighbours."""
    return all(later <= earlier + slack for earlier, later in pairwise(curve))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_default_grids():
    assert default_grid("image") == ((0, 0.1, 0.2, 0.3, 0.5), (0, 0.05, 0.1, 0.2, 0.3))
    for kind in ("image", "points"):
        for grid in default_grid(kind):
            assert grid[0] == 0 and all(a < b for a, b in pairwise(grid))
    with pytest.raises(ValueError, match="unknown dataset kind"):
        default_grid("audio")


@pytest.mark.parametrize("batch_size", [1024, 100])  # 100: a ragged last batch of 50
def test_accuracy_matches_direct_computation(digits, batch_size):
    model, x, y = digits
    expected = clean_accuracy(model, x, y)
    assert accuracy(model, x, y, batch_size=batch_size) == pytest.approx(expected)


class Counting(nn.Module):
    """Counts forward passes that build a graph: an attack needs one, a clean pass does not."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.graph_passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.graph_passes += torch.is_grad_enabled()
        return self.inner(x)


def test_zero_strength_is_clean_accuracy_without_an_attack(digits):
    model, x, y = digits
    counting = Counting(model)
    result = evaluate(counting, x, y, value_range=IMAGE_RANGE, sigmas=(0,), epsilons=(0,))
    clean = clean_accuracy(model, x, y)
    assert result == {
        "noise": [{"sigma": 0.0, "accuracy": clean}],
        "fgsm": [{"epsilon": 0.0, "accuracy": clean}],
        "pgd": [{"epsilon": 0.0, "accuracy": clean}],
    }
    assert counting.graph_passes == 0


@pytest.mark.parametrize("epsilon", [0.05, 0.1, 0.3])
def test_fgsm_equals_torchattacks(digits, epsilon):
    model, x, y = digits
    ours = fgsm(model, x, y, epsilon, value_range=IMAGE_RANGE)
    theirs = torchattacks.FGSM(model, eps=epsilon)(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("epsilon", "steps"), [(0.1, 10), (0.3, 7)])
def test_pgd_without_random_start_equals_torchattacks(digits, epsilon, steps):
    model, x, y = digits
    alpha = 2.5 * epsilon / steps  # our default step size, passed to torchattacks explicitly
    ours = pgd(model, x, y, epsilon, steps=steps, random_start=False, value_range=IMAGE_RANGE)
    attack = torchattacks.PGD(model, eps=epsilon, alpha=alpha, steps=steps, random_start=False)
    theirs = attack(x, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("epsilon", [0.05, 0.2])
def test_attacks_stay_in_the_ball_and_the_value_range(digits, epsilon):
    model, x, y = digits
    for x_adv in (
        fgsm(model, x, y, epsilon, value_range=IMAGE_RANGE),
        pgd(model, x, y, epsilon, value_range=IMAGE_RANGE, generator=seeded(0)),
    ):
        distance = (x_adv - x).abs().amax()
        assert distance <= epsilon + ROUNDING
        assert distance >= epsilon - ROUNDING  # the attack uses the whole ball somewhere
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    # Without clipping FGSM moves every pixel by exactly epsilon: the clip above was active.
    unclipped = fgsm(model, x, y, epsilon, value_range=None)
    moved = (unclipped - x).abs()
    torch.testing.assert_close(moved, torch.full_like(x, epsilon), atol=ROUNDING, rtol=0)
    assert unclipped.min() < 0 and unclipped.max() > 1


def test_noise_is_gaussian_then_clipped(digits):
    _, x, _ = digits
    sigma = 0.3
    z = torch.randn(x.shape, generator=seeded(5))
    raw = gaussian_noise(x, sigma, value_range=None, generator=seeded(5))
    clipped = gaussian_noise(x, sigma, value_range=IMAGE_RANGE, generator=seeded(5))
    torch.testing.assert_close(raw, x + sigma * z)
    torch.testing.assert_close(clipped, (x + sigma * z).clamp(0, 1))
    assert raw.min() < 0 and raw.max() > 1  # so the clip had something to do
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_pgd_is_no_weaker_than_fgsm_and_accuracy_falls_with_strength(digits):
    model, x, y = digits
    sigmas, epsilons = default_grid("image")
    result = evaluate(model, x, y, value_range=IMAGE_RANGE, sigmas=sigmas, epsilons=epsilons)
    assert [r["sigma"] for r in result["noise"]] == list(sigmas)
    assert [r["epsilon"] for r in result["fgsm"]] == list(epsilons)
    assert [r["epsilon"] for r in result["pgd"]] == list(epsilons)
    fgsm_acc = [r["accuracy"] for r in result["fgsm"]]
    pgd_acc = [r["accuracy"] for r in result["pgd"]]
    noise_acc = [r["accuracy"] for r in result["noise"]]
    assert all(p <= f for p, f in zip(pgd_acc, fgsm_acc, strict=True))
    assert falls(fgsm_acc, MONOTONE_SLACK), fgsm_acc
    assert falls(pgd_acc, MONOTONE_SLACK), pgd_acc
    assert falls(noise_acc, NOISE_SLACK), noise_acc
    # The attacks bite: an undefended MLP loses most of its accuracy at epsilon 0.2.
    assert pgd_acc[epsilons.index(0.2)] < 0.5 * pgd_acc[0]


def test_batching_does_not_change_deterministic_results(digits):
    model, x, y = digits
    kwargs = dict(value_range=IMAGE_RANGE, sigmas=(0,), epsilons=(0.05, 0.1), pgd_steps=3)
    whole = evaluate(model, x, y, batch_size=len(x), **kwargs)
    batched = evaluate(model, x, y, batch_size=64, **kwargs)
    assert batched["fgsm"] == whole["fgsm"]
    # The first batch of evaluate sees the same random draws as perturbed_examples.
    x, y = x[:64], y[:64]
    x_pgd, _ = perturbed_examples(model, x, y, kind="pgd", strength=0.1, value_range=IMAGE_RANGE)
    expected = pgd(model, x, y, 0.1, value_range=IMAGE_RANGE, generator=seeded(0))
    torch.testing.assert_close(x_pgd, expected)


def test_same_seed_same_results(digits):
    model, x, y = digits
    kwargs = dict(value_range=IMAGE_RANGE, sigmas=(0.3,), epsilons=(0.1,), pgd_steps=3)
    first = evaluate(model, x, y, seed=3, **kwargs)
    assert evaluate(model, x, y, seed=3, **kwargs) == first
    assert json.loads(json.dumps(first)) == first
    assert all(type(r["accuracy"]) is float for records in first.values() for r in records)
    for kind in ("noise", "pgd"):

        def example(seed: int, kind: str = kind) -> torch.Tensor:
            return perturbed_examples(
                model, x[:8], y[:8], kind=kind, strength=0.1, value_range=IMAGE_RANGE, seed=seed
            )[0]

        assert torch.equal(example(1), example(1))
        assert not torch.equal(example(1), example(2))


class ModeProbe(nn.Module):
    """Records the mode it is called in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


def test_no_parameter_grad_and_mode_restored(digits):
    model, x, y = digits
    probe = ModeProbe()
    probed = nn.Sequential(probe, copy.deepcopy(model))
    probed.train()
    probed[1][1].eval()  # a mixed mode: restoring must not flatten it to train()
    modes = [m.training for m in probed.modules()]
    x = x[:32].clone().requires_grad_(True)
    y = y[:32]
    with torch.no_grad():  # attacks must still get their input gradients
        in_no_grad = fgsm(probed, x, y, 0.1, value_range=IMAGE_RANGE)
    calls = [
        lambda: accuracy(probed, x, y),
        lambda: fgsm(probed, x, y, 0.1, value_range=IMAGE_RANGE),
        lambda: pgd(probed, x, y, 0.1, value_range=IMAGE_RANGE, steps=2),
        lambda: evaluate(
            probed, x, y, value_range=IMAGE_RANGE, sigmas=(0, 0.1), epsilons=(0, 0.1), pgd_steps=2
        ),
        lambda: perturbed_examples(probed, x, y, kind="pgd", strength=0.1, value_range=IMAGE_RANGE),
    ]
    for call in calls:
        call()
        assert [m.training for m in probed.modules()] == modes
    assert probe.seen and not any(probe.seen)
    assert all(p.grad is None for p in probed.parameters())
    assert x.grad is None
    torch.testing.assert_close(in_no_grad, fgsm(probed, x, y, 0.1, value_range=IMAGE_RANGE))
    assert (in_no_grad - x).abs().amax() > 0.1 - ROUNDING


def test_unbounded_points(points):
    model, x, y = points
    sigmas, epsilons = default_grid("points")
    result = evaluate(
        model, x, y, value_range=None, sigmas=sigmas, epsilons=epsilons, batch_size=128
    )
    clean = clean_accuracy(model, x, y)
    assert clean > 0.9
    assert result["noise"][0]["accuracy"] == pytest.approx(clean)
    pgd_acc = [r["accuracy"] for r in result["pgd"]]
    fgsm_acc = [r["accuracy"] for r in result["fgsm"]]
    assert all(p <= f for p, f in zip(pgd_acc, fgsm_acc, strict=True))
    assert falls(pgd_acc, MONOTONE_SLACK), pgd_acc
    assert pgd_acc[-1] < pgd_acc[0]
    # No clipping: every coordinate moves by exactly epsilon, in the points' dtype.
    x_adv = fgsm(model, x, y, 0.4, value_range=None)
    assert x_adv.dtype == torch.float64
    torch.testing.assert_close((x_adv - x).abs(), torch.full_like(x, 0.4))
    x_pgd = pgd(model, x, y, 0.4, value_range=None, generator=seeded(0))
    assert x_pgd.dtype == torch.float64 and (x_pgd - x).abs().amax() <= 0.4 + 1e-12


@pytest.mark.parametrize("kind", ATTACKS)
def test_perturbed_examples(digits, kind):
    model, x, y = digits
    x, y = x[:6], y[:6]
    x_perturbed, predictions = perturbed_examples(
        model, x, y, kind=kind, strength=0.2, value_range=IMAGE_RANGE, pgd_steps=3
    )
    assert x_perturbed.shape == x.shape and predictions.shape == (6,)
    assert not torch.equal(x_perturbed, x)
    with torch.no_grad():
        assert torch.equal(predictions, model(x_perturbed).argmax(1))
    unchanged, clean_predictions = perturbed_examples(
        model, x, y, kind=kind, strength=0, value_range=IMAGE_RANGE
    )
    assert torch.equal(unchanged, x) and unchanged is not x
    with torch.no_grad():
        assert torch.equal(clean_predictions, model(x).argmax(1))


def test_bad_arguments_are_refused(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbed_examples(model, x, y, kind="blur", strength=0.1, value_range=IMAGE_RANGE)
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(model, x, y, -0.1, value_range=IMAGE_RANGE)
    with pytest.raises(ValueError, match="sigma"):
        evaluate(model, x, y, value_range=IMAGE_RANGE, sigmas=(float("nan"),), epsilons=(0,))
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, steps=0, value_range=IMAGE_RANGE)
    with pytest.raises(ValueError, match="value_range"):
        gaussian_noise(x, 0.1, value_range=(1.0, 0.0), generator=None)
