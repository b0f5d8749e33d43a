"""The training engine: events, determinism, stopping, validation, and the digits acceptance run."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import models
from demo.engine import data
from demo.engine.config import ConfigError, RunConfig
from demo.engine.record import Recorder
from demo.engine.train import Evaluation, Finished, Progress, Robustness, Started, build_model, train
from jacobian_penalty import METHODS, jacobian_norms

QUICK = {"steps": 20, "report_every": 5, "eval_every": 10, "robustness": False, "batch_size": 32}


def run(**overrides) -> tuple[list, Recorder]:
    cfg = RunConfig(**{**QUICK, **overrides})
    recorder = Recorder(cfg)
    events = []
    for event in train(cfg):
        recorder.add(event)
        events.append(event)
    return events, recorder


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def test_event_stream_shape():
    events, recorder = run()
    names = kinds(events)
    assert names[0] == "Started" and names[-1] == "Finished"
    assert names.count("Progress") == QUICK["steps"] // QUICK["report_every"]
    # One intermediate evaluation at step 10, one final at step 20.
    assert [e.step for e in events if isinstance(e, Evaluation)] == [10, 20]
    finished = events[-1]
    assert finished.status == "completed"
    assert [h["step"] for h in finished.history] == [5, 10, 15, 20]
    assert recorder.record["status"] == "completed"
    assert recorder.record["final"]["steps"] == 20


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
def test_every_architecture_trains_on_digits(arch):
    events, recorder = run(arch=arch, steps=6, report_every=3, eval_every=6)
    assert events[-1].status == "completed"
    final = recorder.record["final"]
    assert 0.0 <= final["test_accuracy"] <= 1.0 and math.isfinite(final["jacobian_norm"])


@pytest.mark.parametrize("dataset", ["spirals", "moons", "circles", "xor"])
def test_mlp_trains_on_2d_sets_and_image_archs_are_refused(dataset):
    events, _ = run(dataset=dataset, steps=6, report_every=3, eval_every=6)
    assert events[-1].status == "completed"
    for arch in set(models.ARCHITECTURES) - {"mlp"}:
        with pytest.raises(ConfigError, match=arch):
            RunConfig(dataset=dataset, arch=arch)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("target", ["logits", "features"])
def test_each_method_and_target_reduce_the_loss(method, target):
    events, _ = run(method=method, target=target, steps=60, report_every=10, eval_every=60, penalty=0.01)
    progress = [e for e in events if isinstance(e, Progress)]
    assert all(math.isfinite(p.term) and p.term >= 0 for p in progress)
    assert progress[-1].ce_loss < progress[0].ce_loss
    assert progress[0].weighted_term == pytest.approx(0.01 * progress[0].term)


def test_features_target_penalises_the_penultimate_layer():
    # With lambda = 0 the reported estimate is measured on exactly what the target names:
    # compare the final model's exact features-Jacobian with the estimate's order of magnitude.
    events, recorder = run(target="features", penalty=0.0, method="exact", steps=10, report_every=10, eval_every=10)
    cfg = RunConfig(**{**QUICK, "target": "features"})
    dataset = data.load(cfg.dataset, seed=cfg.seed)
    model = build_model(cfg, dataset.input_shape, dataset.num_classes)
    model.load_state_dict(recorder.state_dict)
    x = dataset.x_train[:64]
    features_norm = jacobian_norms(model.features, x).pow(2).mean().item()
    logits_norm = jacobian_norms(model, x).pow(2).mean().item()
    reported = [e for e in events if isinstance(e, Progress)][-1].term
    # The last report's batch differs from x, so compare within a factor; features (256 wide)
    # and logits (10) norms differ by far more than that.
    assert abs(math.log(reported / features_norm)) < abs(math.log(reported / logits_norm))


def test_same_seed_same_numbers_different_seed_differs():
    def numbers(seed):
        events, recorder = run(seed=seed, method="projection", steps=15)
        return recorder.record["history"], recorder.record["evaluations"], recorder.state_dict

    h1, e1, s1 = numbers(3)
    h2, e2, s2 = numbers(3)
    h3, _, _ = numbers(4)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed", "samples_per_s")} for r in rows]  # noqa: E731
    assert strip(h1) == strip(h2) and strip(e1) == strip(e2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert strip(h1) != strip(h3)


def test_closing_the_generator_stops_training_and_keeps_the_partial_run():
    cfg = RunConfig(**{**QUICK, "steps": 100_000, "report_every": 2})
    recorder = Recorder(cfg)
    stream = train(cfg)
    for event in itertools.islice(stream, 6):
        recorder.add(event)
    assert recorder.record["status"] == "running"
    stream.close()  # what a UI's Stop does to the handler's generator
    with pytest.raises(StopIteration):
        next(stream)
    recorder.stop()  # the consumer ended the stream: the run is kept as stopped
    record = recorder.record
    assert record["status"] == "stopped"
    assert [h["step"] for h in record["history"]] == [2, 4, 6, 8, 10]
    assert record["final"]["steps"] == 10


def test_time_budget_ends_cleanly_with_results():
    events, recorder = run(steps=100_000, time_budget=0.5, report_every=50, eval_every=100_000)
    finished = events[-1]
    assert finished.status == "time_budget" and "time budget" in finished.message
    assert 0 < finished.final["steps"] < 100_000
    assert isinstance(events[-2], Evaluation)  # the partial model is still evaluated
    assert math.isfinite(recorder.record["final"]["test_accuracy"])


def test_divergence_stops_with_a_message_and_keeps_last_good_metrics():
    events, recorder = run(penalty=1e6, lr=10.0, optimizer="sgd", steps=200, report_every=5, eval_every=5)
    finished = events[-1]
    assert finished.status == "diverged"
    assert "diverged" in finished.message and "too large" in finished.message
    assert all(math.isfinite(h["ce_loss"]) for h in finished.history)
    assert finished.final["steps"] == (finished.history[-1]["step"] if finished.history else 0)


def test_lambda_zero_reports_the_estimate_but_adds_nothing():
    events, _ = run(penalty=0.0)
    progress = [e for e in events if isinstance(e, Progress)]
    assert all(p.weighted_term == 0.0 and p.term > 0 for p in progress)


def test_started_describes_the_run():
    started = next(train(RunConfig(**QUICK)))
    assert isinstance(started, Started)
    assert started.device.startswith("cpu") or started.device.startswith("cuda")
    assert started.dataset["num_classes"] == 10 and started.dataset["input_shape"] == [1, 8, 8]
    cfg = RunConfig(**QUICK)
    model = build_model(cfg, (1, 8, 8), 10)
    assert started.num_parameters == sum(p.numel() for p in model.parameters())


def test_many_classes_on_the_synthetic_set():
    events, recorder = run(dataset="synthetic", num_classes=1000, arch="lenet", steps=4, report_every=2, eval_every=4)
    assert events[-1].status == "completed"
    assert recorder.record["dataset"]["num_classes"] == 1000


def test_robustness_sanity_on_a_trained_model():
    events, recorder = run(steps=300, report_every=100, eval_every=300, robustness=True, batch_size=64)
    (rob,) = [e for e in events if isinstance(e, Robustness)]
    noise, fgsm, pgd = rob.results["noise"], rob.results["fgsm"], rob.results["pgd"]
    # Digits' test set is smaller than the robustness subset, so sigma 0 is the test accuracy.
    assert noise[0]["sigma"] == 0 and noise[0]["accuracy"] == pytest.approx(recorder.record["final"]["test_accuracy"])
    # PGD (10 steps, random start) is the stronger attack; its random start may cost it a sample
    # or two against FGSM where both are near zero, hence a margin of two test points.
    margin = 2 / recorder.record["dataset"]["test_size"]
    for f, p in zip(fgsm, pgd, strict=True):
        assert f["epsilon"] == p["epsilon"] and p["accuracy"] <= f["accuracy"] + margin
    assert sum(p["accuracy"] for p in pgd) <= sum(f["accuracy"] for f in fgsm)
    assert fgsm[-1]["accuracy"] < fgsm[0]["accuracy"]


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"penalty": float("nan")}, "penalty λ .lambda. must be a finite number"),
        ({"penalty": float("inf")}, "finite"),
        ({"penalty": -0.1}, "at least 0"),
        ({"steps": 0}, "steps must be between 1"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"batch_size": 10**9}, "batch size must be between"),
        ({"num_projections": 0}, "projections per step .num_projections. must be between 1"),
        ({"lr": 0.0}, "learning rate must be greater than 0"),
        ({"dataset": "../../etc/passwd"}, "Unknown dataset"),
        ({"arch": "gpt"}, "Unknown architecture 'gpt'"),
        ({"method": "magic"}, "Unknown method"),
        ({"device": "tpu"}, "Unknown device"),
        ({"dataset": "spirals", "arch": "lenet"}, "lenet"),
        ({"seed": -1}, "seed must be between 0"),
    ],
)
def test_validation_speaks_plainly(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_from_mapping_coerces_ui_values_and_rejects_unknown_keys():
    cfg = RunConfig.from_mapping({"steps": 300.0, "penalty": "0.01", "seed": " 7 ", "robustness": "false"})
    assert cfg.steps == 300 and cfg.penalty == 0.01 and cfg.seed == 7 and cfg.robustness is False
    with pytest.raises(ConfigError, match="Unknown setting"):
        RunConfig.from_mapping({"stepz": 3})
    with pytest.raises(ConfigError, match="must be a number"):
        RunConfig.from_mapping({"penalty": "lots"})


def test_training_never_touches_the_callers_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(steps=5, report_every=5, eval_every=5)
    torch.testing.assert_close(torch.rand(3), expected)


# --- acceptance: the shape of the effect on digits ------------------------------------------------


@pytest.mark.slow
def test_digits_acceptance_penalty_keeps_accuracy_cuts_jacobian_and_adds_robustness():
    def final(penalty):
        events, recorder = run(penalty=penalty, steps=1500, batch_size=64, report_every=100, eval_every=1500,
                               robustness=True)
        return recorder.record

    plain, penalised = final(0.0), final(0.01)

    def at(record, attack, key, value):
        return next(r["accuracy"] for r in record["robustness"][attack] if r[key] == pytest.approx(value))

    assert plain["final"]["test_accuracy"] >= 0.93
    assert penalised["final"]["test_accuracy"] >= plain["final"]["test_accuracy"] - 0.03
    assert penalised["final"]["jacobian_norm"] * 3 < plain["final"]["jacobian_norm"]
    assert at(penalised, "noise", "sigma", 0.3) > at(plain, "noise", "sigma", 0.3)
    assert at(penalised, "fgsm", "epsilon", 0.1) > at(plain, "fgsm", "epsilon", 0.1)
    for record in (plain, penalised):
        assert isinstance(record["history"][-1], dict) and record["status"] == "completed"


def test_finished_is_last_and_unique():
    events, _ = run(steps=5, report_every=5, eval_every=5)
    assert sum(isinstance(e, Finished) for e in events) == 1 and isinstance(events[-1], Finished)


def test_recorder_keeps_received_history_when_a_fault_ends_the_run_empty():
    cfg = RunConfig(**QUICK)
    recorder = Recorder(cfg)
    stream = train(cfg)
    received = [next(stream) for _ in range(4)]  # Started, Progress x2, Evaluation
    for event in received:
        recorder.add(event)
    stream.close()
    recorder.add(Finished("out_of_memory", "The GPU ran out of memory.", {}, (), ()))
    record = recorder.record
    assert record["status"] == "out_of_memory"
    assert [h["step"] for h in record["history"]] == [e.step for e in received if isinstance(e, Progress)]
    assert record["final"]["steps"] == record["history"][-1]["step"]
    assert recorder.state_dict  # the weights of the last evaluation


def test_a_run_that_collapses_to_chance_says_so_and_one_that_learns_does_not():
    from demo.engine.train import collapse_message

    collapsed = [e for e in train(RunConfig(**{**QUICK, "steps": 150}, penalty=1e5)) if isinstance(e, Finished)][0]
    assert collapsed.status == "completed"
    assert collapsed.final["test_accuracy"] <= 0.1 + 0.02  # the oracle: the accuracy itself, 10 classes
    assert collapsed.message.startswith("The model collapsed to chance") and "strength 100000" in collapsed.message
    learned = [e for e in train(RunConfig(**{**QUICK, "steps": 150}, penalty=0.01)) if isinstance(e, Finished)][0]
    assert learned.final["test_accuracy"] > 0.5 and learned.message == ""
    assert "learning rate 5" in collapse_message(RunConfig(lr=5.0), 0.1, 10)


def test_a_cross_entropy_stuck_at_ln_c_is_a_collapse_even_above_chance_accuracy():
    from demo.engine.train import collapse_message

    flat = [{"step": 100, "ce_loss": math.log(10) * 1.001}]
    learning = [{"step": 100, "ce_loss": 0.5}]
    # 0.122 is above chance + margin (0.12) for 10 classes: only the loss says the model guesses.
    message = collapse_message(RunConfig(penalty=1.0), 0.122, 10, flat)
    assert message.startswith("The model collapsed to chance") and "ln 10" in message
    assert collapse_message(RunConfig(penalty=1.0), 0.122, 10, learning) == ""
    assert collapse_message(RunConfig(), 0.9, 10, flat[:0]) == ""


def test_stop_ends_training_at_the_next_step_without_a_finished_event():
    steps_taken = []
    from demo.engine.train import take_step

    def counting(*args):
        steps_taken.append(1)
        return take_step(*args)

    events = list(train(RunConfig(**{**QUICK, "steps": 500}), stop=lambda: len(steps_taken) >= 7, step=counting))
    assert len(steps_taken) == 7  # the step that saw Stop was the last
    assert not any(isinstance(e, Finished) for e in events)
    assert [e.step for e in events if isinstance(e, Progress)] == [5]


def test_stop_during_the_attacks_ends_them_between_levels():
    """Stop asked once training is over: the robustness report is abandoned at its next level, so
    the stream ends with no Robustness and no Finished event (the consumer keeps what it has)."""
    asked = []

    def stop_after_training() -> bool:
        asked.append(1)
        return len(asked) > QUICK["steps"]  # False at every step; True at the first attack level

    events = list(train(RunConfig(**{**QUICK, "robustness": True}), stop=stop_after_training))
    assert [type(e).__name__ for e in events][-1] == "Evaluation"
    assert len(asked) == QUICK["steps"] + 1  # training asked at each step; the attacks once, then stopped


def test_a_method_the_library_refuses_for_the_model_is_a_plain_config_error():
    # vit has LayerNorm: backpropagating through its forward-mode derivative gives wrong gradients.
    with pytest.raises(ConfigError, match="LayerNorm") as refused:
        list(train(RunConfig(arch="vit", method="jvp", steps=3, robustness=False)))
    assert "projection" in str(refused.value)  # it names what works
