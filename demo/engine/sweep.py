"""Sweeps: one run per strength (and per regulariser), and the trade-off they draw.

`configs(base, penalties, regularizers)` lists the runs in the order asked for (regularisers
outer, strengths inner); `summary(record, epsilon)` reduces a run record to the numbers a
trade-off plot and table need; `pareto(rows)` marks the runs no other run beats on both clean
and robust accuracy. The CLI (`python -m demo sweep`) and the app's Sweep tab run the configs
through demo.engine.train one after another and keep every finished run.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from demo.engine.config import REGULARIZERS, ConfigError, RunConfig

MAX_RUNS = 30  # a sweep is for a handful of strengths x regularisers, not a grid search
SUMMARY_COLUMNS = (
    "regularizer", "penalty", "test_accuracy", "robust_accuracy", "square_accuracy", "jacobian_norm",
    "ms_per_step", "pareto", "status",
)


def configs(base: RunConfig, penalties: Sequence[Any], regularizers: Sequence[str] | None = None) -> list[RunConfig]:
    """One config per (regulariser, strength): base with those changed, validated."""
    chosen = list(regularizers or [base.regularizer])
    unknown = [r for r in chosen if r not in REGULARIZERS]
    if unknown:
        raise ConfigError(f"Unknown regulariser(s) {', '.join(map(str, unknown))}; choose among "
                          f"{', '.join(REGULARIZERS)}.")
    if not penalties:
        raise ConfigError("A sweep needs at least one strength (--penalties 0 0.01 ...).")
    if len(penalties) * len(chosen) > MAX_RUNS:
        raise ConfigError(f"A sweep runs at most {MAX_RUNS} runs; {len(penalties)} strengths x {len(chosen)} "
                          f"regularisers make {len(penalties) * len(chosen)}.")
    return [RunConfig.from_mapping({**base.to_dict(), "regularizer": r, "penalty": p})
            for r in chosen for p in penalties]


def summary(record: dict[str, Any], epsilon: float) -> dict[str, Any]:
    """A run's row: clean and robust (PGD and Square at epsilon) accuracy, ||J||_F, cost per step."""
    final, cfg = record.get("final", {}), record["config"]
    steps, elapsed = final.get("steps", 0), final.get("elapsed", 0.0)
    return {
        "regularizer": cfg["regularizer"],
        "penalty": cfg["penalty"],
        "test_accuracy": final.get("test_accuracy", math.nan),
        "robust_accuracy": at_epsilon(record, "pgd", epsilon),
        "square_accuracy": at_epsilon(record, "square", epsilon),
        "jacobian_norm": final.get("jacobian_norm", math.nan),
        "ms_per_step": 1e3 * elapsed / steps if steps else math.nan,
        "status": record.get("status", ""),
    }


def at_epsilon(record: dict[str, Any], attack: str, epsilon: float) -> float:
    """Accuracy under `attack` at the grid's epsilon nearest to `epsilon` (NaN without results)."""
    rows = record.get("robustness", {}).get(attack, [])
    if not rows:
        return math.nan
    return min(rows, key=lambda r: abs(r["epsilon"] - epsilon))["accuracy"]


def pareto(rows: Sequence[dict[str, Any]], x: str = "test_accuracy", y: str = "robust_accuracy") -> list[bool]:
    """For each row, whether no other row is at least as good on x and y and better on one."""
    def dominated(a: dict, b: dict) -> bool:
        return b[x] >= a[x] and b[y] >= a[y] and (b[x] > a[x] or b[y] > a[y])

    finite = [math.isfinite(r[x]) and math.isfinite(r[y]) for r in rows]
    return [ok and not any(f and dominated(r, other) for other, f in zip(rows, finite, strict=True))
            for r, ok in zip(rows, finite, strict=True)]


def table(records: Sequence[dict[str, Any]], epsilon: float) -> list[dict[str, Any]]:
    rows = [summary(record, epsilon) for record in records]
    for row, front in zip(rows, pareto(rows), strict=True):
        row["pareto"] = front
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
