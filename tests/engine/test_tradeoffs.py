"""Trade-offs: the regularisers people compare against, sweeps, the gradient-free attack and the
checks that flag gradient masking."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from demo.cli.main import main
from demo.engine import sweep as sweeps
from demo.engine.config import REGULARIZERS, ConfigError, RunConfig
from demo.engine.train import Finished, Robustness, train
from demo.evaluation import attacks as thorough
from demo.evaluation.robustness import accuracy, fgsm, pgd

QUICK = {"dataset": "moons", "steps": 150, "report_every": 50, "eval_every": 100}


@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
def test_each_regulariser_trains_and_is_recorded(tmp_path, regularizer):
    out = tmp_path / "run.json"
    assert main(["train", "--dataset", "moons", "--steps", "150", "--regularizer", regularizer, "--penalty", "0.05",
                 "--quiet", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["config"]["regularizer"] == regularizer and record["status"] == "completed"
    assert record["final"]["test_accuracy"] > 0.6  # it learned something
    assert {"noise", "fgsm", "pgd", "square"} <= set(record["robustness"])


def test_the_regularisers_change_what_they_should():
    """Each strength moves its own quantity, measured against the same run at strength 0."""
    def final(regularizer, penalty):
        return [e for e in train(RunConfig(**QUICK, regularizer=regularizer, penalty=penalty, robustness=False))
                if isinstance(e, Finished)][0]

    # weight decay: the weights' norm; spectral: ||J|| bounded by the product of unit spectral norms.
    def weight_norm(regularizer, penalty):
        from demo.engine.data import class_count, input_shape
        from demo.engine.train import build_model

        cfg = RunConfig(**QUICK, regularizer=regularizer, penalty=penalty, robustness=False)
        model = build_model(cfg, input_shape("moons"), class_count("moons"))
        model.load_state_dict(final(regularizer, penalty).state_dict)
        return sum(p.pow(2).sum() for n, p in model.named_parameters() if "weight" in n).item()

    assert weight_norm("weight_decay", 0.05) < 0.8 * weight_norm("weight_decay", 0.0)
    spectral = final("spectral", 1.0).final["jacobian_norm"]
    assert spectral <= 1.0 + 1e-3  # four 1-Lipschitz linear maps and ReLUs: ||J||_2 <= 1, and C = 2 rows
    assert final("input_gradient", 0.5).final["jacobian_norm"] < final("input_gradient", 0.0).final["jacobian_norm"]


def test_adversarial_and_target_settings_are_checked_in_plain_words():
    with pytest.raises(ConfigError, match="training ε"):
        RunConfig(regularizer="adversarial", penalty=5.0)
    with pytest.raises(ConfigError, match="keep target 'logits'"):
        RunConfig(regularizer="weight_decay", target="features")
    with pytest.raises(ConfigError, match="Unknown regularizer"):
        RunConfig(regularizer="dropout")


# --- sweeps ---------------------------------------------------------------------------------------


def test_sweep_configs_keep_the_order_and_refuse_too_many():
    base = RunConfig(dataset="moons")
    cfgs = sweeps.configs(base, [0, 0.01, 0.1], ["jacobian", "weight_decay"])
    assert [(c.regularizer, c.penalty) for c in cfgs] == [
        ("jacobian", 0), ("jacobian", 0.01), ("jacobian", 0.1),
        ("weight_decay", 0), ("weight_decay", 0.01), ("weight_decay", 0.1)]
    with pytest.raises(ConfigError, match="at most"):
        sweeps.configs(base, list(range(20)), list(REGULARIZERS))
    with pytest.raises(ConfigError, match="penalty"):
        sweeps.configs(base, ["lots"])


def test_pareto_front_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(40, 2, generator=gen).tolist()
    rows = [{"test_accuracy": a, "robust_accuracy": b} for a, b in points] + [
        {"test_accuracy": math.nan, "robust_accuracy": 0.5}]
    front = sweeps.pareto(rows)
    for i, (a, b) in enumerate(points):
        beaten = any(c >= a and d >= b and (c, d) != (a, b) for c, d in points)
        assert front[i] == (not beaten)
    assert front[-1] is False


@pytest.mark.slow
def test_the_cli_sweep_on_digits_lowers_the_jacobian_and_records_robustness(tmp_path):
    out, table = tmp_path / "sweep.json", tmp_path / "sweep.csv"
    assert main(["sweep", "--dataset", "digits", "--penalties", "0", "0.01", "--json", str(out), "--csv", str(table),
                 "--quiet"]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["config"]["penalty"] for r in runs] == [0, 0.01]
    plain, penalised = (r["final"]["jacobian_norm"] for r in runs)
    assert penalised * 3 <= plain, (plain, penalised)
    for record in runs:
        for attack in ("noise", "fgsm", "pgd", "square"):
            assert len(record["robustness"][attack]) >= 4
    rows = list(csv.DictReader(table.open()))
    assert [float(r["penalty"]) for r in rows] == [0, 0.01]
    assert float(rows[1]["jacobian_norm"]) == pytest.approx(penalised)


# --- the gradient-free attack and masking checks -------------------------------------------------


def moons_model():
    events = list(train(RunConfig(**QUICK, penalty=0.0, robustness=False)))
    from demo.engine.data import load
    from demo.engine.train import build_model

    cfg = RunConfig(**QUICK, penalty=0.0)
    model = build_model(cfg, (2,), 2)
    model.load_state_dict([e for e in events if isinstance(e, Finished)][0].state_dict)
    data = load("moons")
    return model.eval(), data.x_test[:200], data.y_test[:200]


def test_square_stays_in_the_ball_and_matches_torchattacks_on_images():
    import torchattacks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x, y = torch.rand(50, 1, 4, 4), torch.randint(3, (50,))
    ours = thorough.square(model, x, y, 0.1, value_range=(0.0, 1.0), queries=50, seed=3)
    reference = torchattacks.Square(model, norm="Linf", eps=0.1, n_queries=50, seed=3, loss="margin")(x, y)
    torch.testing.assert_close(ours, reference)
    assert (ours - x).abs().max() <= 0.1 + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_square_on_points_stays_in_the_ball():
    model, x, y = moons_model()
    for epsilon in (0.05, 0.4):
        adv = thorough.square(model, x, y, epsilon, value_range=None, queries=50, margin=0.4)
        assert adv.shape == x.shape and (adv - x).abs().max() <= epsilon * (1 + 1e-5)
        assert accuracy(model, adv, y) <= accuracy(model, x, y)


class Masked(nn.Module):
    """A model whose logits are scaled up 10^4 times: same predictions, a saturated softmax, so the
    cross-entropy's gradient vanishes where it is right and FGSM and PGD find nothing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return 1e4 * self.model(x)


def test_a_model_that_masks_its_gradients_is_flagged_and_an_honest_one_is_not():
    model, x, y = moons_model()
    epsilons = (0.0, 0.1, 0.2, 0.4)
    results = {}
    for name, net in (("honest", model), ("masked", Masked(model).eval())):
        rows = {"fgsm": [], "pgd": []}
        for e in epsilons:
            rows["fgsm"].append({"epsilon": e, "accuracy": accuracy(net, fgsm(net, x, y, e, value_range=None), y)})
            rows["pgd"].append({"epsilon": e, "accuracy": accuracy(
                net, pgd(net, x, y, e, value_range=None, generator=torch.Generator().manual_seed(0)), y)})
        rows.update(thorough.evaluate(net, x, y, value_range=None, epsilons=epsilons, kind="points"))
        results[name] = (rows, thorough.masking_flags(rows, kind="points", num_classes=2))
    honest_flags, masked_flags = results["honest"][1], results["masked"][1]
    assert honest_flags == []
    assert any("gradient-free Square attack beat PGD" in f for f in masked_flags), masked_flags
    assert any("large enough to reach any point" in f for f in masked_flags), masked_flags
    # The masked model's predictions are the honest one's: only the attacks were fooled.
    assert torch.equal(model(x).argmax(1), Masked(model)(x).argmax(1))


def test_a_run_records_its_checks():
    events = list(train(RunConfig(**QUICK, penalty=0.01)))
    checks = [e for e in events if isinstance(e, Robustness)][0]
    assert set(checks.results) >= {"square", "unbounded"} and isinstance(checks.checks, tuple)


def test_distinct_configs_train_the_baseline_once_and_spectral_normalisation_once():
    base = RunConfig(dataset="moons", steps=10)
    cfgs = sweeps.configs(base, [0, 0.01, 0.1], ["jacobian", "spectral", "weight_decay"], distinct=True)
    assert [(c.regularizer, c.penalty) for c in cfgs] == [
        ("jacobian", 0), ("jacobian", 0.01), ("jacobian", 0.1), ("spectral", 0.01),
        ("weight_decay", 0.01), ("weight_decay", 0.1)]
    # Without distinct (one regulariser, the CLI's contract): one run per strength, in order.
    assert [c.penalty for c in sweeps.configs(base, [0, 0.01, 0.1], ["spectral"])] == [0, 0.01, 0.1]


def test_saturation_names_a_baseline_already_robust_at_epsilon_and_a_stronger_epsilon():
    def record(penalty, clean, pgd_rows):
        return {"config": {"penalty": penalty, "regularizer": "jacobian"}, "final": {"test_accuracy": clean},
                "robustness": {"pgd": [{"epsilon": e, "accuracy": a} for e, a in pgd_rows]}}

    baseline = record(0, 0.98, [(0.0, 0.98), (0.1, 0.97), (0.2, 0.60), (0.4, 0.2)])
    note = sweeps.saturation([baseline, record(0.1, 0.97, [(0.1, 0.97)])], 0.1)
    assert "already keeps 0.970 of its 0.980" in note and "ε = 0.2" in note
    assert sweeps.saturation([baseline], 0.2) == ""  # 0.60 < 0.9 x 0.98: the attack tells runs apart
    assert sweeps.saturation([record(0.1, 0.97, [(0.1, 0.97)])], 0.1) == ""  # no baseline, no claim
