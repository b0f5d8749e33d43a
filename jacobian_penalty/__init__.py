"""Penalties on the Frobenius norm of a network's input-output Jacobian.

For a batch x of shape (B, ...) and a network f with output y = f(x) of shape (B, ...), let
J_b = d y_b / d x_b be the Jacobian of sample b, with the non-batch dims of x (D numbers) and of
y (C numbers) flattened, so J_b is C x D. The penalty is the batch mean of ||J_b||_F^2:

    R(x) = 1/B sum_b ||J_b||_F^2 = 1/B sum_b sum_{c,d} (d y_bc / d x_bd)^2      (no 1/2 factor)

Adding lambda * R to the cross-entropy makes the network less sensitive to input perturbations
(Drucker & LeCun 1992; Hoffman, Roberts & Yaida 2019, "Robust Learning with Jacobian
Regularization", arXiv:1908.02729).

Estimators (F = one forward pass, B = one backward pass, about 2F):

- "exact": every row of every J_b (reverse mode, one VJP per output) or, when the inputs are
  fewer than the outputs and f has no layer norm, every column (forward mode, one JVP per input):
  min(C, D) products.
- "projection": ||J||_F^2 = C E_v ||v^T J||^2 for v uniform on the unit sphere in R^C (Hoffman et
  al. 2019). One VJP per projection, independent of C; relative variance below 2 for one
  projection. With n > 1 the n projections of a sample form an orthonormal frame by default
  (`probes="orthogonal"`): still unbiased, lower variance than n independent ones, exact at n = C;
  `probes="iid"` draws them independently (variance falling as 1/n).
- "jvp": forward mode: ||J||_F^2 = E_u ||J u||^2 for E[u u^T] = I (Hutchinson; sqrt(D) times an
  orthonormal frame by default, Gaussian with probes="iid"). One forward pass with dual numbers
  (about 3F) per probe, independent of C. Needs forward-mode rules for every op of f, and is
  refused through layer or instance norm (PyTorch's forward-mode derivative of it differentiates wrongly).
- "fd": finite differences along random unit input directions d: J d ~ (f(x + h d) - f(x)) / h,
  and ||J||_F^2 = D E_d ||J d||^2. One extra forward pass and no double backward, so it also works
  with ops that have no second derivative. Biased by O(h).
- "auto": exact when the cost model (`jacobian_penalty.costs.plan`) finds it at most twice as dear
  as projection (few outputs, or few inputs without layer norm), else projection;
  `explain=True` returns the plan with its reason.

`target=` takes the Jacobian of part of what f computes (a submodule's name, or a function of a
dict or tuple output) and returns f's full output for the loss. `estimator_spread` gives one
estimate per seed beside the exact value.

Every estimator returns y = f(x) from a forward pass it used, so the caller reuses y for its
classification loss. None of them writes a parameter's `.grad`: gradients are taken with
`torch.autograd.grad` (or `torch.func.jvp`) with respect to the input only. With
`create_graph=True` the penalty is differentiable with respect to the parameters of f and to
whatever produced x (double backpropagation); with False it is a detached number for reporting.

Never a silent wrong gradient: f's output (or target) must be one tensor with one row per sample;
the first call for a module checks by behaviour that samples do not interact (SampleCouplingError
names the module and the fixes); forward mode never runs through layer norm; dropout masks and
buffers changed by a forward (spectral_norm, BatchNorm statistics) are replayed across the passes
of a call; under autocast fd and jvp run in full precision; a torch.compile'd model's penalty runs
its eager module. Attention and recurrent layers get kernels with the derivatives each method
needs, inside the call only (`jacobian_penalty.guards`). Every method is checked on a zoo of layers
against float64 finite differences (tests/library/test_gradient_matrix.py; docs/library.md).
"""

from jacobian_penalty.costs import Plan, plan
from jacobian_penalty.forward_mode import ForwardModeUnsafe
from jacobian_penalty.guards import SampleCouplingError
from jacobian_penalty.independence import check_samples_independent
from jacobian_penalty.penalty import (
    AUTO,
    DEFAULT_FD_STEP,
    METHODS,
    MethodInfo,
    jacobian_norms,
    jacobian_penalty,
    per_sample_jacobian,
)
from jacobian_penalty.spread import Spread, estimator_spread

__all__ = [
    "AUTO",
    "DEFAULT_FD_STEP",
    "ForwardModeUnsafe",
    "Plan",
    "Spread",
    "estimator_spread",
    "plan",
    "METHODS",
    "MethodInfo",
    "SampleCouplingError",
    "check_samples_independent",
    "jacobian_norms",
    "jacobian_penalty",
    "per_sample_jacobian",
]
__version__ = "0.3.0"
