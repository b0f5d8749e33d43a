"""What a forward pass changes besides its output, so that every pass of one penalty call sees the
same function: the global random state (dropout's mask) and the buffers that a forward updates
(spectral_norm's power-iteration vectors u and v, BatchNorm's running statistics).

Finite differences compare f at two points: if the second pass ran with another dropout mask or
one more power iteration, the difference would measure that change (Dropout(0.5): about 25,000
against an exact 0.74; spectral_norm in training mode: +810% in value, +1120% in gradient).
After the call the state is left where one forward pass would have left it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RandomState:
    """The global CPU generator's state and, for a CUDA input, that device's."""

    def __init__(self, device: torch.device, cpu: Tensor, cuda: Tensor | None) -> None:
        self.device, self.cpu, self.cuda = device, cpu, cuda

    @classmethod
    def capture(cls, device: torch.device) -> RandomState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(device, torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class BufferLog:
    """The buffers of every module that ran in the first pass, as they were before it and after it.

    `before(module)` is called by a forward pre-hook, so it also sees modules that f calls
    indirectly (a parametrization such as spectral_norm runs as a module when the weight is read).
    Only buffers that the first pass actually changed are put back, and in place, so the tensors
    that autograd saved stay the same objects.
    """

    def __init__(self) -> None:
        self._start: dict[int, tuple[nn.Module, dict[str, Tensor]]] = {}
        self._changed: list[tuple[Tensor, Tensor, Tensor]] = []  # (buffer, before, after)

    def before(self, module: nn.Module) -> None:
        if id(module) not in self._start and module._buffers:
            saved = {k: b.detach().clone() for k, b in module._buffers.items() if b is not None}
            self._start[id(module)] = (module, saved)

    def first_pass_done(self) -> None:
        for module, saved in self._start.values():
            for name, old in saved.items():
                now = module._buffers.get(name)
                if now is not None and now.shape == old.shape and not torch.equal(now, old):
                    self._changed.append((now, old, now.detach().clone()))

    def rewind(self) -> None:
        """Buffers as the first pass found them."""
        with torch.no_grad():
            for buffer, old, _ in self._changed:
                buffer.copy_(old)

    def leave(self) -> None:
        """Buffers as one forward pass would leave them."""
        with torch.no_grad():
            for buffer, _, new in self._changed:
                buffer.copy_(new)
