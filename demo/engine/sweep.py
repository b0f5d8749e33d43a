"""Sweeps: one run per strength (and per regulariser), and the trade-off they draw.

`configs(base, penalties, regularizers)` lists the runs in the order asked for (regularisers
outer, strengths inner); with `distinct=True` it drops runs that would train the same model as an
earlier one: strength 0 trains plainly whatever the regulariser (one baseline, not one per
regulariser), and spectral normalisation is on or off (every positive strength is the same run).
`summary(record, epsilon)` reduces a run record to the numbers a trade-off plot and table need;
`pareto(rows)` marks the runs no other run beats on both clean and robust accuracy;
`saturation(records, epsilon)` says when the baseline is already robust at epsilon (so no
regulariser can show anything there) and which epsilon of the grid would show a difference.
The CLI (`python -m demo sweep`) and the app's Sweep tab run the configs
through demo.engine.train one after another and keep every finished run.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from demo.engine.config import REGULARIZERS, ConfigError, RunConfig

MAX_RUNS = 30  # a sweep is for a handful of strengths x regularisers, not a grid search
SUMMARY_COLUMNS = (
    "regularizer", "penalty", "test_accuracy", "robust_accuracy", "square_accuracy", "jacobian_norm",
    "ms_per_step", "pareto", "status",
)


ON_OFF = frozenset({"spectral"})  # regularisers whose strength is a switch: > 0 is on
# The baseline's PGD accuracy above this fraction of its clean accuracy: the attack is too weak to
# tell regularisers apart.
SATURATED = 0.9
# PGD epsilons at which an unregularised model is not already robust, per kind of data (the
# README's tables: images at 0.1, the 2-D sets at 0.2, where a moons MLP keeps 0.97 at 0.1).
DEFAULT_EPSILON = MappingProxyType({"image": 0.1, "points": 0.2})


def configs(base: RunConfig, penalties: Sequence[Any], regularizers: Sequence[str] | None = None, *,
            distinct: bool = False) -> list[RunConfig]:
    """One config per (regulariser, strength): base with those changed, validated. `distinct`
    drops the runs that train the same model as an earlier one (see the module docstring)."""
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
    runs = [RunConfig.from_mapping({**base.to_dict(), "regularizer": r, "penalty": p})
            for r in chosen for p in penalties]
    if not distinct:
        return runs
    seen, kept = set(), []
    for cfg in runs:
        key = _what_trains(cfg)
        if key not in seen:
            seen.add(key)
            kept.append(cfg)
    return kept


def _what_trains(cfg: RunConfig) -> tuple:
    """Two configs with the same key train the same model."""
    if cfg.penalty == 0:
        return ("plain",)
    if cfg.regularizer in ON_OFF:
        return (cfg.regularizer, "on")
    return (cfg.regularizer, cfg.penalty)


def saturation(records: Sequence[dict[str, Any]], epsilon: float) -> str:
    """A sentence when the baseline (the strength-0 run, else none) keeps nearly all its clean
    accuracy under PGD at `epsilon`, with the grid's smallest epsilon where it does not; else ""."""
    baseline = next((r for r in records if r["config"]["penalty"] == 0 and r.get("robustness")), None)
    if baseline is None:
        return ""
    clean = baseline.get("final", {}).get("test_accuracy", math.nan)
    robust = at_epsilon(baseline, "pgd", epsilon)
    if not (math.isfinite(clean) and math.isfinite(robust) and clean > 0 and robust >= SATURATED * clean):
        return ""
    weaker = [r["epsilon"] for r in baseline["robustness"]["pgd"]
              if r["epsilon"] > epsilon and r["accuracy"] < SATURATED * clean]
    advice = f" Try ε = {min(weaker):g}, where it drops." if weaker else " Try a larger ε."
    return (f"At PGD ε = {epsilon:g} the unregularised run already keeps {robust:.3f} of its {clean:.3f} clean "
            f"accuracy, so no regulariser can show much there.{advice}")


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
