"""Our penalty against what people would otherwise use, side by side in one run.

Each row is one model; each column one way to penalise ||J||_F^2 in a training step (forward,
penalty, cross-entropy + lambda * penalty, zero_grad, backward with respect to the parameters,
Adam step: the step demo.engine.train takes), as a ratio to a plain cross-entropy step on the same
model and batch. Rounds are interleaved (round r runs every column once, rotated), and the ratio
is the median over rounds of the per-round ratio, so a load change on a shared machine hits all
columns alike.

Columns:
- ours: projection, exact (its default, and 10 rows per batched pass), jvp, fd (`jacobian_penalty`);
- loop: the forum thread's answer, one VJP with create_graph per output;
- vmap(jacrev): torch.func's per-sample Jacobian, squared and summed;
- jr n=1, jr exact: facebookresearch/jacobian_regularizer's algorithm, reimplemented here from
  its published description (a loop over projections with per-sample unit vectors, or over the
  C one-hot vectors for the exact mode, each a VJP with create_graph, scaled by C, halved).

Before timing, every column's value is checked against the exact penalty on the same batch
(the random ones within their spread), so a fast wrong column cannot win.

    .venv/bin/python benchmarks/library_comparison.py                 # CPU, about 5 minutes
    .venv/bin/python benchmarks/library_comparison.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import RESULTS_DIR, environment, load_average, write_report  # noqa: E402
from demo.budget.timing import STRENGTH, interleaved_times, loop_penalty, step_closure  # noqa: E402
from jacobian_penalty import jacobian_penalty  # noqa: E402

BATCH = 128
BATCHED_ROWS = 10  # exact's chunk_size in its batched column (torch.func.vmap over the VJP)
SLOW_COLUMNS_MAX_OUTPUTS = 100  # loop and jr exact take C passes: beyond this they only show that
# Goals: exact's step time over the loop's and over torch.func.vmap(jacrev)'s (at most 1), and over a
# plain step for few inputs and many outputs.
GOAL_EXACT_OVER_LOOP = 1.0  # also the goal against vmap(jacrev)
GOAL_EXACT_FEW_INPUTS = 8.0


def _mlp(inputs: int, width: int, outputs: int, act: type[nn.Module]) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, width), act(), nn.Linear(width, width), act(), nn.Linear(width, outputs)
    )


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "tanh MLP 784-512-512-10": (lambda: _mlp(784, 512, 10, nn.Tanh), (1, 28, 28)),
    "tanh MLP 784-512-512-100": (lambda: _mlp(784, 512, 100, nn.Tanh), (1, 28, 28)),
    "GELU MLP 784-512-512-10": (lambda: _mlp(784, 512, 10, nn.GELU), (1, 28, 28)),
    "ReLU CNN (2 conv + 2 linear), C = 10": (_cnn, (1, 28, 28)),
    "tanh MLP 2-256-256-1000 (2 inputs)": (lambda: _mlp(2, 256, 1000, nn.Tanh), (2,)),
}


# --- the alternatives ----------------------------------------------------------------------------


# The forum thread's fix, one VJP with create_graph per output: the same function the Cost view times.


def vmap_jacrev_penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """torch.func: the per-sample Jacobian by vmap over jacrev of one sample."""

    def one(sample: Tensor) -> Tensor:
        return model(sample.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(one))(x)  # (B, C, ...)
    return model(x), jac.pow(2).flatten(1).sum(1).mean()


def jacobian_regularizer_penalty(n: int) -> Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]:
    """jacobian_regularizer's JacobianReg(n): n random projections, or n = -1 for every one-hot.

    R = 1/2 * sum_k C ||v_k^T J||^2 / (n B), v_k a per-sample unit vector; halved, as published.
    Multiplied by 2 here so every column reports the same quantity (the batch mean of ||J||^2).
    """

    def penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        x_in = x.detach().requires_grad_(True)
        y = model(x_in)
        batch, outputs = y.shape
        projections = outputs if n == -1 else n
        total = x.new_zeros(())
        for k in range(projections):
            if n == -1:
                v = torch.zeros_like(y)
                v[:, k] = 1
            else:
                v = torch.randn_like(y)
                v = v / v.norm(dim=1, keepdim=True)
            (jv,) = torch.autograd.grad(y, x_in, v, create_graph=True, retain_graph=True)
            total = total + outputs * jv.norm() ** 2 / (projections * batch)
        regulariser = 0.5 * total
        return y, 2 * regulariser

    return penalty


def ours(method: str, **options: Any) -> Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]:
    def penalty(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        return jacobian_penalty(model, x, method=method, **options)

    return penalty


def columns(outputs: int) -> dict[str, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]] | None]:
    cols: dict[str, Any] = {"plain": None}
    cols.update({f"ours {m}": ours(m) for m in ("projection", "exact", "jvp", "fd")})
    cols[f"ours exact, {BATCHED_ROWS} rows a pass"] = ours("exact", chunk_size=BATCHED_ROWS)
    if outputs <= SLOW_COLUMNS_MAX_OUTPUTS:
        cols["loop"] = loop_penalty
    cols["vmap(jacrev)"] = vmap_jacrev_penalty
    cols["jr n=1"] = jacobian_regularizer_penalty(1)
    if outputs <= SLOW_COLUMNS_MAX_OUTPUTS:
        cols["jr exact"] = jacobian_regularizer_penalty(-1)
    return cols


# --- measurement ---------------------------------------------------------------------------------


def check_values(cols, model, x) -> dict[str, float]:
    """Each column's penalty on x over the exact one; random columns averaged over draws."""
    reference = jacobian_penalty(model, x, method="exact", create_graph=False)[1].item()
    ratios = {}
    for name, penalty in cols.items():
        if penalty is None:
            continue
        draws = 1 if name.startswith("ours exact") or name in ("loop", "vmap(jacrev)", "jr exact") else 20
        values = [penalty(model, x)[1].item() for _ in range(draws)]
        ratios[name] = statistics.mean(values) / reference
    return ratios


def measure(name: str, device: torch.device, repeats: int, log) -> dict[str, Any]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().to(device)
    x = torch.rand((BATCH, *shape), device=device)
    outputs = model(x[:1]).shape[1]
    y = torch.randint(outputs, (BATCH,), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    params = list(model.parameters())
    cols = columns(outputs)
    value_ratios = check_values(cols, model, x)
    steps = {col: step_closure(p, model, optimizer, x, y, inputs=params) for col, p in cols.items()}
    times = interleaved_times(steps, repeats, device)
    base = times["plain"]
    row = {"model": name, "outputs": outputs, "inputs": x[0].numel(), "value_over_exact": value_ratios,
           "ms_per_step": {}, "ratio": {}}
    for col, samples in times.items():
        row["ms_per_step"][col] = 1e3 * statistics.median(samples)
        row["ratio"][col] = statistics.median(t / b for t, b in zip(samples, base, strict=True))
    for peer in ("loop", "vmap(jacrev)"):  # per-round ratios: a load change hits both columns alike
        if peer in times:
            row[f"exact_over_{peer}"] = statistics.median(
                e / p for e, p in zip(times["ours exact"], times[peer], strict=True)
            )
    log(f"{name}: " + "  ".join(f"{c} x{r:.2f}" for c, r in row["ratio"].items()))
    return row


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    rows = report["rows"]
    cols = list(dict.fromkeys(c for r in rows for c in r["ratio"]))
    lines = [
        f"# Our penalty against the alternatives, on {env['device']} ({env['device_name']})",
        "",
        f"torch {env['torch']}, Python {env['python']}, {env['cpu_count']} CPUs, {env['torch_threads']} torch "
        f"threads, {env['date']}, load average {env['load_average_start']} -> {env.get('load_average_end')}. "
        f"Batch {BATCH}, Adam, lambda {STRENGTH}, {report['repeats']} interleaved rounds (median).",
        "",
        "One training step as a ratio to a plain cross-entropy step (median ms per step in brackets);",
        "- where a column was not run (C passes at C = 1000).",
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for r in rows:
        cells = [f"{r['ratio'][c]:.2f} ({r['ms_per_step'][c]:.1f})" if c in r["ratio"] else "-" for c in cols]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines += ["", "## Goals", ""]
    for r in rows:
        for peer in ("loop", "vmap(jacrev)"):
            ratio = r.get(f"exact_over_{peer}")
            if ratio is not None:
                ok = "met" if ratio <= GOAL_EXACT_OVER_LOOP else "not met"
                lines.append(f"- {r['model']}: exact / {peer} = {ratio:.2f} (goal <= {GOAL_EXACT_OVER_LOOP}: {ok})")
        if r["inputs"] < r["outputs"]:
            ratio = r["ratio"]["ours exact"]
            ok = "met" if ratio <= GOAL_EXACT_FEW_INPUTS else "not met"
            lines.append(f"- {r['model']}: exact = {ratio:.2f}x a plain step (goal <= {GOAL_EXACT_FEW_INPUTS}: {ok})")
    lines += ["", "## Each column's value over the exact penalty on the same batch (random ones: mean of 20)", "",
              "| model | " + " | ".join(c for c in cols if c != "plain") + " |",
              "|---|" + "---:|" * (len(cols) - 1)]
    for r in rows:
        cells = [f"{r['value_over_exact'][c]:.3f}" if c in r["value_over_exact"] else "-" for c in cols if c != "plain"]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="library_comparison")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for, but no CUDA GPU is available here.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    env = environment(device)
    rows = [measure(name, device, args.repeats, log) for name in args.models]
    env["load_average_end"] = load_average()
    report = {"environment": env, "repeats": args.repeats, "rows": rows}
    write_report(report, markdown(report), args.out / f"{args.name}_{device.type}", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
