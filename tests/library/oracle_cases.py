"""The gradient oracle: every method on a zoo of layers, against float64 finite differences.

For each case (a model, a batch, what the penalty is taken of) and each method, the library's
penalty and its gradient along one random direction V in parameter space (the model's and any
layers upstream of x) are compared with an oracle that shares no code with the library:

    R(theta) = 1/B sum_b ||J_bb||_F^2, J = torch.autograd.functional.jacobian of the whole batch
               (B*C x B*D), so the blocks J_bb are per-sample Jacobians whatever the library does;
    dR/dV    = (R(theta + h V) - R(theta - h V)) / 2h, central differences in float64.

Random state and buffers are reset before every evaluation (dropout draws one mask; spectral_norm
is evaluated in eval mode with the vectors its one training-mode power iteration left, which is
what the penalty differentiates: the iteration runs without a graph). Deterministic methods must
agree to 1e-6; estimators by the mean over seeds, within Z standard errors of the seeds' spread.
A case that a method refuses must refuse with a ValueError in plain words: `EXPECTED_REFUSALS`
lists them, so a guard that is lifted (or one that appears) fails the test.

Used small by tests/library/test_gradient_matrix.py and in full by benchmarks/gradient_matrix.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from jacobian_penalty import jacobian_penalty

DOUBLE = torch.float64
METHODS = ("exact", "projection", "jvp", "fd", "auto")
FD_STEP = 1e-6  # fd's own step: float64 makes its O(h) bias negligible
ORACLE_STEP = 1e-5  # the oracle's central difference in parameter space
Z = 5.5  # standard errors allowed for an estimator's mean (seeds are fixed: the test is repeatable)
DETERMINISTIC_RTOL = 1e-6
DROPOUT_SEED = 11


class Seq(nn.Module):
    """(B, T, E) -> (B, T * E) through a sequence layer, transposing for batch_first=False layers."""

    def __init__(self, layer: nn.Module, transpose: bool = False, attention: bool = False) -> None:
        super().__init__()
        self.layer, self.transpose, self.attention = layer, transpose, attention

    def forward(self, x: Tensor) -> Tensor:
        h = x.transpose(0, 1) if self.transpose else x
        out = self.layer(h, h, h, need_weights=False) if self.attention else self.layer(h)
        out = out[0] if isinstance(out, tuple) else out
        return (out.transpose(0, 1) if self.transpose else out).flatten(1)


class Split(nn.Module):
    """A model with a feature extractor and a head, returning a dict (the forum thread's shape)."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.features(x)
        return {"penultimate_layer": z, "logits": self.head(z)}


@dataclass
class Case:
    """One model and batch; `penalty(method, **kw)` calls the library the way a user would."""

    name: str
    model: nn.Module
    x: Tensor  # the raw input (upstream layers, if any, run on it)
    upstream: nn.Module | None = None  # layers between x and the penalised model's input
    target: Any = None
    train: bool = False  # model in training mode (dropout, spectral_norm)
    spectral: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.to(DOUBLE).train(self.train)
        if self.upstream is not None:
            self.upstream.to(DOUBLE)
        self.start = {k: b.clone() for k, b in self.model.named_buffers()}
        if self.spectral:  # the vectors one training-mode pass leaves: what the penalty differentiates
            with torch.no_grad():  # a weight far from the one spectral_norm's 15 initial iterations saw
                self.model[0].parametrizations.weight.original.normal_()
            self.start = {k: b.clone() for k, b in self.model.named_buffers()}
            self.reset()
            with torch.no_grad():
                self.model(self.x)
            self.after_one_pass = {k: b.clone() for k, b in self.model.named_buffers()}
            self.reset()

    def params(self) -> list[Tensor]:
        mods = [self.model] + ([self.upstream] if self.upstream is not None else [])
        return [p for m in mods for p in m.parameters()]

    def reset(self) -> None:
        """The state before a call: buffers as built, the dropout mask's seed."""
        with torch.no_grad():
            for k, b in self.model.named_buffers():
                b.copy_(self.start[k])
        torch.manual_seed(DROPOUT_SEED)

    def inputs(self) -> Tensor:
        return self.x if self.upstream is None else self.upstream(self.x)

    def penalty(self, method: str, **options: Any) -> Tensor:
        self.reset()
        _, value = jacobian_penalty(self.model, self.inputs(), method=method, target=self.target, **options)
        return value

    def target_of(self, out: Any) -> Tensor:
        if self.target is None:
            return out
        return self.target(out) if callable(self.target) else None

    def oracle(self) -> Tensor:
        """R(theta) from the whole-batch Jacobian's diagonal blocks, with the state of a call."""
        self.reset()
        if self.spectral:
            with torch.no_grad():
                for k, b in self.model.named_buffers():
                    b.copy_(self.after_one_pass[k])
            self.model.eval()
        inner = self.inputs()
        batch = inner.shape[0]

        def f(t: Tensor) -> Tensor:
            torch.manual_seed(DROPOUT_SEED)  # one dropout mask in every evaluation
            if isinstance(self.target, str):
                seen = []
                handle = self.model.get_submodule(self.target).register_forward_hook(lambda m, a, o: seen.append(o))
                self.model(t)
                handle.remove()
                return seen[0]
            return self.target_of(self.model(t))

        with sdpa_kernel([SDPBackend.MATH]):
            jac = torch.autograd.functional.jacobian(f, inner)  # (B, ..., B, ...)
        jac = jac.reshape(batch, -1, batch, inner[0].numel())
        blocks = torch.stack([jac[b, :, b, :] for b in range(batch)])  # (B, C, D)
        self.oracle_sizes = blocks.shape[1:]  # (C, D)
        if self.spectral:
            self.model.train()
        return blocks.pow(2).sum((1, 2)).mean()


def directional_oracle(case: Case, direction: list[Tensor]) -> tuple[float, float]:
    """(R, dR/dV) by central differences of the oracle along V."""
    params = case.params()
    with torch.no_grad():
        value = case.oracle().item()

        def shifted(scale: float) -> float:
            for p, v in zip(params, direction, strict=True):
                p.add_(scale * v)
            out = case.oracle().item()
            for p, v in zip(params, direction, strict=True):
                p.sub_(scale * v)
            return out

        slope = (shifted(ORACLE_STEP) - shifted(-ORACLE_STEP)) / (2 * ORACLE_STEP)
    return value, slope


def library_slope(case: Case, method: str, **options: Any) -> tuple[float, float]:
    """(penalty, d penalty / dV) from the library's own graph."""
    params = case.params()
    value = case.penalty(method, **options)
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return value.item(), sum((g * v).sum().item() for g, v in zip(grads, _direction_of(case), strict=True)
                             if g is not None)


def _direction_of(case: Case) -> list[Tensor]:
    gen = torch.Generator().manual_seed(1234)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype, device="cpu").to(p.device) for p in case.params()]


@dataclass
class Outcome:
    case: str
    method: str
    verdict: str  # "match", "refused", "MISMATCH"
    value: float = math.nan
    oracle_value: float = math.nan
    slope: float = math.nan
    oracle_slope: float = math.nan
    z_value: float = 0.0
    z_slope: float = 0.0
    message: str = ""


def full_probes(case: Case, method: str) -> int:
    """Probes at which an estimator with orthogonal probes is exact: C projections, D directions."""
    if method == "projection":
        return case.oracle_sizes[0]
    return case.oracle_sizes[1] if method in ("jvp", "fd") else 1


def run(case: Case, method: str, seeds: int, num_projections: int | None = None, probes: str = "orthogonal",
        ) -> Outcome:
    """One cell of the matrix. num_projections None: full_probes (the estimators are then exact,
    so the check is as tight as for exact); a number: a statistical check over the seeds."""
    oracle_value, oracle_slope = directional_oracle(case, _direction_of(case))
    n = full_probes(case, method) if num_projections is None else num_projections
    try:
        if method == "exact":
            draws = [library_slope(case, method)]
        else:
            options = {"num_projections": n, "fd_step": FD_STEP, "probes": probes}
            draws = [library_slope(case, method, generator=torch.Generator().manual_seed(s), **options)
                     for s in range(seeds)]
    except ValueError as error:
        return Outcome(case.name, method, "refused", oracle_value=oracle_value, oracle_slope=oracle_slope,
                       message=str(error))
    values = torch.tensor([d[0] for d in draws], dtype=DOUBLE)
    slopes = torch.tensor([d[1] for d in draws], dtype=DOUBLE)
    z_value, ok_value = _agrees(values, oracle_value)
    z_slope, ok_slope = _agrees(slopes, oracle_slope)
    verdict = "match" if ok_value and ok_slope else "MISMATCH"
    return Outcome(case.name, method, verdict, values.mean().item(), oracle_value, slopes.mean().item(),
                   oracle_slope, z_value, z_slope)


def _agrees(draws: Tensor, expected: float) -> tuple[float, bool]:
    """(z, within tolerance): exact agreement to DETERMINISTIC_RTOL, or Z standard errors."""
    error = draws.mean().item() - expected
    floor = DETERMINISTIC_RTOL * max(abs(expected), 1e-3)
    if len(draws) == 1 or draws.std().item() < floor:
        return error / floor, abs(error) <= floor
    se = draws.std().item() / math.sqrt(len(draws))
    return error / se, abs(error) <= Z * se + floor


# --- the zoo -------------------------------------------------------------------------------------


def _seeded(build: Callable[[], Case]) -> Callable[[], Case]:
    def make() -> Case:
        torch.manual_seed(0)
        return build()

    make.__name__ = build.__name__
    return make


def _x(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=DOUBLE)


def zoo(small: bool = True) -> dict[str, Callable[[], Case]]:
    """name -> a function building the case (fresh modules, so cases never share state)."""
    b = 3 if small else 6
    w = 6 if small else 16
    cases: dict[str, Callable[[], Case]] = {
        "linear + tanh": lambda: Case("linear + tanh", nn.Sequential(nn.Linear(5, w), nn.Tanh(), nn.Linear(w, 4)),
                                      _x(b, 5)),
        "few inputs (exact by columns)": lambda: Case(
            "few inputs (exact by columns)", nn.Sequential(nn.Linear(2, w), nn.Tanh(), nn.Linear(w, 7)), _x(b, 2)),
        "conv": lambda: Case("conv", nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 9, 4)),
                             _x(b, 1, 5, 5)),
        "layernorm": lambda: Case("layernorm", nn.Sequential(nn.Linear(5, w), nn.LayerNorm(w), nn.Linear(w, 4)),
                                  _x(b, 5)),
        "layernorm, few inputs": lambda: Case(
            "layernorm, few inputs", nn.Sequential(nn.Linear(2, w), nn.LayerNorm(w), nn.Linear(w, 7)), _x(b, 2)),
        "functional layer_norm": lambda: Case(
            "functional layer_norm",
            nn.Sequential(nn.Linear(5, w), _Lambda(lambda h: nn.functional.layer_norm(h, h.shape[-1:])),
                          nn.Linear(w, 4)), _x(b, 5)),
        "conv + instancenorm": lambda: Case(
            "conv + instancenorm", nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, affine=True), nn.SiLU(),
                                                 nn.Flatten(), nn.Linear(4 * 9, 4)), _x(b, 1, 5, 5)),
        "instancenorm, few inputs": lambda: Case(
            "instancenorm, few inputs",
            nn.Sequential(nn.Linear(2, 2 * w), nn.Unflatten(1, (2, w)), nn.InstanceNorm1d(2), nn.Flatten(),
                          nn.Linear(2 * w, 7)), _x(b, 2)),
        "conv + groupnorm": lambda: Case(
            "conv + groupnorm", nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.SiLU(), nn.Flatten(),
                                              nn.Linear(4 * 9, 4)), _x(b, 1, 5, 5)),
        "batchnorm (eval)": lambda: Case(
            "batchnorm (eval)", _bn_eval(nn.Sequential(nn.Linear(5, w), nn.BatchNorm1d(w), nn.Tanh(), nn.Linear(w, 4))),
            _x(b, 5)),
        "attention, batch_first=True": lambda: Case(
            "attention, batch_first=True", Seq(nn.MultiheadAttention(4, 2, batch_first=True), attention=True),
            _x(b, 3, 4)),
        "attention, batch_first=False": lambda: Case(
            "attention, batch_first=False", Seq(nn.MultiheadAttention(4, 2), transpose=True, attention=True),
            _x(b, 3, 4)),
        "transformer layer (layernorm inside)": lambda: Case(
            "transformer layer (layernorm inside)",
            Seq(nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)), _x(b, 3, 4)),
        "lstm": lambda: Case("lstm", Seq(nn.LSTM(3, 4, batch_first=True)), _x(b, 3, 3)),
        "gru, batch_first=False": lambda: Case("gru, batch_first=False", Seq(nn.GRU(3, 4), transpose=True),
                                               _x(b, 3, 3)),
        "dropout (train)": lambda: Case(
            "dropout (train)", nn.Sequential(nn.Linear(5, w), nn.Tanh(), nn.Dropout(0.3), nn.Linear(w, 4)), _x(b, 5),
            train=True),
        "spectral_norm (train)": lambda: Case(
            "spectral_norm (train)",
            nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(5, w)), nn.Tanh(), nn.Linear(w, 4)),
            _x(b, 5), train=True, spectral=True),
        "gelu, silu, softmax": lambda: Case(
            "gelu, silu, softmax",
            nn.Sequential(nn.Linear(5, w), nn.GELU(), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 4), nn.Softmax(-1)),
            _x(b, 5)),
        "dict output, selector": lambda: Case(
            "dict output, selector", Split(nn.Sequential(nn.Linear(5, w), nn.Tanh()), nn.Linear(w, 4)), _x(b, 5),
            target=lambda out: out["logits"]),
        "penultimate target, upstream layers": lambda: Case(
            "penultimate target, upstream layers",
            Split(nn.Sequential(nn.Linear(5, w), nn.Tanh(), nn.Linear(w, 5)), nn.Linear(5, 4)), _x(b, 4),
            upstream=nn.Sequential(nn.Linear(4, 5), nn.Tanh()), target="features"),
    }
    return {name: _seeded(make) for name, make in cases.items()}


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _bn_eval(model: nn.Module) -> nn.Module:
    """BatchNorm with running statistics that are not the identity, then eval mode."""
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


# Where a method refuses, and why: forward mode through layer or instance norm gives wrong gradients.
EXPECTED_REFUSALS = frozenset({
    ("layernorm", "jvp"), ("layernorm, few inputs", "jvp"), ("functional layer_norm", "jvp"),
    ("transformer layer (layernorm inside)", "jvp"), ("conv + instancenorm", "jvp"),
    ("instancenorm, few inputs", "jvp"),
})
