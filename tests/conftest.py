"""Shared test settings.

Tests pin torch to one intra-op thread: the models here are small, and on a 2-core machine that
also runs a Gradio server (or other jobs) two OpenMP threads per process spin against each
other and make runs many times slower. Results do not depend on the thread count.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
