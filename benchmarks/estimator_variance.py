"""Lower variance at the same cost: independent against orthogonal probes, on this project's models.

For each model, method (projection, jvp) and probe count n = 1, 2, 4, 8, the penalty is evaluated
on one fixed batch for SEEDS seeds with independent probes (probes="iid", as jacobian_regularizer
draws them) and with orthogonal ones (the default), and the table gives the relative standard
deviation of one estimate (std / exact), its mean over the exact value, and the time of one call
as a ratio to the independent probes' (the same n products: the cost is equal up to the frame's
construction). Uses `jacobian_penalty.estimator_spread`.

    .venv/bin/python benchmarks/estimator_variance.py                  # CPU, about 2 minutes
    .venv/bin/python benchmarks/estimator_variance.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from benchmarks.report import RESULTS_DIR, environment, load_average, write_report  # noqa: E402
from jacobian_penalty import estimator_spread  # noqa: E402

BATCH = 32
PROBES = (1, 2, 4, 8)
METHODS = ("projection", "jvp")
# (name, architecture, input shape, classes)
MODELS = (
    ("mlp, digits 8x8, C = 10", "mlp", (64,), 10),
    ("mlp, digits 8x8, C = 1000", "mlp", (64,), 1000),
)


def measure(name: str, arch: str, shape: tuple[int, ...], classes: int, seeds: int, device: torch.device,
            log) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = models.build(arch, shape, classes).to(device).eval()
    x = torch.rand((BATCH, *shape), device=device)
    rows = []
    for method in METHODS:
        for n in PROBES:
            spreads = {kind: estimator_spread(model, x, method=method, num_projections=n, probes=kind,
                                              seeds=range(seeds)) for kind in ("iid", "orthogonal")}
            iid, orth = spreads["iid"], spreads["orthogonal"]
            rows.append({
                "model": name, "method": method, "n": n, "exact": iid.exact,
                "relative_std": {k: s.relative_std for k, s in spreads.items()},
                "mean_over_exact": {k: s.mean / s.exact for k, s in spreads.items()},
                "time_ratio_orthogonal_over_iid": orth.seconds_per_call / iid.seconds_per_call,
            })
            log(f"{name} {method} n={n}: rel std iid {iid.relative_std:.4f} orthogonal {orth.relative_std:.4f}")
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# Estimator spread at equal cost: independent against orthogonal probes, on {env['device']} "
        f"({env['device_name']})",
        "",
        f"torch {env['torch']}, {env['cpu_count']} CPUs, {env['date']}. Batch {BATCH}, {report['seeds']} seeds "
        "per cell, models in eval mode, inputs uniform in [0, 1]. Relative std = std of one estimate / exact "
        "value; mean = mean of the seeds / exact (1 = unbiased); time = one call with orthogonal probes over "
        "one with independent probes (the same n products).",
        "",
        "| model | method | n | rel. std iid | rel. std orthogonal | variance ratio | mean iid | mean orth. | time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        i, o = r["relative_std"]["iid"], r["relative_std"]["orthogonal"]
        ratio = (o / i) ** 2 if i else float("nan")
        lines.append(f"| {r['model']} | {r['method']} | {r['n']} | {i:.4f} | {o:.4f} | {ratio:.3f} | "
                     f"{r['mean_over_exact']['iid']:.3f} | {r['mean_over_exact']['orthogonal']:.3f} | "
                     f"{r['time_ratio_orthogonal_over_iid']:.2f} |")
    lines += ["", "Variance ratio = (rel. std orthogonal / rel. std iid)^2: below 1 means orthogonal probes need "
              "fewer products for the same spread. At n = 1 both kinds are the same draw for projection.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: small models, shared CPUs)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for, but no CUDA GPU is available here.", file=sys.stderr)
        return 2
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    env = environment(device)
    rows = [r for spec in MODELS for r in measure(*spec, args.seeds, device, log)]
    env["load_average_end"] = load_average()
    report = {"environment": env, "seeds": args.seeds, "rows": rows}
    write_report(report, markdown(report), args.out / f"estimator_variance_{device.type}", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
