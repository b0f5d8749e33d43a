"""Random probes for the estimators, independent or orthogonal per sample.

Every estimator averages n random products per sample. With independent probes the estimate's
variance falls as 1/n. Orthogonal probes do better at the same cost: the n probes of one sample
form a random orthonormal frame (QR of Gaussian vectors with the signs fixed: a uniformly
distributed frame). Each probe is still uniform on the sphere, so the estimate stays
unbiased, and n = C output projections (or n = D input directions) give the exact ||J||_F^2:
the frame is then a rotation Q and (C/n) sum_k ||q_k^T J||^2 = ||Q^T J||_F^2 = ||J||_F^2.
Measured on this project's models: benchmarks/results/estimator_variance_cpu.md.

"jvp" takes u_k = sqrt(D) q_k (E[u u^T] = I) with orthogonal probes, and Gaussian u_k ~ N(0, I)
with independent ones (Hutchinson); both unbiased, the first without the variance of the
Gaussian lengths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jacobian_penalty.ops import randn

PROBE_KINDS = ("orthogonal", "iid")


def unit(n: int, batch: int, dim: int, like: Tensor, generator: torch.Generator | None, kind: str) -> Tensor:
    """(n, B, dim) unit vectors, uniform on the sphere; an orthonormal frame per sample when
    kind == "orthogonal" (independent frames of at most dim vectors when n > dim)."""
    if kind == "iid" or n == 1:  # one probe: both kinds are the same draw
        g = randn((n, batch, dim), like, generator)
        return g / g.norm(dim=2, keepdim=True)
    blocks = []
    for start in range(0, n, dim):
        m = min(dim, n - start)
        g = randn((m, batch, dim), like, generator)  # (m, B, dim)
        work = g if g.dtype in (torch.float32, torch.float64) else g.float()  # QR needs float32 or 64
        frame = _householder(work)
        blocks.append(frame.to(like.dtype))
    return torch.cat(blocks)


def _householder(g: Tensor) -> Tensor:
    """(m, B, dim) Gaussian rows -> orthonormal rows per sample, by QR with the signs fixed."""
    q, r = torch.linalg.qr(g.permute(1, 2, 0))  # (B, dim, m), (B, m, m)
    signs = torch.sign(torch.diagonal(r, dim1=1, dim2=2))
    q = q * torch.where(signs == 0, 1.0, signs).unsqueeze(1)  # uniform (Haar) frame
    return q.permute(2, 0, 1)


def gaussian_like(n: int, batch: int, dim: int, like: Tensor, generator: torch.Generator | None,
                  kind: str) -> Tensor:
    """(n, B, dim) probes with E[u u^T] = I: N(0, I) when independent, sqrt(dim) times an
    orthonormal frame when orthogonal."""
    if kind == "iid":
        return randn((n, batch, dim), like, generator)
    return unit(n, batch, dim, like, generator, kind) * dim**0.5
