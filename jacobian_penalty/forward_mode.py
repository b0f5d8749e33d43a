"""Layers whose forward-mode derivative is wrong when it is differentiated again.

In torch 2.14 (and earlier), backpropagating through the forward-mode derivative of layer_norm
gives wrong parameter gradients: Linear(6, 8) -> LayerNorm(8) -> Linear(8, 5), penalty ||J u||^2,
directional derivative -9.45 by `torch.func.jvp` (and -9.46 by the double-VJP trick, which takes
the same third derivative) where central finite differences give -1.20. The value is right, so
value-only tests never see it. Reverse-mode rows (second order only) are right. GroupNorm,
RMSNorm, BatchNorm in eval mode, softmax, GELU, SiLU, tanh, normalize and attention were right in
the same test (tests/library/test_behaviour.py keeps a canary that fails once PyTorch fixes it).

Instance norm (InstanceNorm1d/2d/3d, F.instance_norm) measured wrong the same way. So a model with
layer or instance norm never goes through forward mode: "exact" takes rows instead of columns, and
"jvp" refuses, naming the layer and the methods that work. Modules are found by type; functional
calls (F.layer_norm inside a forward) by recording one pass (jacobian_penalty.behaviour), also when
the sample-independence check is off or the batch holds one sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

from jacobian_penalty.targets import root_module

# Instance norm has the same fault (2 inputs -> InstanceNorm1d -> 7 outputs, exact by columns: +9.42
# against the oracle's -5.16; a CNN with InstanceNorm2d under jvp: -2.70 against -3.18).
UNSAFE_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
UNSAFE_FUNCTIONS = frozenset({"layer_norm", "native_layer_norm", "instance_norm"})
FUNCTIONAL = frozenset({"layer_norm", "instance_norm"})  # named as torch.nn.functional.<name>


def unsafe_modules(f: Callable) -> list[str]:
    """Names of the submodules of f whose forward-mode derivative is wrong to differentiate."""
    root = root_module(f)
    if root is None:
        return []
    return [f"{type(m).__name__} ({name or 'the model itself'})" for name, m in root.named_modules()
            if isinstance(m, UNSAFE_MODULES)]


class UnsafeCalls(TorchFunctionMode):
    """Records calls of the unsafe functions, also when f calls them directly (F.layer_norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in UNSAFE_FUNCTIONS:
            self.seen.add(f"torch.nn.functional.{name}" if name in FUNCTIONAL else f"torch.{name}")
        return func(*args, **(kwargs or {}))


class ForwardModeUnsafe(ValueError):
    """'jvp' was asked for on a model with a layer whose forward-mode derivative is wrong."""

    def __init__(self, layers: list[str]) -> None:
        self.layers = layers
        super().__init__(
            f"The 'jvp' method would give wrong gradients here: this model has {', '.join(layers[:3])}"
            f"{' ...' if len(layers) > 3 else ''}, and in this PyTorch backpropagating through layer norm's (or "
            "instance norm's) "
            "forward-mode derivative gives wrong parameter gradients (the penalty's value stays right, its "
            "gradient does not: -71% measured on a CNN with LayerNorm). Use method='projection' (unbiased), 'exact' "
            "(goes by rows here) or 'fd', which differentiate these layers in reverse mode only."
        )
