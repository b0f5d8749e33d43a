"""The Estimators tab: each estimator's spread over seeds against the exact value, on the
current model (demo.app.views.estimators), checked against an independent exact computation."""

from __future__ import annotations

import gradio as gr
import pytest
import torch

from demo.app.views.estimators import compare_estimators
from demo.engine import data
from demo.engine.config import RunConfig
from demo.engine.train import build_model


def oracle_exact(dataset: str, arch: str) -> float:
    """Batch mean of ||J_b||_F^2 by torch.autograd.functional.jacobian, one sample at a time."""
    cfg = RunConfig(dataset=dataset, arch=arch)
    ds = data.load(dataset, seed=cfg.seed)
    model = build_model(cfg, ds.input_shape, ds.num_classes).eval()
    x = ds.x_test[:32]
    total = sum(torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], x[b]).pow(2).sum()
                for b in range(len(x)))
    return float(total) / len(x)


def test_the_exact_line_is_the_exact_value_and_orthogonal_probes_at_n_equal_c_are_exact():
    info, figure, table = compare_estimators(None, "digits", "mlp", 100, "logits", ["projection"], 10, 8,
                                             max_seconds=120)
    rows = table.to_dict("records")
    exact = figure.layout.shapes[0].y0  # the dashed line
    assert exact == pytest.approx(oracle_exact("digits", "mlp"), rel=1e-4)
    iid, orthogonal = (next(r for r in rows if r["probes"] == p) for p in ("iid", "orthogonal"))
    # n = C = 10 orthonormal output probes span the whole output space: every draw is the exact value.
    assert orthogonal["rel. std"] == pytest.approx(0.0, abs=1e-5) and orthogonal["mean / exact"] == pytest.approx(1)
    assert iid["rel. std"] > 1e-3  # independent probes still spread at n = C (about 1% here)
    assert "freshly initialised mlp" in info and "n = 10" in info


def test_the_tab_uses_the_newest_run_of_the_model_and_refuses_bad_values_plainly():
    from demo.engine.record import Recorder
    from demo.engine.train import train

    cfg = RunConfig(dataset="moons", steps=20, robustness=False)
    recorder = Recorder(cfg)
    for event in train(cfg):
        recorder.add(event)
    session = {"runs": [{"id": 3, "record": recorder.record, "weights": recorder.state_dict}]}
    info, _, _ = compare_estimators(session, "moons", "mlp", 100, "logits", ["fd"], 2, 4, max_seconds=60)
    assert info.startswith("Run #3")
    for bad, words in ((dict(methods=[]), "at least one"), (dict(methods=["exact"]), "Estimators"),
                       (dict(seeds=10**6), "Seeds"), (dict(num_projections=0), "Projections")):
        args = {"methods": ["fd"], "num_projections": 2, "seeds": 4, **bad}
        with pytest.raises(gr.Error, match=words):
            compare_estimators(None, "moons", "mlp", 100, "logits", args["methods"], args["num_projections"],
                               args["seeds"], max_seconds=60)
    with pytest.raises(gr.Error, match="did not finish within this app's limit"):
        compare_estimators(None, "moons", "mlp", 100, "logits", ["fd"], 2, 4, max_seconds=1e-9)
