"""The measurement code of demo.budget.timing and the grid of benchmarks/penalty_cost.py: what they
return and write, never how fast anything is.

Tiny models and batches keep this to a few seconds; timings are only checked to be positive
and finite, since a shared machine makes any bound on them flaky.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from demo.budget import timing as bench
from jacobian_penalty import jacobian_penalty

TINY = {"batch_size": 4, "input_shape": (6,), "repeats": 2}


ROOT = Path(__file__).resolve().parents[2]


def penalty_cost(args: list[str]) -> subprocess.CompletedProcess:
    """benchmarks/penalty_cost.py run as the script it is (nothing imports benchmarks/)."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "penalty_cost.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def tiny_args(out, *extra: str) -> list[str]:
    return [
        "--archs", "mlp", "--classes", "3", "--batch-size", "4", "--input-shape", "6", "--repeats", "1",
        "--sweep-classes", "3", "--sweep-chunks", "2", "--backward-archs", "mlp", "--backward-classes", "3",
        "--out", str(out), "--quiet", *extra,
    ]


def test_time_steps_one_row_per_method_plain_first_with_ratio_one():
    rows = bench.time_steps("mlp", 3, ["projection", "exact", "jvp", "fd"], **TINY)
    assert [r["method"] for r in rows] == ["plain", "projection", "exact", "jvp", "fd"]
    for row in rows:
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert len(row["ms_samples"]) == TINY["repeats"]
        assert row["peak_memory_mb"] is not None and row["peak_memory_mb"] >= 0
        assert (row["arch"], row["num_classes"], row["batch_size"], row["device"]) == ("mlp", 3, 4, "cpu")
    assert rows[0]["ratio"] == 1.0  # exactly: every round's plain time divided by itself


def test_loop_only_when_asked_and_for_few_outputs():
    def methods(num_classes, **kwargs):
        rows = bench.time_steps("mlp", num_classes, ["projection"], measure_memory=False, **TINY, **kwargs)
        return [r["method"] for r in rows]

    assert methods(3) == ["plain", "projection"]
    assert methods(3, include_loop=True) == ["plain", "projection", "loop"]
    assert methods(bench.LOOP_MAX_CLASSES + 1, include_loop=True) == ["plain", "projection"]


def test_unknown_method_and_bad_repeats_are_refused():
    with pytest.raises(ValueError, match="Unknown method"):
        bench.time_steps("mlp", 3, ["nope"], **TINY)
    with pytest.raises(ValueError, match="repeats"):
        bench.time_steps("mlp", 3, ["fd"], batch_size=4, input_shape=(6,), repeats=0)


def test_loop_penalty_is_the_exact_penalty():
    # The thread's loop must measure the same quantity as "exact", or comparing them means nothing.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    y_loop, loop = bench.loop_penalty(model, x)
    y_exact, exact = jacobian_penalty(model, x, method="exact")
    torch.testing.assert_close(loop, exact, rtol=1e-12, atol=0)
    torch.testing.assert_close(y_loop, y_exact)
    assert loop.requires_grad  # it trains: the step backpropagates through it


def test_peak_memory_counts_what_a_function_holds_at_once():
    numbers = 1_000_000  # 4 MB of float32

    def holds_two_at_once():
        a = torch.ones(numbers)
        b = torch.ones(numbers)
        del a, b
        c = torch.ones(numbers)
        del c

    peak = bench.peak_memory_mb(holds_two_at_once, torch.device("cpu"))
    assert peak == pytest.approx(2 * 4 * numbers / 2**20, rel=0.05)
    assert bench.peak_memory_mb(lambda: None, torch.device("cpu")) == pytest.approx(0, abs=0.01)


def test_resident_growth_counts_memory_outside_torchs_allocator():
    size = 64 * 2**20

    def touches_64_mb_outside_torch():
        block = bytearray(size)  # zero-filled: every page is touched, none through torch
        del block

    resident = bench.resident_growth_mb(touches_64_mb_outside_torch)
    assert resident is not None and 0.95 * size / 2**20 <= resident < 2 * size / 2**20, resident
    assert bench.peak_memory_mb(touches_64_mb_outside_torch, torch.device("cpu")) == pytest.approx(0, abs=0.01)


def test_cpu_clock_is_offered_only_on_the_cpu():
    rows = bench.time_steps("mlp", 3, ["fd"], clock="cpu", measure_memory=False, **TINY)
    assert rows[0]["clock"] == "cpu" and rows[1]["ms_per_step"] > 0
    with pytest.raises(ValueError, match="clock"):
        bench._clock("cpu", torch.device("cuda"))


def test_main_writes_json_and_markdown_with_device_and_versions(tmp_path):
    done = penalty_cost(tiny_args(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "penalty_cost_cpu.json").read_text())
    env = report["environment"]
    assert env["device"] == "cpu" and env["device_name"]
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["cpu_count"] >= 1 and env["torch_threads"] >= 1 and env["date"]
    methods = {r["method"] for r in report["rows"]}
    assert methods == {"plain", "projection", "exact", "jvp", "fd", "loop"}
    assert {(r["mode"], r["chunk_size"]) for r in report["chunk_sweep"]} == {
        ("train", None), ("eval", None), ("train", 2), ("eval", 2)
    }
    assert {r["backward"] for r in report["backward_comparison"]} == {"all", "params"}
    text = (tmp_path / "penalty_cost_cpu.md").read_text()
    assert f"torch {torch.__version__}" in text and "on cpu" in text
    assert "| mlp | 3 | 1.00 (" in text  # the plain column of the ratio table


def test_methods_that_grow_with_outputs_are_skipped_past_the_budget(tmp_path):
    args = tiny_args(tmp_path, "--max-step-seconds", "1e-9", "--sweep-chunks", "--backward-archs")
    args[args.index("--classes") + 1 : args.index("--classes") + 2] = ["3", "6"]
    done = penalty_cost(args)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "penalty_cost_cpu.json").read_text())
    skipped = {r["method"] for r in report["rows"] if r.get("skipped")}
    assert skipped == {"exact", "loop"}  # extrapolated from C = 3, never measured at C = 6
    assert all(r["ms_per_step"] is None for r in report["rows"] if r.get("skipped"))
    assert report["chunk_sweep"] == [] and report["backward_comparison"] == []
    assert "Skipped" in (tmp_path / "penalty_cost_cpu.md").read_text()


def test_the_script_takes_its_flags_without_a_separator(tmp_path):
    done = penalty_cost(tiny_args(tmp_path, "--no-loop", "--sweep-chunks", "--backward-archs"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "penalty_cost_cpu.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_in_plain_words(tmp_path):
    done = penalty_cost(tiny_args(tmp_path, "--device", "cuda"))
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr
