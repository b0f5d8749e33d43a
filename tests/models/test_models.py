"""models/: shapes, the features/head contract, no sample coupling, and the derivatives the
Jacobian penalties need (double backward, batched VJPs, forward mode), checked against oracles:
torch.autograd.functional.jacobian and central finite differences in float64."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.modules.batchnorm import _BatchNorm

import models
from models.vit import SelfAttention, auto_patch_size

SHAPES = {"points": (2,), "digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
CLASS_COUNTS = (2, 10, 1000)
FEATURE_WIDTHS = {"mlp": 256, "lenet": 84, "resnet": 64, "vit": 64}
IMAGE_ARCHS = ("lenet", "resnet", "vit")
# The smallest input each architecture takes, for the float64 oracle checks.
SMALL_SHAPES = {"mlp": (2,), "lenet": (1, 8, 8), "resnet": (1, 8, 8), "vit": (1, 8, 8)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, and on a busy
    2-core machine its spin-waits made this file ~100x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CASES = [
    (arch, shape)
    for arch in models.ARCHITECTURES
    for shape in SHAPES.values()
    if models.incompatibility(arch, shape) is None
]


def _build(arch: str, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(arch, shape, classes)


def _inputs(shape: tuple[int, ...], batch: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *shape, generator=gen, dtype=dtype)


def test_every_architecture_takes_images_and_mlp_takes_points():
    assert set(models.ARCHITECTURES) == set(FEATURE_WIDTHS)
    assert {arch for arch, _ in CASES} == set(FEATURE_WIDTHS)
    assert len(CASES) == 4 + 3 * 3  # mlp on all four shapes, each image model on three


@pytest.mark.parametrize(("arch", "shape"), CASES)
def test_output_features_and_head(arch, shape):
    x = _inputs(shape, batch=3)
    for classes in CLASS_COUNTS:
        model = _build(arch, shape, classes)
        y = model(x)
        features = model.features(x)
        assert y.shape == (3, classes)
        assert features.shape == (3, FEATURE_WIDTHS[arch])
        assert isinstance(model.head, nn.Linear)
        assert (model.head.in_features, model.head.out_features) == (features.shape[1], classes)
        torch.testing.assert_close(model.head(features), y)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize(("arch", "shape"), CASES)
def test_no_batchnorm_anywhere(arch, shape):
    model = _build(arch, shape)
    batchnorms = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    assert batchnorms == []


def _coupling(model: nn.Module, x: torch.Tensor) -> float:
    """Largest |d out[0] / d x[1:]|: zero when samples do not interact."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x)[0].sum(), x)
    return grad[1:].abs().max().item()


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_samples_do_not_interact(arch):
    shape = SMALL_SHAPES[arch]
    model = _build(arch, shape).train()  # BatchNorm would couple samples in training mode
    x = _inputs(shape, batch=4)
    changed = x.clone()
    changed[1] = _inputs(shape, batch=1, seed=2)[0]
    y, y_changed = model(x), model(changed)
    assert not torch.allclose(y[1], y_changed[1])  # the change reached sample 1's output
    torch.testing.assert_close(y[[0, 2, 3]], y_changed[[0, 2, 3]], rtol=0, atol=1e-6)  # no other
    assert _coupling(model, x) == 0.0


def test_coupling_check_detects_batchnorm():
    # The checks above can fail: a BatchNorm model in training mode mixes samples.
    torch.manual_seed(0)
    coupled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    x = _inputs((1, 8, 8), batch=4)
    coupled(x)  # materialise the lazy layer
    assert _coupling(coupled.train(), x) > 1e-4
    assert _coupling(coupled.eval(), x) == 0.0


def _oracle_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, B, D): every output against every input, by torch.autograd.functional.jacobian."""
    full = torch.autograd.functional.jacobian(model, x)  # (B, C, B, *shape)
    return full.reshape(x.shape[0], -1, x.shape[0], x[0].numel())


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_batched_vjp_gives_per_sample_jacobians(arch):
    # The "exact" estimator's trick: one VJP per output row, all samples at once, vmapped.
    shape = SMALL_SHAPES[arch]
    model = _build(arch, shape, classes=5).double()
    x = _inputs(shape, batch=3, dtype=torch.float64).requires_grad_()
    y = model(x)  # (B, C)
    rows = torch.eye(5, dtype=y.dtype).unsqueeze(1).expand(5, 3, 5)  # (C, B, C) one-hots
    (vjps,) = torch.autograd.grad(y, x, rows, is_grads_batched=True)  # (C, B, *shape)
    per_sample = vjps.reshape(5, 3, -1).transpose(0, 1)  # (B, C, D)
    full = _oracle_jacobians(model, x.detach())
    for b in range(3):
        torch.testing.assert_close(per_sample[b], full[b, :, b], rtol=1e-10, atol=1e-12)
        others = [c for c in range(3) if c != b]
        assert full[b][:, others].abs().max() == 0  # off-diagonal blocks: no coupling
    assert full.abs().max() > 0


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_forward_mode_matches_the_oracle(arch):
    shape = SMALL_SHAPES[arch]
    model = _build(arch, shape).double()
    x = _inputs(shape, batch=2, dtype=torch.float64)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    y, ju = jvp(model, (x,), (u,))  # forward mode: J u without any backward pass
    torch.testing.assert_close(y, model(x))
    full = _oracle_jacobians(model, x)  # (B, C, B, D)
    expected = torch.stack([full[b, :, b] @ u[b].flatten() for b in range(2)])  # (B, C)
    torch.testing.assert_close(ju, expected, rtol=1e-9, atol=1e-12)


def _projected_penalty(model, params, x, v) -> torch.Tensor:
    """||v^T J||^2 summed over the batch, differentiable in params (double backward)."""
    x = x.clone().requires_grad_()
    y = functional_call(model, params, (x,))
    (g,) = torch.autograd.grad(y, x, v, create_graph=True)
    return g.pow(2).sum()


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_double_backward_matches_finite_differences(arch):
    shape = SMALL_SHAPES[arch]
    model = _build(arch, shape).double()
    gen = torch.Generator().manual_seed(4)
    x = _inputs(shape, batch=2, dtype=torch.float64)
    v = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    params = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    direction = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}

    penalty = _projected_penalty(model, params, x, v)
    grads = torch.autograd.grad(penalty, list(params.values()), allow_unused=True)
    analytic = sum((g * direction[k]).sum() for k, g in zip(params, grads, strict=True) if g is not None)

    eps = 1e-6
    with torch.no_grad():
        plus = {k: p + eps * direction[k] for k, p in params.items()}
        minus = {k: p - eps * direction[k] for k, p in params.items()}
    numeric = (_projected_penalty(model, plus, x, v) - _projected_penalty(model, minus, x, v)) / (2 * eps)
    assert analytic.abs() > 1e-6
    torch.testing.assert_close(analytic, numeric.detach(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(("arch", "shape"), CASES)
def test_penalty_gradients_reach_every_weight(arch, shape):
    model = _build(arch, shape)
    x = _inputs(shape, batch=2).requires_grad_()
    y = model(x)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    (g,) = torch.autograd.grad(y, x, v, create_graph=True)  # a VJP that stays differentiable
    g.pow(2).sum().backward()
    weights = {k: p for k, p in model.named_parameters() if p.ndim >= 2}
    assert weights
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    for name, p in weights.items():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_image_models_refuse_points_in_plain_words(arch):
    message = models.incompatibility(arch, (2,))
    assert message is not None
    assert arch in message and "image" in message and "2 numbers" in message
    assert "Use mlp" in message
    with pytest.raises(ValueError, match=re.escape(message)):
        models.build(arch, (2,), 2)
    named = models.incompatibility(arch, (2,), dataset="spirals")
    assert "'spirals' gives 2 numbers per example" in named
    assert models.incompatibility(arch, (1, 3, 3)) is not None  # too small to pool twice
    assert models.incompatibility(arch, (64,)) is not None  # flattened digits


def test_mlp_takes_any_shape():
    for shape in [*SHAPES.values(), (5,), (2, 3, 4, 5)]:
        assert models.incompatibility("mlp", shape) is None
    assert models.incompatibility("mlp", ()) is not None
    assert models.incompatibility("mlp", (0, 3)) is not None


def test_unknown_architecture_lists_the_known_ones():
    message = models.incompatibility("transformer-xl", (1, 8, 8))
    assert message is not None and "transformer-xl" in message
    assert all(name in message for name in models.ARCHITECTURES)
    with pytest.raises(ValueError, match="known architectures: mlp, lenet, resnet, vit"):
        models.build("transformer-xl", (1, 8, 8), 10)


def test_architectures_is_read_only():
    with pytest.raises(TypeError):
        models.ARCHITECTURES["big"] = "no"  # type: ignore[index]
    assert all(isinstance(d, str) and d for d in models.ARCHITECTURES.values())


def test_options_shape_the_model_and_bad_ones_are_refused():
    mlp = models.build("mlp", (2,), 3, width=32, depth=4)
    assert mlp.features(torch.zeros(1, 2)).shape == (1, 32)
    assert sum(isinstance(m, nn.Linear) for m in mlp.modules()) == 4 + 1  # hidden + head
    assert models.build("resnet", (1, 8, 8), 3, width=8).features(torch.zeros(1, 1, 8, 8)).shape == (
        1,
        32,
    )
    with pytest.raises(ValueError, match="width, depth"):
        models.build("mlp", (2,), 3, widht=32)
    with pytest.raises(ValueError, match="depth"):
        models.build("mlp", (2,), 3, depth=0)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("mlp", (2,), 0)
    with pytest.raises(ValueError, match="patch_size 3"):
        models.build("vit", (1, 8, 8), 3, patch_size=3)


def test_vit_patch_size_divides_the_image():
    assert auto_patch_size(8, 8) == 2
    assert auto_patch_size(28, 28) == 4
    assert auto_patch_size(32, 32) == 4
    assert auto_patch_size(5, 5) == 1
    for shape, tokens in [((1, 8, 8), 16), ((1, 28, 28), 49), ((3, 32, 32), 64)]:
        assert models.build("vit", shape, 10).pos_embed.shape == (1, tokens, 64)


def test_explicit_attention_equals_pytorch_sdpa():
    # Oracle for the hand-written math path: PyTorch's fused attention, same weights.
    torch.manual_seed(0)
    attn = SelfAttention(dim=16, heads=4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    q, k, v = attn.qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(attn(x), attn.proj(expected))
