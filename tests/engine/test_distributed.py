"""The penalty and the engine under torch.distributed: two CPU ranks, gloo, loopback.

The oracle is one process on the union of the two ranks' batches. Rank r computes
    L_r = mean_{b in shard r} CE_b + lambda * mean_{b in shard r} ||J_b||_F^2
and DDP averages gradients over the W = 2 ranks: g = (grad L_0 + grad L_1) / 2 = grad (L_0 + L_1) / 2.
With equal shards of B samples, (L_0 + L_1) / 2 is exactly the loss of one process on all 2B
samples, because both terms are batch means. That holds for the deterministic "exact" estimator;
the random estimators are checked against (L_0 + L_1) / 2 computed with each rank's own probes.

This file is also the worker: `python tests/engine/test_distributed.py OUT_DIR` under torchrun's
environment variables (set by `_launch_pair`) runs one engine step per case on its shard.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from demo.engine import distributed
from demo.engine.config import RunConfig
from demo.engine.train import Finished, take_step, train
from jacobian_penalty import jacobian_penalty

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
SHARD = 6  # samples per rank; the oracle sees WORLD * SHARD
LAM = 0.5  # large enough that the penalty's share of the gradient is far above the tolerance
PROBE_SEED = 1234  # rank r draws its probes from PROBE_SEED + r
CASES = [(target, method) for target in ("logits", "features") for method in ("exact", "projection", "jvp", "fd")]
# float64 gradients of the same sums in another order agree to ~1e-16 (fd: ~1e-13, its difference
# quotient amplifies rounding); float32 or an unsynchronised rank would miss this by far.
RTOL = 1e-10
PROCESS_TIMEOUT = 120  # seconds; a hung collective fails the test instead of hanging it


# ---------------------------------------------------------------------------------------------
# The problem both sides solve, and the worker (a rank).


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small float64 MLP and a global batch of WORLD * SHARD digits-shaped inputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.build("mlp", (1, 8, 8), 10, width=16, depth=2).double()
        x = torch.rand(WORLD * SHARD, 1, 8, 8, dtype=torch.float64)
        y = torch.randint(0, 10, (WORLD * SHARD,))
    return model, x, y


def _config(target: str, method: str) -> RunConfig:
    return RunConfig(penalty=LAM, method=method, target=target)


def _worker(out: Path) -> None:
    """One engine step (demo.engine.train.take_step through demo.engine.distributed.wrap) per case on this rank's
    shard; saves the parameter gradients DDP left in .grad."""
    torch.set_num_threads(1)
    distributed.init_from_env(torch.device("cpu"), timeout=timedelta(seconds=60))
    try:
        rank = distributed.rank()
        grads = {}
        for target, method in CASES:
            model, x, y = _problem()
            idx = distributed.shard(torch.arange(x.shape[0]))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves .grad as it is
            probes = torch.Generator().manual_seed(PROBE_SEED + rank)
            take_step(_config(target, method), model, distributed.wrap(model, target), optimizer,
                      list(model.parameters()), x[idx], y[idx], probes)
            grads[f"{target}/{method}"] = [p.grad for p in model.parameters()]
        torch.save(grads, out / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


# ---------------------------------------------------------------------------------------------
# Launching processes without hangs.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _communicate(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """Wait for all; on timeout kill each process's whole session (workers included)."""
    deadline = time.monotonic() + timeout
    try:
        return [p.communicate(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"distributed run did not finish within {timeout} s")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _launch_pair(out: Path) -> None:
    """Two ranks of this file's worker, with the variables torchrun would set."""
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(WORLD)}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(out)],
            cwd=ROOT,
            env=_env(**common, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for r in range(WORLD)
    ]
    results = _communicate(procs, PROCESS_TIMEOUT)
    for r, (p, (_, err)) in enumerate(zip(procs, results, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{err[-3000:]}"


# ---------------------------------------------------------------------------------------------
# Oracles: one process, no process group.


def _union_gradients(target: str, method: str) -> list[torch.Tensor]:
    """The engine's own step on all WORLD * SHARD samples in one process."""
    model, x, y = _problem()
    penalised = model if target == "logits" else model.features
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    take_step(_config(target, method), model, penalised, optimizer, list(model.parameters()), x, y,
          torch.Generator().manual_seed(PROBE_SEED))
    return [p.grad for p in model.parameters()]


def _mean_of_shards_gradients(target: str, method: str) -> list[torch.Tensor]:
    """Gradient of (L_0 + L_1) / 2, each L_r on shard r with rank r's probes."""
    model, x, y = _problem()
    penalised = model if target == "logits" else model.features
    loss = 0.0
    for r in range(WORLD):
        idx = distributed.shard(torch.arange(x.shape[0]), of_rank=r, world=WORLD)
        out, penalty = jacobian_penalty(
            penalised, x[idx], method=method, generator=torch.Generator().manual_seed(PROBE_SEED + r)
        )
        logits = out if target == "logits" else model.head(out)
        loss = loss + (F.cross_entropy(logits, y[idx]) + LAM * penalty) / WORLD
    loss.backward()
    return [p.grad for p in model.parameters()]


def _relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(((g - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want, strict=True))


# ---------------------------------------------------------------------------------------------
# Tests.


def test_shards_are_disjoint_equal_and_cover_the_global_batch():
    batch = torch.randperm(13)
    parts = [distributed.shard(batch, of_rank=r, world=3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert torch.equal(torch.cat(parts), batch[:12])  # ragged remainder dropped
    # Without a process group everything is the identity: a single process runs as before.
    assert not distributed.is_distributed()
    assert torch.equal(distributed.shard(batch), batch)
    model, _, _ = _problem()
    assert distributed.wrap(model, "logits") is model
    assert distributed.wrap(model, "features") == model.features
    sums = torch.tensor([1.0, 2.0, 3.0])
    reduced, samples = distributed.reduce_report(sums, 7)
    assert reduced is sums and samples == 7


def test_ddp_step_gives_the_single_process_gradients_of_the_union(tmp_path):
    _launch_pair(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert set(ranks[0]) == {f"{t}/{m}" for t, m in CASES}
    for case, grads in ranks[0].items():
        target, method = case.split("/")
        # DDP synchronised the ranks: bitwise the same gradients.
        assert all(torch.equal(a, b) for a, b in zip(grads, ranks[1][case], strict=True)), case
        assert all(g.dtype == torch.float64 for g in grads)
        want = _mean_of_shards_gradients(target, method)
        assert _relative_error(grads, want) < RTOL, case
        if method == "exact":
            # Deterministic: also equal to one process on the union of the batches.
            assert _relative_error(grads, _union_gradients(target, method)) < RTOL, case
    # The check can fail: one shard alone (no synchronisation) is far from the union.
    model, x, y = _problem()
    idx = distributed.shard(torch.arange(x.shape[0]), of_rank=0, world=WORLD)
    params = list(model.parameters())
    take_step(_config("logits", "exact"), model, model, torch.optim.SGD(params, lr=0.0), params, x[idx], y[idx], None)
    assert _relative_error([p.grad for p in model.parameters()], ranks[0]["logits/exact"]) > 1e-3


@pytest.mark.parametrize("method", ["exact", "jvp"])  # exact's rows and jvp's tangents: never torch.func under DDP
def test_torchrun_cli_trains_two_ranks_and_writes_one_json(tmp_path, method):
    out = tmp_path / "run.json"
    flags = {"--method": method, "--steps": "20", "--batch-size": "32", "--seed": "1", "--report-every": "10"}
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "demo", "train", *[v for kv in flags.items() for v in kv], "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    ((stdout, stderr),) = _communicate([proc], PROCESS_TIMEOUT)
    assert proc.returncode == 0, stderr[-3000:]

    # Rank 0 alone prints (one summary, one line per report) and writes the one JSON file.
    assert stdout.count("status: completed") == 1
    assert [line.split()[1] for line in stderr.splitlines() if line.startswith("step ")] == ["10", "20"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    record = json.loads(out.read_text())
    cfg = RunConfig(method=method, steps=20, batch_size=32, seed=1, report_every=10)
    assert record["config"] == {**cfg.to_dict(), "num_classes": record["dataset"]["num_classes"]}
    assert record["status"] == "completed"
    assert record["distributed"] == {
        "world_size": 2, "backend": "gloo", "batch_size_per_rank": 32, "global_batch_size": 64,
        "evaluated_on": "rank 0, unwrapped model",
    }  # fmt: skip
    assert [h["step"] for h in record["history"]] == [10, 20]
    assert 0 <= record["final"]["test_accuracy"] <= 1 and record["final"]["jacobian_norm"] > 0
    for attack, key in (("noise", "sigma"), ("fgsm", "epsilon"), ("pgd", "epsilon")):
        rows = record["robustness"][attack]
        assert rows and all(set(r) == {key, "accuracy"} for r in rows)

    if method != "exact":
        return  # random probes differ by rank: only the exact penalty is the same as one process's
    # Two ranks of 32 train like one process with batches of 64 (exact penalty, float32).
    single = [e for e in train(cfg.replace(batch_size=64, robustness=False)) if isinstance(e, Finished)][0]
    for got, want in zip(record["history"], single.history, strict=True):
        assert got["epoch"] == want["epoch"]
        assert got["ce_loss"] == pytest.approx(want["ce_loss"], rel=1e-4)
        assert got["term"] == pytest.approx(want["term"], rel=1e-3)
    assert record["final"]["jacobian_norm"] == pytest.approx(single.final["jacobian_norm"], rel=1e-3)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
