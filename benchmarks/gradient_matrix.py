"""The gradient oracle matrix in full: every method on every layer of the zoo, value and gradient.

The zoo and the oracle live in tests/library/oracle_cases.py (the test runs them small); here the
cases are larger and each estimator is checked twice: with enough orthogonal probes to be exact
(C projections, D directions: as tight as the exact method), and statistically with 2 probes over
SEEDS seeds (mean within Z standard errors). Every cell is "match" or "refused" (with the reason);
a "MISMATCH" makes the script exit 1.

    .venv/bin/python benchmarks/gradient_matrix.py                    # CPU, float64, about a minute
    .venv/bin/python benchmarks/gradient_matrix.py --device cuda      # the same on a GPU
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "library"))

from oracle_cases import EXPECTED_REFUSALS, METHODS, run, zoo  # noqa: E402

from benchmarks.report import RESULTS_DIR, environment, write_report  # noqa: E402

SEEDS = 40


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# Gradient oracle matrix on {env['device']} ({env['device_name']})", "",
             f"torch {env['torch']}, {env['date']}, float64. Each cell: the penalty's value and its derivative "
             "along a random direction in parameter space (the model's and any upstream layers') against "
             "central finite differences of the whole-batch Jacobian's diagonal blocks. 'full' = exact "
             f"probe counts; 'n=2' = 2 orthogonal probes, mean over {report['seeds']} seeds. z = error in "
             "standard errors (deterministic cells: in units of 1e-6 relative).", "",
             "| case | " + " | ".join(f"{m} full" for m in METHODS) + " | " +
             " | ".join(f"{m} n=2" for m in METHODS if m not in ("exact",)) + " |",
             "|---|" + "---|" * (2 * len(METHODS) - 1)]
    for name, cells in report["cases"].items():
        row = [_cell(cells["full"][m]) for m in METHODS] + [_cell(cells["n2"][m]) for m in METHODS if m != "exact"]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "Refusals, in the library's words:", ""]
    seen = set()
    for name, cells in report["cases"].items():
        for m, o in cells["full"].items():
            if o["verdict"] == "refused" and (name, m) not in seen:
                seen.add((name, m))
                lines.append(f"- {name}, {m}: {o['message'][:300]}")
    return "\n".join(lines) + "\n"


def _cell(o: dict[str, Any]) -> str:
    if o["verdict"] == "refused":
        return "refused"
    return f"{o['verdict']} (z {o['z_value']:+.1f}, {o['z_slope']:+.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for, but no CUDA GPU is available here.", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # tiny float64 models: one thread, no spinning on shared CPUs
    torch.set_default_device(device)  # the zoo builds its modules and batches on the device
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    cases: dict[str, Any] = {}
    bad = []
    for name, make in zoo(small=False).items():
        case = make()
        cells = {"full": {}, "n2": {}}
        for method in METHODS:
            for kind, n in (("full", None), ("n2", 2)):
                if kind == "n2" and method == "exact":
                    continue
                outcome = run(case, method, seeds=args.seeds, num_projections=n)
                cells[kind][method] = asdict(outcome)
                expected = "refused" if (name, method) in EXPECTED_REFUSALS else "match"
                if outcome.verdict != expected:
                    bad.append(f"{name} {method} {kind}: {outcome.verdict}")
        cases[name] = cells
        log(f"{name}: " + ", ".join(f"{m} {c['verdict']}" for m, c in cells["full"].items()))
    report = {"environment": environment(device), "seeds": args.seeds, "cases": cases, "unexpected": bad}
    write_report(report, markdown(report), args.out / f"gradient_matrix_{device.type}", log)
    for line in bad:
        log("UNEXPECTED: " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
