"""What the penalty does on a dataset: a lambda sweep with accuracy, ||J||_F and robustness.

    python benchmarks/lambda_sweep.py                      # digits, mlp, 1500 steps, seed 0
    python benchmarks/lambda_sweep.py --dataset mnist --arch lenet --steps 3000

Writes benchmarks/results/lambda_sweep_<dataset>_<arch>.{json,md} with the device and versions.
Every row is one `train()` run with the same seed; only lambda changes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.engine.config import RunConfig  # noqa: E402
from demo.engine.record import Recorder, to_json  # noqa: E402
from demo.engine.train import train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAMBDAS = (0.0, 0.001, 0.01, 0.1, 1.0)


def sweep(base: RunConfig, lambdas) -> list[dict]:
    rows = []
    for lam in lambdas:
        cfg = base.replace(penalty=lam)
        recorder = Recorder(cfg)
        start = time.perf_counter()
        for event in train(cfg):
            recorder.add(event)
        record = recorder.record

        def at(attack, key, value, record=record):
            return next((r["accuracy"] for r in record["robustness"].get(attack, []) if r[key] == value), None)

        rows.append({
            "penalty": lam,
            "status": record["status"],
            "test_accuracy": record["final"]["test_accuracy"],
            "jacobian_norm": record["final"]["jacobian_norm"],
            "noise_0.3": at("noise", "sigma", 0.3),
            "fgsm_0.1": at("fgsm", "epsilon", 0.1),
            "pgd_0.1": at("pgd", "epsilon", 0.1),
            "seconds": time.perf_counter() - start,
            "robustness": record["robustness"],
        })
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"Lambda sweep: {meta['config']['dataset']} / {meta['config']['arch']} / {meta['config']['method']}, "
        f"{meta['config']['steps']} steps of {meta['config']['batch_size']}, seed {meta['config']['seed']}",
        f"({meta['device']}, torch {meta['torch']}, Python {meta['python']}, {meta['date']})",
        "",
        "| lambda | test acc | mean ‖J‖_F | acc, noise σ=0.3 | acc, FGSM ε=0.1 | acc, PGD ε=0.1 | run time |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['penalty']:g} | {fmt(r['test_accuracy'])} | {r['jacobian_norm']:.2f} | {fmt(r['noise_0.3'])} | "
            f"{fmt(r['fgsm_0.1'])} | {fmt(r['pgd_0.1'])} | {r['seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--method", default="projection")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    base = RunConfig(dataset=args.dataset, arch=args.arch, method=args.method, steps=args.steps, seed=args.seed,
                     device=args.device, report_every=100, eval_every=args.steps)
    rows = sweep(base, LAMBDAS)
    device = "cuda" if base.device != "cpu" and torch.cuda.is_available() else "cpu"
    meta = {
        "config": base.to_dict(),
        "device": torch.cuda.get_device_name() if device == "cuda" else
        f"CPU, {torch.get_num_threads()} torch threads ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": date.today().isoformat(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"lambda_sweep_{args.dataset}_{args.arch}"
    stem.with_suffix(".json").write_text(to_json({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    stem.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

