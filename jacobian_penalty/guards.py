"""What keeps the penalty from returning a silently wrong number, and lets it run on attention and
recurrent layers.

Every forward pass of f inside a penalty call goes through `Forward`, which
- checks that f returned one tensor with one row per sample;
- raises (or warns) when a module that couples the samples of a batch runs: BatchNorm in training
  mode, or an attention/recurrent layer with `batch_first=False` fed a batch-first tensor. A
  per-sample Jacobian through one batched backward assumes samples do not interact;
- picks kernels that have the derivatives the method needs, only inside the call: the math
  scaled-dot-product-attention backend (the fused flash kernels have no double backward and no
  forward-mode rule), cuDNN off for RNNs on CUDA (no double backward), oneDNN off for RNNs on the
  CPU in forward mode (`mkldnn_rnn_layer` has no forward-mode rule);
- replays the random state, so dropout draws the same mask in every forward pass of one call
  (finite differences of two different masks measure the masks, not the Jacobian).
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules import module as module_hooks
from torch.nn.modules.batchnorm import _BatchNorm

from jacobian_penalty.replay import BufferLog, RandomState
from jacobian_penalty.targets import Capture

COUPLING_CHOICES = ("raise", "warn")
# Layers whose `batch_first=False` means "dim 1 is the batch": fed (B, ...) they mix samples.
_SEQUENCE_LAYERS = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.Transformer,
    nn.RNNBase,
)


class SampleCouplingError(ValueError):
    """f lets samples of a batch interact, so per-sample Jacobians are not what one pass gives."""


def check_arguments(
    x: Tensor, method: str, methods: Any, num_projections: int, chunk_size: int | None, fd_step: float, coupling: str
) -> None:
    if method not in methods:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(methods)}.")
    if isinstance(num_projections, bool) or not isinstance(num_projections, int) or num_projections < 1:
        raise ValueError(f"num_projections must be a whole number >= 1, got {num_projections!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a whole number >= 1 or None, got {chunk_size!r}.")
    if not (fd_step > 0 and fd_step < float("inf")):
        raise ValueError(f"fd_step must be a positive finite number, got {fd_step!r}.")
    if coupling not in COUPLING_CHOICES:
        raise ValueError(f"coupling must be one of {', '.join(COUPLING_CHOICES)}, got {coupling!r}.")
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < 2:
        raise ValueError(
            f"x must be batched, shape (B, ...) with at least 2 dims; got shape {tuple(x.shape)}. "
            "For one example use x.unsqueeze(0)."
        )
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}); the penalty needs at least one sample.")
    if not x.is_floating_point():
        raise ValueError(
            f"x must be floating point to be differentiated, got dtype {x.dtype}; convert it with x.float()."
        )


def check_output(y: Any, batch: int) -> Tensor:
    """y itself if it is one tensor of shape (batch, ...); else a ValueError that says what to do."""
    if isinstance(y, tuple | list):
        kind = type(y).__name__
        raise ValueError(
            f"f returned a {kind} of {len(y)} items; the penalty needs one tensor of shape (B, ...). "
            "Pass a function that selects it, e.g. `lambda x: model(x)[0]`."
        )
    if isinstance(y, dict):
        key = next(iter(y), "logits")
        raise ValueError(
            f"f returned a dict with keys {list(y)}; the penalty needs one tensor of shape (B, ...). "
            f"Pass a function that selects it, e.g. `lambda x: model(x)[{key!r}]`."
        )
    if not isinstance(y, Tensor):
        raise ValueError(f"f must return a tensor of shape (B, ...), got {type(y).__name__}.")
    if y.dim() == 0 or y.shape[0] != batch:
        raise ValueError(
            f"f's output has shape {tuple(y.shape)}, but x holds {batch} samples: the output needs one row "
            "per sample, with the batch as its first dim. Did f reduce over the batch (mean(0), sum(0)) "
            "or transpose it (.T)? Return the per-sample outputs."
        )
    if not y.is_floating_point():
        raise ValueError(f"f's output must be floating point, got dtype {y.dtype}.")
    return y


def _coupling_reason(module: nn.Module) -> str | None:
    """Why a module couples samples, known from its type alone (checked before it runs, so that
    SyncBatchNorm without a process group never starts). Everything else, sequence layers with the
    wrong batch layout included, is found by behaviour (jacobian_penalty.behaviour)."""
    if isinstance(module, _BatchNorm) and (module.training or not module.track_running_stats):
        return BATCHNORM_REASON
    return None


BATCHNORM_REASON = (
    "normalises every sample with the mean and variance of the whole batch (BatchNorm in training "
    "mode, or without running statistics), so every output depends on every sample"
)


def _module_name(module: nn.Module, owner: Any) -> str:
    root = owner if isinstance(owner, nn.Module) else getattr(owner, "__self__", None)
    if isinstance(root, nn.Module):
        for name, candidate in root.named_modules():
            if candidate is module:
                return f"{type(module).__name__} ({name or 'the model itself'})"
    return type(module).__name__


BATCHNORM_FIXES = (
    "Fixes: run the model in eval mode for the penalty (model.eval()), use GroupNorm or LayerNorm instead of "
    "BatchNorm. torch.func.replace_all_batch_norm_modules_ alone is not enough: it makes BatchNorm "
    "vmap-compatible but still normalises with batch statistics."
)
SEQUENCE_FIXES = (
    "Fixes: build the layer with batch_first=True, or hand it (sequence, batch, features) by transposing "
    "inside f."
)
GENERIC_FIXES = (
    "Fixes: remove the cross-sample operation from the part of the model the penalty sees (a mean, sum or "
    "normalisation over dim 0, F.batch_norm with training=True, attention across the batch)."
)


def coupling_message(module: nn.Module | None, reason: str, owner: Any, fixes: str = BATCHNORM_FIXES) -> str:
    who = f"{_module_name(module, owner)} " if module is not None else ""
    measured = (" (with BatchNorm in training mode on 32 samples: 0.224 from 'exact' and 0.677 from "
                "'projection' where the per-sample value is 0.564)") if fixes is BATCHNORM_FIXES else ""
    return (
        f"{who}{reason}. The penalty is a per-sample Jacobian taken through one batched backward pass; here "
        f"it would silently measure a mix of per-sample and cross-sample derivatives instead{measured}. "
        f"{fixes} To go on anyway, pass coupling='warn'."
    )


@contextlib.contextmanager
def _backend_flag(backend: Any, value: bool) -> Iterator[None]:
    """Set `backend.enabled` and restore it, touching no other flag (the backends' own `flags()`
    context managers also reset benchmark/deterministic/tf32 to their defaults)."""
    before = backend.enabled
    backend.enabled = value
    try:
        yield
    finally:
        backend.enabled = before


class Forward:
    """Runs f for one penalty call: checked output, derivative-capable kernels, coupling checks and
    the same random state and buffers in every pass.

    double_backward: the method differentiates a VJP again (projection, exact in reverse).
    forward_mode: the method pushes tangents through f (jvp, exact in forward mode).
    capture: reads the penalised tensor (the target) and f's full output from one pass.
    full_precision: run f with autocast off (forward differences and forward mode in bfloat16 or
        float16 are wrong: fd's difference drowns in rounding, jvp fails on mixed dtypes).
    record: keep each module's output of every pass (the behaviour check names the culprit).
    """

    def __init__(self, f: Callable[[Tensor], Any], x: Tensor, *, double_backward: bool, forward_mode: bool,
                 coupling: str, replay: bool, capture: Capture | None = None, full_precision: bool = False,
                 record: bool = False) -> None:
        self.f = f
        self.capture = capture if capture is not None else Capture(f, None)
        self.replay = replay  # more than one pass of f: remember the random state and buffers
        self.batch = x.shape[0]
        self.device = x.device
        self.double_backward = double_backward
        self.forward_mode = forward_mode
        self.coupling = coupling
        self.full_precision = full_precision
        self.record = record
        self.output: Any = None  # f's full output from the first pass, for the caller's loss
        self.module_outputs: list[tuple[nn.Module, Tensor | None]] = []
        self._start: RandomState | None = None
        self._after_first: RandomState | None = None
        self._buffers = BufferLog() if replay else None
        self._first = True

    def _run(self, t: Tensor) -> tuple[Tensor, Any]:
        target, out = self.capture(t)
        return check_output(target, self.batch), out

    def _begin(self) -> None:
        if self.replay:
            self._start = RandomState.capture(self.device)

    def _end_first(self, out: Any) -> None:
        self.output = out
        self._first = False
        if self.replay:
            self._after_first = RandomState.capture(self.device)
            self._buffers.first_pass_done()

    def __call__(self, x: Tensor) -> Tensor:
        """The target of f(x): the first pass of the call (its full output kept in self.output)."""
        self._begin()
        with self._guarded():
            y, out = self._run(x)
        self._end_first(out)
        return y

    def with_vjp(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor, ...]]]:
        """(target of f(x), its VJP function) from torch.func.vjp: the first pass of the call.

        The VJP function can be vmapped over many cotangents (functorch's batching rules, about
        2x faster than autograd's `is_grads_batched` with a graph); y also keeps an autograd
        graph to x when x requires grad, so plain `torch.autograd.grad` works on it too.
        """
        self._begin()
        with self._guarded():
            y, vjp_fn, out = torch.func.vjp(self._run, x, has_aux=True)
        self._end_first(out)
        return y, vjp_fn

    def again(self, x: Tensor) -> Tensor:
        """The target of f(x) again, with the random state and buffers the first pass saw."""
        self._rewind()
        with self._guarded():
            return self._run(x)[0]

    def tangent(self, x: Tensor, u: Tensor, *, first: bool = False) -> tuple[Tensor, Tensor]:
        """(target of f(x), J u) by forward mode; differentiable w.r.t. f's parameters and x."""
        if first:
            self._begin()
        else:
            self._rewind()
        with self._guarded():
            try:
                y, ju, out = self._jvp(x, u)
            except NotImplementedError as error:
                raise ForwardModeUnavailable(_op_name(error)) from error
            except RuntimeError as error:
                if "autograd.Function with functorch" not in str(error):
                    raise
                raise ForwardModeUnavailable(
                    "a custom torch.autograd.Function (forward mode needs its setup_context and jvp methods)"
                ) from error
        if first:
            self._end_first(out)
        return y, ju

    def mark(self) -> None:
        """Remember the present random state as the one to leave behind."""
        if self.replay:
            self._after_first = RandomState.capture(self.device)

    def _jvp(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Any]:
        if functorch_safe(self.f):
            return torch.func.jvp(self._run, (x,), (u,), has_aux=True)
        # DistributedDataParallel cannot run under torch.func's transforms (its reducer touches the
        # wrapped tensors' storage from the second step on): autograd's own dual numbers instead.
        with fwAD.dual_level():
            target, out = self._run(fwAD.make_dual(x, u))
            y, ju = fwAD.unpack_dual(target)
        return y, ju, out

    def finish(self) -> None:
        """Leave the random state and buffers where one forward pass would have left them."""
        if self._after_first is not None:
            self._after_first.restore()
        if self._buffers is not None:
            self._buffers.leave()

    def restore_start(self) -> None:
        """Put the random state and buffers back as they were before the first pass."""
        self._rewind()

    def _rewind(self) -> None:
        if self._start is not None:
            self._start.restore()
        if self._buffers is not None:
            self._buffers.rewind()

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        caller = threading.get_ident()
        open_flags: dict[int, list[contextlib.ExitStack]] = {}
        first = self._first

        def before(module: nn.Module, args: tuple) -> None:
            if threading.get_ident() != caller:  # global hooks see every thread's modules
                return
            reason = _coupling_reason(module)
            if reason:
                message = coupling_message(module, reason, self.f)
                if self.coupling == "raise":
                    raise SampleCouplingError(message)
                warnings.warn(message, stacklevel=2)
            if first and self._buffers is not None:
                self._buffers.before(module)
            if isinstance(module, nn.RNNBase):
                flags = contextlib.ExitStack()
                if self.double_backward:
                    flags.enter_context(_backend_flag(torch.backends.cudnn, False))
                if self.forward_mode:
                    flags.enter_context(_backend_flag(torch.backends.mkldnn, False))
                open_flags.setdefault(id(module), []).append(flags)

        def after(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() != caller:
                return
            if open_flags.get(id(module)):
                open_flags[id(module)].pop().close()
            if self.record:
                self.module_outputs.append((module, _rows(output, self.batch)))

        with contextlib.ExitStack() as stack:
            if self.full_precision and torch.is_autocast_enabled(self.device.type):
                stack.enter_context(torch.autocast(self.device.type, enabled=False))
            if self.double_backward or self.forward_mode:
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            stack.callback(module_hooks.register_module_forward_pre_hook(before).remove)
            stack.callback(module_hooks.register_module_forward_hook(after).remove)
            # A forward that raised leaves its flags open: close them on the way out.
            stack.callback(lambda: [flags.close() for stacks in open_flags.values() for flags in stacks])
            yield


def _rows(output: Any, batch: int) -> Tensor | None:
    """The first tensor in a module's output with one row per sample (an RNN returns a tuple)."""
    if isinstance(output, Tensor):
        return output.detach() if output.dim() > 0 and output.shape[0] == batch else None
    if isinstance(output, tuple | list):
        for item in output:
            found = _rows(item, batch)
            if found is not None:
                return found
    return None


def functorch_safe(f: Callable) -> bool:
    """Whether f may run under torch.func's transforms: not a DistributedDataParallel module."""
    root = f if isinstance(f, nn.Module) else getattr(f, "__self__", None)
    return not isinstance(root, nn.parallel.DistributedDataParallel)


class ForwardModeUnavailable(ValueError):
    """An op inside f has no forward-mode derivative rule."""

    def __init__(self, op: str) -> None:
        self.op = op
        super().__init__(
            f"The 'jvp' method needs forward-mode derivatives, and PyTorch has none for the operation {op} "
            "inside this model. Use method='projection' or 'exact' (reverse mode), or 'fd' (needs no "
            "derivative of f beyond the usual backward)."
        )


def _op_name(error: BaseException) -> str:
    match = re.search(r"forward AD with (\S+) that does not support", str(error))
    return match.group(1) if match else "one of its operations"
