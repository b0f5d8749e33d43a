"""What a training step costs with each Jacobian penalty estimator, against a plain step.

For each architecture (mlp, lenet, resnet) and number of outputs C (10, 100, 1000): the step
time of every method as a ratio to a plain cross-entropy step on the same model and batch
(interleaved rounds, median), its peak memory, and the forum thread's loop of C VJPs for
C <= 100; then exact's memory against its chunk size, and the caller's loss.backward() against
loss.backward(inputs=params). Writes benchmarks/results/penalty_cost_<device>.json and .md with
the device, versions, CPU and thread counts and the date.

    .venv/bin/python benchmarks/penalty_cost.py                  # the CPU grid (a few minutes)
    .venv/bin/python benchmarks/penalty_cost.py --device cuda    # the same on a GPU
    .venv/bin/python benchmarks/penalty_cost.py --help           # every option

It is `python -m demo bench` under another name: the code lives in demo/bench.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root on the path

from demo.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
