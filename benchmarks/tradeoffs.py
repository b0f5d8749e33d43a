"""The trade-off table: every regulariser at a few strengths, on digits and on a 2-D set.

Each run is the CLI's default run of that dataset (mlp, Adam, 1500 steps of 64, seed 0) with one
regulariser at one strength, then the full robustness evaluation (noise, FGSM, PGD-10, Square, PGD
at an epsilon that reaches any input) and the gradient-masking checks. The table gives clean
accuracy, accuracy under PGD and Square at one epsilon, the mean exact ||J||_F, the cost per step
and whether the run is on the Pareto front of clean against PGD accuracy. Writes
benchmarks/results/tradeoffs_<dataset>.json and .md with the device and versions.

    .venv/bin/python benchmarks/tradeoffs.py                 # digits and moons, a few minutes
    .venv/bin/python benchmarks/tradeoffs.py --datasets moons --steps 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import RESULTS_DIR, environment, load_average, write_report  # noqa: E402
from demo.engine import sweep as sweeps  # noqa: E402
from demo.engine.config import RunConfig  # noqa: E402
from demo.engine.record import Recorder  # noqa: E402
from demo.engine.train import train  # noqa: E402

# Strengths per regulariser: lambda for the penalties, epsilon for adversarial training; the
# unregularised run (strength 0) is run once and shown as "none".
STRENGTHS = {
    "jacobian": (0.001, 0.01, 0.1),
    "input_gradient": (0.01, 0.1, 1.0),
    "adversarial": (0.05, 0.1, 0.2),
    "spectral": (1.0,),
    "weight_decay": (1e-4, 1e-3, 1e-2),
}
EPSILON = {"digits": 0.1, "moons": 0.2}  # the robust-accuracy column's PGD epsilon (input units)


def run(cfg: RunConfig) -> dict:
    recorder = Recorder(cfg)
    for event in train(cfg):
        recorder.add(event)
    return recorder.record


def markdown(dataset: str, report: dict) -> str:
    env, rows = report["environment"], report["rows"]
    lines = [
        f"# Trade-offs on {dataset}: every regulariser",
        "",
        f"{env['device']} ({env['device_name']}), torch {env['torch']}, Python {env['python']}, "
        f"{env['torch_threads']} torch threads, {env['date']}. mlp, Adam, {report['steps']} steps of 64, seed 0; "
        f"robust accuracy under PGD-10 and Square at ε = {report['epsilon']:g} on 500 (Square: 200) test points.",
        "",
        "| regulariser | strength | clean acc | PGD acc | Square acc | mean ‖J‖_F | ms/step | Pareto | masking flags |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|---|",
    ]
    for r in rows:
        name = "none" if r["penalty"] == 0 else r["regularizer"]
        lines.append(f"| {name} | {r['penalty']:g} | {r['test_accuracy']:.3f} | {r['robust_accuracy']:.3f} | "
                     f"{r['square_accuracy']:.3f} | {r['jacobian_norm']:.3g} | {r['ms_per_step']:.2f} | "
                     f"{'★' if r['pareto'] else ''} | {len(r['flags'])} |")
    lines += ["", "Strength: λ for the penalties (jacobian, input_gradient, weight_decay), the training ε for "
              "adversarial, on/off for spectral. ms/step includes the reports and evaluations during training.", ""]
    flagged = [(r, f) for r in rows for f in r["flags"]]
    if flagged:
        lines += ["Masking flags:", ""] + [f"- {r['regularizer']} {r['penalty']:g}: {f}" for r, f in flagged] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "moons"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    for dataset in args.datasets:
        env = environment("cpu")
        base = RunConfig(dataset=dataset, steps=args.steps, device="cpu")
        configs = [base.replace(penalty=0.0)] + [
            base.replace(regularizer=name, penalty=strength) for name, strengths in STRENGTHS.items()
            for strength in strengths
        ]
        records = []
        for cfg in configs:
            log(f"{dataset}: {cfg.regularizer} {cfg.penalty:g}")
            records.append(run(cfg))
        rows = sweeps.table(records, EPSILON[dataset])
        for row, record in zip(rows, records, strict=True):
            row["flags"] = record.get("robustness_checks", [])
        env["load_average_end"] = load_average()
        report = {"environment": env, "steps": args.steps, "epsilon": EPSILON[dataset], "rows": rows,
                  "runs": records}
        write_report(report, markdown(dataset, report), args.out / f"tradeoffs_{dataset}", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
