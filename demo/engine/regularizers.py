"""The regularisers people weigh the Jacobian penalty against, as training steps of the same engine.

`RunConfig.regularizer` picks one; `RunConfig.penalty` is its strength (demo.engine.config.REGULARIZERS
says what it means for each):

- "input_gradient": double backpropagation (Drucker & LeCun 1992; Ross & Doshi-Velez 2018),
  loss + lambda * mean_b ||grad_x CE(f(x_b), y_b)||^2: one label-weighted combination of J's rows
  instead of all of them.
- "adversarial": PGD adversarial training (Madry et al. 2018): the cross-entropy of PGD examples
  within the L-inf ball of radius epsilon = penalty, ADVERSARIAL_STEPS steps from a random start.
- "spectral": spectral normalisation (Miyato et al. 2018) of every linear and convolutional layer
  (torch.nn.utils.parametrizations.spectral_norm), applied when the model is built; the step is plain.
- "weight_decay": loss + lambda * ||theta||^2 over the weights (not the biases).

Each `step` returns what demo.engine.train's Jacobian step returns: (cross-entropy, the regulariser's own
term or None, correct count), so reports, curves and records treat them alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from demo.engine.data import input_shape
from demo.evaluation import robustness

ADVERSARIAL_STEPS = 3  # PGD steps per training batch: Madry's 7-40 cost that many times more per step


def step(cfg, model: nn.Module, forward: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
         params: list[Tensor], x: Tensor, y: Tensor, generator: torch.Generator | None
         ) -> tuple[Tensor, Tensor | None, Tensor]:
    """One optimisation step with cfg.regularizer at strength cfg.penalty. `forward` gives the
    logits (the model itself, or its DDP wrapper under torchrun, so gradients are synchronised)."""
    term = None
    weights = [p for name, p in model.named_parameters() if not name.endswith("bias")]
    net = forward if isinstance(forward, nn.Module) else model
    if cfg.regularizer == "input_gradient" and cfg.penalty > 0:
        x_in = x.detach().requires_grad_(True)
        logits = net(x_in)
        ce = F.cross_entropy(logits, y)
        # The summed loss's input gradient holds every sample's own gradient (samples do not mix).
        (grad,) = torch.autograd.grad(ce * x.shape[0], x_in, create_graph=True)  # (B, ...)
        term = grad.pow(2).flatten(1).sum(1).mean()
        loss = ce + cfg.penalty * term
    elif cfg.regularizer == "adversarial" and cfg.penalty > 0:
        # Images live in [0, 1] (demo.engine.data); 2-D points are unbounded.
        value_range = (0.0, 1.0) if len(input_shape(cfg.dataset)) == 3 else None
        # The examples come from the bare model (no parameter gradients, nothing for DDP to sync).
        x_adv = robustness.pgd(model, x, y, cfg.penalty, steps=ADVERSARIAL_STEPS, value_range=value_range,
                               generator=generator)
        logits = net(x_adv)
        ce = loss = F.cross_entropy(logits, y)
    elif cfg.regularizer == "weight_decay" and cfg.penalty > 0:
        logits = net(x)
        ce = F.cross_entropy(logits, y)
        term = sum(p.pow(2).sum() for p in weights)
        loss = ce + cfg.penalty * term
    else:  # spectral (already in the model), or strength 0: a plain step
        logits = net(x)
        ce = loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    optimizer.step()
    correct = (logits.detach().argmax(dim=1) == y).sum().to(logits.dtype)
    return ce, term, correct


def spectral_normalise(model: nn.Module) -> nn.Module:
    """Every Linear and Conv layer's weight divided by its largest singular value (power iteration)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    for layer in layers:
        spectral_norm(layer)
    return model
