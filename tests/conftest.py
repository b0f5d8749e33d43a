"""Shared test settings.

Tests pin torch to one intra-op thread: the models here are small, and on a 2-core machine that
also runs a Gradio server (or other jobs) two OpenMP threads per process spin against each
other and make runs many times slower. Results do not depend on the thread count.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers, one per core), every test of tests/app
    runs in one worker, in file order: they start servers on fixed ports, share module-scoped
    servers and browsers, and some measure the server's own memory; the layers below run beside
    them on the other worker."""
    for item in items:
        if item.path.parts[-3:-1] == ("tests", "app"):
            item.add_marker(pytest.mark.xdist_group("app"))
