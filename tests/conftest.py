"""Shared test settings.

Tests pin torch to one intra-op thread: the models here are small, and on a 2-core machine that
also runs a Gradio server (or other jobs) two OpenMP threads per process spin against each
other and make runs many times slower. Results do not depend on the thread count.
"""

from __future__ import annotations

import contextlib
import os

import torch

torch.set_num_threads(1)


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`make test` runs two workers, one per core) the tests of tests/app run
    as two chains, each in one worker in file order: they start servers, share module-scoped
    servers and a browser, and some measure the server's own memory or a visitor's timings. The
    API's and the browser's tests (BESIDE) are one chain, every other test of tests/app the other;
    both start at once, one on each worker, and each test of the layers below is a unit of its
    own, taken by whichever worker is free. With all of tests/app in one chain, that chain was the
    suite's wall time (873 s of 892) while the other worker sat idle after 409 s. (xdist's own
    "loadgroup" marks did not group anything with this pytest: the ids it suffixes are not the
    ones it schedules.)"""
    from xdist.scheduler import LoadScopeScheduling

    class AppChains(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(BESIDE):
                return "beside"
            return APP_TESTS if nodeid.startswith(APP_TESTS) else nodeid

    return AppChains(config, log)


APP_TESTS = "tests/app/"
# Servers driven through their API and a browser, that time nothing of their own: the chain that
# runs beside the rest of tests/app (the memory, Stop and time-limit checks of a real server).
BESIDE = ("tests/app/test_app.py", "tests/app/test_browser.py")
APP_PRIORITY = 5  # niceness of a worker while it runs the tests of tests/app outside BESIDE
LOW_PRIORITY = 10  # niceness of a worker while it runs tests outside tests/app


def pytest_runtest_setup(item):
    """Under pytest-xdist the app's tests (servers, a browser, timings a visitor would see) get the
    CPU first, the browser's chain before the other: a worker sets its priority for the test it
    runs, and the servers a test starts inherit it (raising it again is allowed to root, as in CI;
    elsewhere a worker stays at its lowest). Beside a real server training resnet and vit at the
    same priority, Chromium's page fell so far behind a run's streamed curves that a click on Stop
    waited over 60 s."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if item.nodeid.startswith(BESIDE):
        wanted = 0
    else:
        wanted = APP_PRIORITY if item.path.parts[-3:-1] == ("tests", "app") else LOW_PRIORITY
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) != wanted:
            os.setpriority(os.PRIO_PROCESS, 0, wanted)
