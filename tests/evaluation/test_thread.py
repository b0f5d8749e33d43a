"""The forum thread's penalty against ours, checked against an oracle: the Jacobian from
torch.autograd.functional.jacobian in float64, and gradients taken from it with autograd."""

from __future__ import annotations

import torch
from torch import nn

from demo.evaluation import thread as thread_demo
from jacobian_penalty import jacobian_norms


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def batch(seed: int = 1, size: int = 5) -> torch.Tensor:
    return torch.randn(size, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def oracle_jacobians(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """(B, C, D): one functional jacobian per sample."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], xb, create_graph=create_graph)
        for xb in x
    ])


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 4-D: easy to fit, so a trained model has a large Jacobian."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]], dtype=torch.float64)
    return centres[y] + 0.5 * torch.randn(n, 4, generator=gen, dtype=torch.float64), y


def test_the_threads_penalty_has_exactly_zero_gradient_and_ours_matches_the_oracle():
    model, x = small_model(), batch()
    params = list(model.parameters())

    _, theirs = thread_demo.thread_penalty(model, x.clone())
    assert not theirs.requires_grad
    assert all(torch.equal(g, torch.zeros_like(g)) for g in thread_demo.parameter_gradient(theirs, params))

    _, ours = thread_demo.ours_penalty(model, x, method="exact")
    grads = thread_demo.parameter_gradient(ours, params)
    oracle = oracle_jacobians(model, x, create_graph=True).pow(2).sum(dim=(1, 2)).mean()  # mean ||J_b||_F^2
    torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-12)
    # The last bias does not change J: its gradient is zero (None from autograd.grad).
    want = torch.autograd.grad(oracle, params, allow_unused=True)
    want = [torch.zeros_like(p) if w is None else w for p, w in zip(params, want, strict=True)]
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert sum(g.abs().sum() for g in grads) > 0


def test_the_threads_number_is_the_norm_of_column_sums_not_the_frobenius_norm():
    model, x = small_model(), batch()
    jac = oracle_jacobians(model, x)  # (B, C, D)
    column_sums = jac.sum(dim=1)  # (B, D) = J_b^T 1

    _, theirs = thread_demo.thread_penalty(model, x.clone())
    torch.testing.assert_close(theirs, column_sums.norm(), rtol=1e-10, atol=1e-12)  # over the whole batch
    torch.testing.assert_close(thread_demo.column_sum_norms(model, x), column_sums.norm(dim=1), rtol=1e-10, atol=0)
    frobenius = jac.pow(2).sum().sqrt()
    assert abs(theirs.item() - frobenius.item()) > 0.01 * frobenius.item()


def test_the_threads_backward_writes_the_gradient_of_the_output_sum_into_every_parameter():
    model, x = small_model(), batch()
    params = list(model.parameters())
    want = torch.autograd.grad(model(x).sum(), params)
    model.zero_grad(set_to_none=True)
    thread_demo.thread_penalty(model, x.clone())
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-12)


def test_ours_writes_no_parameter_grad():
    model, x = small_model(), batch()
    thread_demo.ours_penalty(model, x, method="projection", generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters())


def side_by_side(model: nn.Module, penalty: float) -> list[dict]:
    x_train, y_train = blobs(300, seed=0)
    x_test, y_test = blobs(100, seed=1)
    return list(thread_demo.compare(
        model, x_train, y_train, x_test, y_test, penalty=penalty, steps=60, batch_size=32, lr=1e-2, seed=0,
        method="exact", report_every=20, warmup_steps=100,
    ))


def test_side_by_side_the_threads_lambda_changes_nothing_and_ours_lowers_the_jacobian():
    model = small_model(seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    reports = side_by_side(model, penalty=0.3)
    assert [r["ours"]["step"] for r in reports] == [0, 20, 40, 60]
    first, last = reports[0], reports[-1]
    assert first["thread"] == first["ours"]  # the same starting model

    for report in reports[1:]:
        assert report["thread"]["penalty_grad_norm"] == 0.0
        assert report["thread"]["grad_pollution"] > 1.0  # .grad is mostly junk
        assert report["ours"]["penalty_grad_norm"] > 0.0
        assert report["ours"]["grad_pollution"] < 1e-9  # .grad is the gradient of the loss

    assert last["ours"]["jacobian_norm"] < 0.5 * first["ours"]["jacobian_norm"]
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))  # input untouched

    # The thread's penalty has no gradient, so its lambda cannot change the training at all:
    # the same run with lambda 0 takes exactly the same steps. Ours with lambda 0 does not
    # lower ||J|| the way lambda 0.3 does.
    unpenalised = side_by_side(small_model(seed=3), penalty=0.0)
    for key in ("jacobian_norm", "test_accuracy", "column_sum_norm"):
        assert [r["thread"][key] for r in unpenalised] == [r["thread"][key] for r in reports]
    assert unpenalised[-1]["ours"]["jacobian_norm"] > 2 * last["ours"]["jacobian_norm"]


def test_reported_jacobian_norm_is_the_exact_mean_on_the_test_subset():
    x_train, y_train = blobs(64, seed=0)
    x_test, y_test = blobs(40, seed=1)
    model = small_model()
    [start] = list(thread_demo.compare(model, x_train, y_train, x_test, y_test, steps=0))
    assert start["ours"]["jacobian_norm"] == jacobian_norms(model, x_test).mean().item()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).sum().item() / len(y_test)
    assert start["ours"]["test_accuracy"] == accuracy
    oracle = oracle_jacobians(model, x_test).norm(dim=(1, 2)).mean().item()
    assert abs(start["ours"]["jacobian_norm"] - oracle) < 1e-10
