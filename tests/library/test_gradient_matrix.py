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


STATISTICAL_CASES = ("linear + tanh", "conv + groupnorm", "dropout (train)", "penultimate target, upstream layers")


@pytest.mark.parametrize("name", STATISTICAL_CASES)
@pytest.mark.parametrize("probes", ["orthogonal", "iid"])
def test_estimators_below_full_probes_are_unbiased_in_value_and_gradient(name, probes):
    """At full probe counts the estimators are exact (above); with 2 probes each estimate is random,
    and its mean over the seeds must still match the oracle's value and slope within Z standard
    errors: the gradient that training uses is unbiased, not only the value."""
    case = CASES[name]()
    report = []
    for method in ("projection", "jvp", "fd"):
        outcome = run(case, method, seeds=40, num_projections=2, probes=probes)
        if outcome.verdict != "match":
            report.append(f"{method}: value {outcome.value:.6g} vs {outcome.oracle_value:.6g} "
                          f"(z {outcome.z_value:.1f}), slope {outcome.slope:.6g} vs {outcome.oracle_slope:.6g} "
                          f"(z {outcome.z_slope:.1f})")
    assert not report, f"{name}: " + "; ".join(report)
