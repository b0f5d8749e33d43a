"""ZeroGPU support (demo.app.zerogpu): the duration a run asks for, the wrapper, and what the UI's training
generator yields (on ZeroGPU it runs in a forked worker and every yielded value is pickled)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from demo.app import running
from demo.app import zerogpu as gpu
from demo.app.limits import Limits
from demo.engine.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SPACE = Limits(max_seconds=120.0)
BASE = RunConfig(steps=500, robustness=False)


def duration(**changes) -> int:
    return gpu.gpu_duration(BASE.replace(**changes), SPACE)


def test_duration_grows_with_steps_batch_and_architecture():
    assert duration(steps=100) < duration(steps=1000) < duration(steps=3000)
    assert duration(batch_size=64) < duration(batch_size=512)
    assert duration(dataset="cifar10", arch="mlp") < duration(dataset="cifar10", arch="resnet")
    assert duration(robustness=False) < duration(robustness=True)


def test_duration_grows_with_the_cost_of_the_method():
    plain, fd, projection, exact = (duration(penalty=0.0), duration(method="fd"), duration(method="projection"),
                                    duration(method="exact"))
    assert plain < fd < projection < exact
    assert duration(num_projections=1) < duration(num_projections=4)
    # exact grows with the number of outputs C; the estimators do not.
    assert duration(method="exact", dataset="moons") < duration(method="exact", dataset="digits")
    assert gpu.method_factor(BASE.replace(dataset="synthetic", num_classes=1000)) == gpu.method_factor(BASE)


def test_duration_is_a_bounded_whole_number_of_seconds():
    small, huge = duration(steps=1), duration(steps=100_000, method="exact", dataset="synthetic", num_classes=1000)
    assert isinstance(small, int) and isinstance(huge, int)
    assert small == gpu.MIN_DURATION_S
    assert huge == SPACE.max_seconds + gpu.TAIL_S  # the run stops at its budget; the call needs no more
    # A run's own, shorter time budget bounds it too.
    assert gpu.gpu_duration(BASE.replace(steps=100_000, time_budget=10.0), SPACE) == 10 + gpu.TAIL_S


def test_the_cap_follows_the_space_limit_in_the_environment(monkeypatch):
    huge = BASE.replace(steps=100_000, method="exact")
    monkeypatch.setenv("JP_MAX_SECONDS", "50")
    assert gpu.gpu_duration(huge) == 50 + gpu.TAIL_S
    monkeypatch.setenv("JP_MAX_SECONDS", "200")
    assert gpu.gpu_duration(huge) == 200 + gpu.TAIL_S


@pytest.mark.skipif(os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"), reason="on ZeroGPU")
def test_on_gpu_is_the_function_itself_off_zerogpu(monkeypatch):
    assert gpu.on_gpu(running.run_stream) is running.run_stream
    monkeypatch.setitem(sys.modules, "spaces", None)  # the package missing: import fails
    assert gpu.on_gpu(running.run_stream) is running.run_stream


def test_on_gpu_asks_spaces_for_the_duration_of_the_run(monkeypatch):
    import spaces

    seen = {}

    def fake_gpu(task=None, *, duration=None, size=None):
        seen["duration"] = duration
        return lambda fn: fn

    monkeypatch.setattr(spaces, "GPU", fake_gpu)
    gpu.on_gpu(running.run_stream)
    cfg = BASE.replace(steps=2000)
    assert seen["duration"](cfg) == gpu.gpu_duration(cfg)
    assert seen["duration"]("other", cfg=cfg) == gpu.gpu_duration(cfg)
    with pytest.raises(TypeError, match="RunConfig"):
        seen["duration"](1, 2)
    gpu.on_gpu(running.run_stream, duration=lambda *args: 42)  # a function without a RunConfig
    assert seen["duration"]() == 42


def test_the_wrapped_training_generator_runs_here_and_yields_picklable_cpu_data():
    cfg = RunConfig(steps=30, report_every=10, eval_every=10, device="auto")  # robustness on: every event kind
    pickle.dumps(cfg)  # ZeroGPU pickles the arguments too
    outputs = list(gpu.on_gpu(running.run_stream)(cfg))
    assert outputs and outputs[-1][0]["status"] == "completed" and outputs[-1][0]["robustness"]
    assert any(weights for _, weights in outputs)
    for value in outputs:
        pickle.loads(pickle.dumps(value))
        tensors = list(_tensors(value))
        assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors)


def test_the_app_wraps_its_training_generator_with_on_gpu(tmp_path):
    """Import the UI's training module with a stand-in `spaces` that records what it wraps
    (a fresh process, so this module's imports stay untouched)."""
    (tmp_path / "spaces.py").write_text(textwrap.dedent("""
        WRAPPED = {}
        def GPU(task=None, *, duration=None, size=None):
            def wrap(fn):
                WRAPPED[fn.__module__ + "." + fn.__qualname__] = duration
                return fn
            return wrap
        def gradio_auto_wrap(fn):
            return fn
    """))
    script = textwrap.dedent("""
        import json, spaces
        import demo.app.running
        from demo.engine.config import RunConfig
        print(json.dumps({name: d(RunConfig()) for name, d in spaces.WRAPPED.items()}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    wrapped = json.loads(done.stdout.strip().splitlines()[-1])
    assert wrapped.get("demo.app.running.run_stream") == gpu.gpu_duration(RunConfig())


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
