"""Random probes for the estimators, independent or orthogonal per sample.

Every estimator averages n random products per sample. With independent probes the estimate's
variance falls as 1/n. Orthogonal probes do better at the same cost: the n probes of one sample
form a random orthonormal frame (QR of a Gaussian matrix, signs fixed so the frame is uniformly
distributed), each probe still marginally as before, so the estimate stays unbiased, and n = C
output projections give the exact ||J||_F^2 (the frame is then a rotation and
C/n sum_k ||q_k^T J||^2 = ||Q^T J||_F^2 = ||J||_F^2). Measured on this project's models:
benchmarks/results/estimator_variance_cpu.md.

Gaussian probes (jvp) keep their Gaussian lengths: u_k = q_k ||g_k||, with g_k the Gaussian
column whose QR gave q_k. The lengths are independent of the frame, so each u_k is exactly
N(0, I) and E[u_k u_k^T] = I. For n = 1 both kinds draw the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jacobian_penalty.ops import randn

PROBE_KINDS = ("orthogonal", "iid")


def gaussian(n: int, batch: int, dim: int, like: Tensor, generator: torch.Generator | None, kind: str) -> Tensor:
    """(n, B, dim) probes, each N(0, I_dim); orthogonal within a sample when kind == "orthogonal"."""
    if kind == "iid" or n == 1:
        return randn((n, batch, dim), like, generator)
    blocks = []
    for start in range(0, n, dim):  # more probes than dims: independent frames of at most dim each
        m = min(dim, n - start)
        g = randn((batch, dim, m), like, generator)  # (B, dim, m)
        work = g if g.dtype in (torch.float32, torch.float64) else g.float()  # QR needs float32 or 64
        q, r = torch.linalg.qr(work)  # (B, dim, m), (B, m, m)
        signs = torch.sign(torch.diagonal(r, dim1=1, dim2=2))
        q = q * torch.where(signs == 0, 1.0, signs).unsqueeze(1)  # uniform (Haar) frame
        lengths = work.norm(dim=1, keepdim=True)  # (B, 1, m): the Gaussian columns' lengths
        blocks.append((q * lengths).to(like.dtype).permute(2, 0, 1))  # (m, B, dim)
    return torch.cat(blocks)


def unit(n: int, batch: int, dim: int, like: Tensor, generator: torch.Generator | None, kind: str) -> Tensor:
    """(n, B, dim) unit vectors, uniform on the sphere; orthonormal within a sample when asked."""
    g = gaussian(n, batch, dim, like, generator, kind)
    return g / g.norm(dim=2, keepdim=True)
