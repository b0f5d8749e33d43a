"""Every method on every layer of the zoo matches the float64 oracle in value and gradient, or
refuses in plain words: nothing in between (tests/library/oracle_cases.py says how)."""

from __future__ import annotations

import pytest
from oracle_cases import EXPECTED_REFUSALS, METHODS, run, zoo

SEEDS = 12  # estimators: enough for the mean's standard error; the full matrix takes more
CASES = zoo(small=True)


@pytest.mark.parametrize("name", list(CASES))
def test_every_method_matches_the_oracle_or_refuses(name):
    case = CASES[name]()
    report = []
    for method in METHODS:
        outcome = run(case, method, seeds=SEEDS)
        expected = "refused" if (name, method) in EXPECTED_REFUSALS else "match"
        if outcome.verdict != expected:
            report.append(f"{method}: {outcome.verdict} (value {outcome.value:.6g} vs {outcome.oracle_value:.6g}, "
                          f"z {outcome.z_value:.1f}; slope {outcome.slope:.6g} vs {outcome.oracle_slope:.6g}, "
                          f"z {outcome.z_slope:.1f}) {outcome.message[:200]}")
        if outcome.verdict == "refused":
            assert "Use method=" in outcome.message or "use method=" in outcome.message, outcome.message
    assert not report, f"{name}: " + "; ".join(report)
