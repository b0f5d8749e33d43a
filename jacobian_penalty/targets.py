"""Inner targets: the Jacobian of part of what f computes, with f's whole output kept for the loss.

`target` is one of
- None: f's output itself (one tensor of shape (B, ...));
- a callable selecting a tensor from f's output: `lambda out: out["penultimate_layer"]` for a
  model that returns a dict, `lambda out: out[1]` for a tuple;
- the name of a submodule of f (as in `model.named_modules()`, e.g. "features" or "blocks.2"):
  the penalty is on that submodule's output, read by a forward hook during the same pass.

Either way the penalty's forward pass is the only one: f runs once, the target is read from it,
and the caller gets f's full output back for its cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


def uncompiled(f: Any) -> Any:
    """The eager module or function behind torch.compile's wrapper, else f itself.

    The penalty runs f eagerly: PyTorch does not differentiate a compiled graph twice (double
    backward through a compiled region is unsupported), and the penalty's hooks would make dynamo
    warn about graph breaks on every call. The parameters are the same objects, so the caller's
    compiled model trains as usual; only the penalty's passes are not compiled.
    """
    inner = getattr(f, "_orig_mod", None)  # torch.compile(module)
    if isinstance(inner, nn.Module):
        return inner
    return getattr(f, "_torchdynamo_orig_callable", f)  # torch.compile(function)


def root_module(f: Any) -> nn.Module | None:
    """The module behind f: f itself, the module of a bound method (`model.features`), else None."""
    if isinstance(f, nn.Module):
        return f
    owner = getattr(f, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def check_target(f: Any, target: Any) -> None:
    if target is None or callable(target):
        return
    if not isinstance(target, str):
        raise ValueError(
            f"target must be None, a submodule's name or a function of f's output, got {type(target).__name__}."
        )
    root = root_module(f)
    if root is None:
        raise ValueError(
            f"target={target!r} names a submodule, but f is not a module; pass the model itself as f, or a "
            "function of f's output as target (e.g. target=lambda out: out['features'])."
        )
    names = dict(root.named_modules())
    if target not in names or target == "":
        shown = ", ".join(repr(n) for n in list(names)[1:9])
        raise ValueError(f"f has no submodule named {target!r}; its submodules include {shown}.")


class Capture:
    """Runs f and returns (target, full output); the target read as `target` says (module docstring)."""

    def __init__(self, f: Callable, target: Any) -> None:
        self.f = f
        self.select = target if callable(target) else None
        self.module = root_module(f).get_submodule(target) if isinstance(target, str) else None
        self.name = target if isinstance(target, str) else None

    def __call__(self, x: Any) -> tuple[Any, Any]:
        if self.module is None:
            out = self.f(x)
            return (out if self.select is None else self.select(out)), out
        seen: list[Any] = []
        handle = self.module.register_forward_hook(lambda _m, _args, output: seen.append(output))
        try:
            out = self.f(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            ran = "did not run" if not seen else f"ran {len(seen)} times"
            raise ValueError(
                f"target={self.name!r}: that submodule {ran} in one forward pass of f; the penalty needs "
                "a submodule that runs once (or pass a function of f's output as target)."
            )
        return seen[0], out
