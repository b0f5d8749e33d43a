"""The first call's check: do the samples of a batch stay independent, and may forward mode run?

A module-type check cannot see coupling by ordinary ops (`h - h.mean(0)`, `F.batch_norm(...,
training=True)`: exact measured 0.0 against 2.55, and 0.395 against 1.687), nor a sequence layer
reading the wrong dim as the batch when the sequence is as long as the batch. So the first call
of `jacobian_penalty` for a given f checks by behaviour: three passes without a graph on at most
CHECK_SAMPLES samples (as they are, with the first changed, with the last changed), the random
state and buffers replayed, and the outputs of the other samples compared. The same passes record
which layer-norm calls run (jacobian_penalty.forward_mode), including direct `F.layer_norm` calls.

The result is cached on the module behind f, keyed by what can change it: the function, every
submodule's training flag, the target, and x's per-sample shape, dtype and device. A plain function
(a lambda) has nowhere to keep it and is checked on every call; `check_independence=False` turns
the check off (module-type checks of BatchNorm and LayerNorm stay on).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from jacobian_penalty.forward_mode import UnsafeCalls, unsafe_modules
from jacobian_penalty.guards import (
    _SEQUENCE_LAYERS,
    BATCHNORM_FIXES,
    BATCHNORM_REASON,
    GENERIC_FIXES,
    SEQUENCE_FIXES,
    Forward,
    SampleCouplingError,
    _module_name,
    coupling_message,
    functorch_safe,
)
from jacobian_penalty.targets import Capture, root_module

CHECK_SAMPLES = 4  # enough to see any coupling; small enough to cost little on the first call
# Relative change of another sample's output that counts as "moved": far above float32 rounding
# of a row that does not depend on the changed sample (those stay bit-identical in practice).
TOLERANCE = 1e-5
CACHE_ATTRIBUTE = "_jacobian_penalty_checked"


@dataclass(frozen=True)
class Findings:
    forward_mode_unsafe: tuple[str, ...]  # layers (or functions) whose forward-mode derivative is wrong


def first_call(f: Callable, x: Tensor, capture: Capture, target: Any, coupling: str, enabled: bool,
               forward_mode: bool = True) -> Findings:
    """The findings for f on inputs like x; the behaviour check runs once per (f, modes, shape).
    Without it (`enabled` False, or one sample), a method that may use forward mode still gets the
    layer-norm calls of one recorded pass: forward mode must never meet them, check or no check."""
    by_type = tuple(unsafe_modules(f))
    if not functorch_safe(f):
        return Findings(by_type)  # DDP is checked by the engine, unwrapped
    check = enabled and x.shape[0] >= 2  # one sample cannot couple
    if not check and (by_type or not forward_mode):
        return Findings(by_type)
    store, key = _cache_slot(f, x, target)
    key = key if check else (*key, "calls only")  # a record of calls is no independence check
    if store is not None and key in store:
        return store[key]
    if not check:
        try:
            calls = recorded_calls(f, x[:1], capture, coupling)
        except Exception:  # noqa: BLE001 - f may only run on its full batch (a reshape by batch size)
            calls = recorded_calls(f, x, capture, coupling)
    else:
        try:
            calls = behaviour(f, x[:CHECK_SAMPLES], capture, coupling)
        except SampleCouplingError:
            raise
        except Exception:  # noqa: BLE001 - f may only run on its full batch (a reshape by batch size)
            calls = behaviour(f, x, capture, coupling)
    # Functional calls are named only when no LayerNorm module explains them.
    findings = Findings(by_type or tuple(sorted(calls)))
    if store is not None:
        store[key] = findings
    return findings


def _cache_slot(f: Callable, x: Tensor, target: Any) -> tuple[dict | None, tuple]:
    root = root_module(f)
    if root is None:
        return None, ()
    # Only strings, numbers and tuples in the key: the cache travels with the module through
    # copy.deepcopy and torch.save, so it must pickle (a lambda or a code object would not).
    function = _name(getattr(f, "__func__", None))  # a bound method: which one (model.features, ...)
    selector = target if isinstance(target, str | None) else _name(target)  # a lambda made anew each step
    key = (function, selector, tuple(m.training for m in root.modules()), tuple(x.shape[1:]), str(x.dtype),
           x.device.type)
    return root.__dict__.setdefault(CACHE_ATTRIBUTE, {}), key


def _name(fn: Any) -> str | None:
    """Where a function was defined: the same for a lambda written once and made anew each call."""
    if fn is None:
        return None
    code = getattr(fn, "__code__", None)
    if code is None:
        return f"{type(fn).__module__}.{type(fn).__qualname__}"
    return f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}"


def behaviour(f: Callable, x: Tensor, capture: Capture, coupling: str) -> set[str]:
    """Raise (or warn) if changing the first or the last sample of x moves another sample's target;
    return the unsafe calls seen."""
    k = x.shape[0]
    sub = x.detach()
    scale = sub.float().std().item() or 1.0
    noise = torch.randn((2, *sub.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=torch.float32,
                        device="cpu")  # where the generator lives, whatever the default device
    noise = (scale * noise).to(device=sub.device, dtype=sub.dtype)  # private generator: the stream is kept
    first, last = sub.clone(), sub.clone()
    first[0] += noise[0]
    last[-1] += noise[1]
    forward = Forward(f, sub, double_backward=False, forward_mode=False, coupling=coupling, replay=True,
                      capture=capture, record=True)
    with torch.no_grad(), UnsafeCalls() as calls, warnings.catch_warnings():
        if coupling == "warn":
            warnings.simplefilter("ignore")  # the penalty's own pass warns for typed modules
        try:
            passes = [forward(sub).reshape(k, -1)]
            seen = [list(forward.module_outputs)]
            for changed in (first, last):
                forward.module_outputs.clear()
                passes.append(forward.again(changed).reshape(k, -1))
                seen.append(list(forward.module_outputs))
        finally:
            forward.restore_start()  # the penalty's pass sees the random state and buffers the caller left
    moved = [_moved(passes[0], passes[1], keep=0), _moved(passes[0], passes[2], keep=k - 1)]
    if any(m.any() for m in moved):
        _report(f, sub, passes, seen, coupling)
    return calls.seen


def recorded_calls(f: Callable, x: Tensor, capture: Capture, coupling: str) -> set[str]:
    """The unsafe calls (jacobian_penalty.forward_mode) of one pass of f on x, without a graph; the
    random state and buffers are put back, so the penalty's own pass sees what the caller left."""
    sub = x.detach()
    forward = Forward(f, sub, double_backward=False, forward_mode=False, coupling=coupling, replay=True,
                      capture=capture)
    with torch.no_grad(), UnsafeCalls() as calls, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the penalty's own pass gives any warning once
        try:
            forward(sub)
        finally:
            forward.restore_start()
    return calls.seen


def _moved(before: Tensor, after: Tensor, keep: int) -> Tensor:
    """(B,) bool: rows other than `keep` that changed beyond rounding."""
    change = (after - before).abs().reshape(before.shape[0], -1).amax(dim=1)
    change[keep] = 0
    limit = TOLERANCE * before.abs().max() + torch.finfo(before.dtype).tiny
    return change > limit


def _report(f: Callable, sub: Tensor, passes: list[Tensor], seen: list, coupling: str) -> None:
    k = sub.shape[0]
    module = _culprit(seen, k)
    if isinstance(module, _SEQUENCE_LAYERS) and not getattr(module, "batch_first", True):
        verb = "recurs" if isinstance(module, nn.RNNBase) else "attends"
        reason = (f"has batch_first=False, so it reads dim 1 of its input as the batch and {verb} "
                  f"across dim 0, which holds the samples: changing one of {k} samples moved the others' outputs")
        message = coupling_message(module, reason, f, SEQUENCE_FIXES)
    elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        message = coupling_message(module, BATCHNORM_REASON, f, BATCHNORM_FIXES)
    else:
        where = (f"inside {_module_name(module, f)}" if module is not None else "inside f")
        reason = (f"mixes the samples of a batch: changing one of {k} samples moved the others' outputs, so an "
                  f"operation {where} reads across the batch dim")
        message = coupling_message(None, "f " + reason, f, GENERIC_FIXES)
    message += " (This check runs on the first call for each model; check_independence=False turns it off.)"
    if coupling == "raise":
        raise SampleCouplingError(message)
    warnings.warn(message, stacklevel=4)


def _culprit(seen: list[list[tuple[nn.Module, Tensor | None]]], k: int) -> nn.Module | None:
    """The first module to finish whose own output rows moved with another sample's input."""
    base, *changed = seen
    if any(len(passes) != len(base) for passes in changed):
        return None  # control flow differed between passes: no module to blame reliably
    for i, (module, rows) in enumerate(base):
        if rows is None:
            continue
        for passes, keep in zip(changed, (0, k - 1), strict=True):
            other = passes[i][1]
            if other is not None and other.shape == rows.shape and _moved(rows, other, keep).any():
                return module
    return None
