"""Stop, the worker thread behind every streaming view, and the duration estimate before Train.

The Train handler is driven in-process (no server): Stop is a StopRequests request, the numbers of
the last update are checked against the record it stored, and the estimate's arithmetic against
the engine's own step count and evaluation schedule.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import threading
import time

import gradio as gr
import pytest

from demo.app import controls as controls_view
from demo.app import duration
from demo.app import limits as limits_module
from demo.app.limits import Limits
from demo.app.session import LiveSessions
from demo.app.streaming import StopRequests, in_background
from demo.app.views.training import Handlers
from demo.budget import pace
from demo.budget.memory import Estimator
from demo.engine.config import ConfigError, RunConfig
from demo.engine.record import RUNNING, STOPPED, Recorder, kept
from demo.engine.train import Evaluation, train

TRAIN_VALUES = dict(dataset="digits", arch="mlp", penalty=0.01, method="projection", num_projections=1,
                    target="logits", batch_size=32, lr=0.001, seed=0, device="cpu")


# ---------------------------------------------------------------------------------------------
# in_background


def test_in_background_yields_every_item_then_ticks_while_waiting():
    def slow():
        yield 1
        time.sleep(1.0)  # twenty polls long: at least three ticks however busy the machine
        yield 2

    items = list(in_background(slow(), threading.Event(), poll_s=0.05))
    assert [i for i in items if i is not None] == [1, 2]
    assert items.count(None) >= 3  # ticks while the worker slept: the handler could look for Stop


def test_in_background_raises_the_streams_error_in_the_consumer():
    def failing():
        yield 1
        raise ValueError("broken stream")

    with pytest.raises(ValueError, match="broken stream"):
        list(in_background(failing(), threading.Event(), poll_s=0.05))


def test_a_set_stop_closes_the_stream_at_its_next_item():
    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.set()

    stop = threading.Event()
    stream = in_background(endless(), stop, poll_s=0.05)
    assert next(stream) == 1
    stop.set()
    stream.close()
    assert closed.wait(5), "the worker did not close the stream after Stop"


# ---------------------------------------------------------------------------------------------
# StopRequests


def test_stop_reaches_the_running_run_of_its_session_only():
    stops = StopRequests()
    mine, other = stops.begin("a"), stops.begin("b")
    assert stops.request("a") is True
    assert mine.is_set() and not other.is_set()


def test_a_stop_while_queued_stops_the_run_when_it_begins_and_only_that_run():
    stops = StopRequests()
    first = stops.begin("a")
    stops.end("a", first)
    stops.pressed("a")  # Train pressed; the run waits in the queue
    assert stops.request("a") is False  # nothing runs yet: noted for the queued run
    assert stops.begin("a").is_set()


def test_a_stop_after_a_run_ended_does_not_stop_the_next_run():
    stops = StopRequests()
    stops.pressed("a")
    run = stops.begin("a")
    stops.end("a", run)
    stops.request("a")  # late: the run had already ended
    stops.pressed("a")
    assert not stops.begin("a").is_set()


# ---------------------------------------------------------------------------------------------
# The Train handler: Stop gives one last update whose numbers are the plotted ones


def handler(**limits) -> Handlers:
    """The Train handler; an hour's time limit unless given, so the long runs Stop ends are never
    refused as too long on a busy machine."""
    space = Limits(**{"max_seconds": 3600.0, **limits})
    return Handlers(space, Estimator(), StopRequests(), pace.Paces(), LiveSessions(space.session_ttl, space.max_runs))


def train_values(**changes) -> dict:
    values = {**TRAIN_VALUES, "steps": 20_000, "robustness": False, "num_classes": 100, **changes}
    return {name: values[name] for name in controls_view.CONFIG_FIELDS}


def test_stop_ends_the_run_with_one_last_update_that_matches_the_curves():
    handlers = handler()
    updates = handlers.train(None, train_values(), request=None)
    evaluated = []
    for _session, status, _curves, _ in updates:
        if isinstance(status, str) and "(evaluated at step" in status:
            evaluated.append(status)
        if len(evaluated) >= 2:
            break
    handlers.stops.request("")  # the in-process request has no session id: ""
    last = list(updates)  # ends by itself: the handler saw Stop
    session, status, curves, _ = last[-1]
    [run] = session["runs"]
    record = run["record"]
    assert record["status"] == STOPPED and "Stopped at step" in status
    step = record["final"]["steps"]
    assert 0 < step < 20_000 and f"Stopped at step {step} of 20000" in status
    # The status line's numbers are the last evaluation's, the curves' last points.
    last_eval = record["evaluations"][-1]
    assert f"test accuracy {last_eval['test_accuracy']:.3f}" in status
    test_trace = next(t for t in curves.data if t.name == "test")
    assert test_trace.y[-1] == pytest.approx(last_eval["test_accuracy"])
    assert list(curves.data[0].x)[-1] == record["history"][-1]["step"]


def test_a_run_that_begins_stopped_keeps_a_stopped_record_with_no_steps():
    handlers = handler()
    handlers.stops.pressed("")
    handlers.stops.request("")  # Stop while the run waited in the queue
    *_, (session, status, _, _) = handlers.train(None, train_values(), request=None)
    [run] = session["runs"]
    assert run["record"]["status"] == STOPPED and run["record"]["history"] == []
    assert "Stopped at step 0 of 20000" in status


def test_the_synthetic_class_count_reaches_the_run():
    handlers = handler()
    *_, (session, status, _, _) = handlers.train(
        None, train_values(dataset="synthetic", steps=5, num_classes=7), request=None)
    record = session["runs"][-1]["record"]
    assert "Finished 5 steps" in status
    assert record["config"]["num_classes"] == 7 and record["dataset"]["num_classes"] == 7


def test_a_running_record_is_stored_as_stopped_and_the_cli_keeps_it_so():
    cfg = RunConfig(steps=3, report_every=1, robustness=False)
    recorder = Recorder(cfg)
    stream = train(cfg)
    for event in stream:
        recorder.add(event)
        if isinstance(event, Evaluation) or len(recorder.record["history"]) == 2:
            break
    stream.close()
    assert recorder.record["status"] == RUNNING
    assert kept(recorder.record)["status"] == STOPPED
    recorder.stop()
    assert recorder.record["status"] == STOPPED


# ---------------------------------------------------------------------------------------------
# The duration estimate and the step count that fits a short run


def test_nice_steps_are_round_and_within_bounds():
    assert pace.nice_steps(1234.0) == 1200
    assert pace.nice_steps(587.0) == 590
    assert pace.nice_steps(3.0) == pace.MIN_STEPS
    assert pace.nice_steps(1e9) == pace.MAX_STEPS


def test_the_suggested_steps_fill_the_target_time():
    measured = pace.Pace(step_s=0.02, evaluation_s=0.1, robustness_s=2.0)
    steps = measured.suggested_steps(evaluations_per_run=9, target_s=15.0)
    # (15 - 2 - 9 x 0.1) / 0.02 = 605 steps, rounded to two digits.
    assert steps == 600
    assert measured.seconds(steps, 9) == pytest.approx(600 * 0.02 + 0.9 + 2.0)


def test_the_estimate_counts_the_evaluations_the_engine_runs():
    cfg = controls_view.config_from({"dataset": "moons", "steps": 300, "robustness": False}, Limits())
    events = list(train(cfg))
    assert sum(isinstance(e, Evaluation) for e in events) == cfg.evaluations()


def test_the_probe_times_a_few_steps_of_the_chosen_run():
    cfg = RunConfig(dataset="moons", robustness=True)
    measured = pace.measure(cfg)
    assert 0 < measured.step_s < 5 and 0 < measured.evaluation_s < 60 and 0 < measured.robustness_s < 600
    assert pace.measure(cfg.replace(robustness=False)).robustness_s == 0.0


def fit(steps, suggested, **changes):
    values = {**TRAIN_VALUES, "steps": steps, "robustness": False, "num_classes": 100, **changes}
    return duration.fit(*[values[name] for name in duration.TIMED_FIELDS], suggested,
                        space=Limits(), paces=pace.Paces(), memory=Estimator())


def test_another_architecture_gets_the_steps_that_fit_unless_the_visitor_chose_their_own():
    proposal, line, _ = fit(1500, 1500, arch="lenet")  # Steps still holds the page's suggestion
    assert isinstance(proposal, int)
    duration_text = r"[\d.]+ (s|min)( to [\d.]+ (s|min))?"
    assert re.search(rf"digits · lenet · {proposal} steps: about {duration_text} here on the CPU", line)
    assert duration.adopt(1500, 1500, proposal) == (proposal, proposal)  # taken: the new suggestion
    # The visitor typed 777 while it measured: theirs stays (gr.skip() leaves a component alone).
    assert not any(isinstance(v, int) for v in duration.adopt(777, 1500, proposal))
    no_proposal, line, _ = fit(777, 1500, arch="lenet")  # typed before it measured: nothing to propose
    assert no_proposal is None and "lenet · 777 steps" in line
    assert not any(isinstance(v, int) for v in duration.adopt(777, 1500, no_proposal))


def test_the_estimate_says_why_not_instead_of_failing():
    values = {**TRAIN_VALUES, "steps": -3, "robustness": False, "num_classes": 100}
    [(line, short)] = duration.estimate(*[values[name] for name in duration.TIMED_FIELDS], space=Limits(),
                                        paces=pace.Paces(), memory=Estimator())
    assert "No estimate" in line and "steps" in line and "No estimate" in short


def test_the_estimate_warns_when_the_app_would_stop_the_run_first():
    cfg = controls_view.config_from({"steps": 1000}, Limits(max_seconds=1.0))
    measured = pace.Pace(step_s=0.01, evaluation_s=0.0, robustness_s=0.0)
    text = duration.describe(cfg, measured)
    assert "stops a run after 1.0 s" in text
    assert math.isclose(float(re.search(r"about ([\d.]+) s", text).group(1)), 10.0)
    # The brief line beside Train says the same, with what fits.
    short = duration.brief(cfg, measured)
    fits = duration.fitting_steps(cfg, measured)
    assert short == f"Estimated: about 10 s here, but this app stops a run after 1.0 s: about {fits} steps fit."


def test_a_run_within_the_limit_whose_training_is_not_says_which_limit_it_passes():
    """4 min of a 5 min limit is refused when training alone passes its share: the line says so,
    rather than "about 4 min, past this app's limit of 5 min"."""
    cfg = controls_view.config_from({"steps": 1000, "robustness": True}, Limits(max_seconds=300.0))
    measured = pace.Pace(step_s=0.24, evaluation_s=0.0, robustness_s=1.0)  # 240 s of training, 241 s in all
    training = limits_module.training_seconds(cfg)
    assert training < 240 and cfg.time_budget > 241  # the case: the whole fits, its training does not
    words = f"stops training after {duration.seconds_text(training)} (of a run's 5 min"
    assert words in duration.describe(cfg, measured) and words in duration.brief(cfg, measured)
    with pytest.raises(ConfigError, match=re.escape(words)):
        duration.refuse_if_too_long(cfg, measured)


def test_the_estimate_says_measuring_first_and_then_uses_the_fresh_measurement():
    values = {**TRAIN_VALUES, "dataset": "moons", "steps": 300, "robustness": False, "num_classes": 100}
    args = [values[name] for name in duration.TIMED_FIELDS]
    paces = pace.Paces()
    first = list(duration.estimate(*args, space=Limits(), paces=paces, memory=Estimator()))
    assert len(first) == 2 and "Measuring how long moons" in first[0][0] and "about" in first[1][0]
    assert "Measuring" in first[0][1] and "Estimated: about" in first[1][1]  # beside Train, in short
    again = list(duration.estimate(*args, space=Limits(), paces=paces, memory=Estimator()))
    assert again == [first[1]]  # measured a moment ago: no probe, no "measuring"


def test_a_probe_cut_by_its_cap_extrapolates_and_says_so():
    cfg = RunConfig(dataset="moons", robustness=True)
    cut = pace.measure(cfg, cap_s=0.0)  # the cap comes at the first step
    assert not cut.complete
    assert cut.evaluation_s == pytest.approx(pace.EVALUATION_STEPS * cut.step_s)
    assert cut.robustness_s == pytest.approx(pace.ROBUSTNESS_STEPS * cut.step_s)
    assert "extrapolated" in duration.describe(controls_view.config_from({"dataset": "moons"}, Limits()), cut)
    whole = pace.measure(cfg)
    assert whole.complete and whole.step_low_s <= whole.step_s <= whole.step_high_s


def slow_engine(monkeypatch, *, penalised_s: float, plain_s: float, evaluation_s: float, attacks_s: float,
                first_evaluation_s: float | None = None):
    """pace's `train` replaced by a stand-in whose parts take known times (slept): a penalised step,
    a plain one (λ = 0), the evaluation (the process's first: `first_evaluation_s`) and the attacks;
    returns the list of steps it took, as (penalised, step)."""
    taken = []

    def evaluated(step):
        first = first_evaluation_s is not None and not any(isinstance(t, str) for t in taken)
        taken.append("evaluated")
        time.sleep(first_evaluation_s if first else evaluation_s)
        event = object.__new__(Evaluation)
        object.__setattr__(event, "step", step)
        return event

    def fake_train(cfg, stop=None):
        for step in range(1, cfg.steps + 1):
            time.sleep(penalised_s if cfg.penalty > 0 else plain_s)
            taken.append((cfg.penalty > 0, step))
            if stop is not None and stop():
                return
            if step % cfg.eval_every == 0 and step != cfg.steps:
                yield evaluated(step)
        yield evaluated(cfg.steps)
        if cfg.robustness:
            time.sleep(attacks_s)
            yield object.__new__(pace.Robustness)

    monkeypatch.setattr(pace, "train", fake_train)
    return taken


def test_a_probe_starts_no_step_that_would_end_past_its_cap(monkeypatch):
    taken = slow_engine(monkeypatch, penalised_s=0.3, plain_s=0.001, evaluation_s=0.01, attacks_s=0.01)
    pace.measure(RunConfig(robustness=True), cap_s=0.5)
    # After the first step (0.3 s) a second would end at 0.6 s, past the cap: one penalised step.
    assert [t[1] for t in taken if t != "evaluated" and t[0]] == [1]


def test_a_probe_cut_by_its_cap_times_the_evaluation_and_attacks_on_a_plain_step(monkeypatch):
    """Exact at 1000 classes: a step of seconds, attacks of about one. Extrapolated from the step,
    the attacks cost ROBUSTNESS_STEPS of them (25 min), and no step count could fit the limit."""
    slow_engine(monkeypatch, penalised_s=0.3, plain_s=0.001, evaluation_s=0.05, attacks_s=0.1)
    measured = pace.measure(RunConfig(robustness=True), cap_s=0.5)
    assert measured.complete and measured.timed_steps == 1
    # The stand-in's own times (slept: at least that, far below a step's multiples).
    assert 0.05 <= measured.evaluation_s < pace.EVALUATION_STEPS * measured.step_s / 2
    assert 0.1 <= measured.robustness_s < pace.ROBUSTNESS_STEPS * measured.step_s / 2
    # A step count that the refusal offers does fit.
    cfg = controls_view.config_from({"steps": 2000, "robustness": True}, Limits(max_seconds=60.0))
    fits = duration.fitting_steps(cfg, measured)
    assert fits > 1 and not duration._beyond(cfg.replace(steps=fits), measured, 0)
    assert "measured on one step" in duration.describe(cfg, measured)


def test_an_evaluation_between_the_probes_steps_is_not_a_step(monkeypatch):
    """The probe evaluates twice (the first use of the evaluation's Jacobian pays a one-time cost);
    the step that follows an evaluation must not count its time as the step's."""
    slow_engine(monkeypatch, penalised_s=0.01, plain_s=0.001, evaluation_s=0.3, attacks_s=0.0,
                first_evaluation_s=1.0)
    measured = pace.measure(RunConfig(robustness=False))
    assert measured.timed_steps == pace.PROBE_STEPS - 1  # one interval held the evaluation
    assert measured.step_high_s < 0.15  # not an evaluation's 0.3 s or more
    assert 0.3 <= measured.evaluation_s < 1.0  # the second, warm evaluation


def finished_record(cfg: RunConfig, step_s: float, run_seconds: float) -> dict:
    """A finished run's record as the app keeps it: reports every 100 steps at `step_s` a step."""
    history = [{"step": s, "samples_per_s": cfg.batch_size / step_s} for s in range(100, cfg.steps + 1, 100)]
    return {"history": history, "final": {"steps": cfg.steps, "run_seconds": run_seconds}, "status": "completed"}


def test_an_estimate_learns_from_the_last_run_of_its_kind():
    """The probe sees the machine for a few seconds; the run after it met another load and paid for
    building itself. The next estimate of the kind spans both."""
    cfg = RunConfig(steps=300, robustness=False)
    paces = pace.Paces()
    probed = pace.Pace(step_s=0.002, evaluation_s=0.05, robustness_s=0.0, step_low_s=0.0018, step_high_s=0.0022,
                       measured_at=time.monotonic())
    paces._known[pace.key(cfg)] = probed
    before = probed.seconds_range(cfg.steps, cfg.evaluations())
    # The run took twice the probe's step time, and 0.7 s besides its steps and evaluations.
    parts = cfg.steps * 0.004 + cfg.evaluations() * 0.05
    paces.observe(cfg, finished_record(cfg, step_s=0.004, run_seconds=parts + 0.7))
    learned = paces.cached(cfg)
    assert learned.observed_step_s == pytest.approx(0.004) and learned.extra_s == pytest.approx(0.7)
    low, high = learned.seconds_range(cfg.steps, cfg.evaluations())
    assert high == pytest.approx(parts + 0.7)  # that run, as it went
    assert low == pytest.approx(before[0] + 0.7)  # the probe's fast end, plus what every run pays
    # A longer run of the kind: its steps at the observed pace, the 0.7 s once.
    longer = cfg.replace(steps=3000)
    assert learned.seconds_range(3000, longer.evaluations())[1] == pytest.approx(
        3000 * 0.004 + longer.evaluations() * 0.05 + 0.7)
    assert "the last run like it here: 4 ms a step" in duration.describe(cfg, learned)
    # A run without the app's timing, or of a kind no longer measured, teaches nothing.
    other = cfg.replace(arch="lenet")
    paces.observe(other, finished_record(other, 0.004, 3.0))
    assert paces.cached(other) is None
    record = finished_record(cfg, 0.5, 9.0)
    del record["final"]["run_seconds"]
    paces.observe(cfg, record)
    assert paces.cached(cfg) == learned


def test_the_first_probe_is_taken_twice_and_a_new_kind_counts_what_runs_pay_beyond_their_parts(monkeypatch):
    """The first probe of a process pays one-time costs no run pays (it ran 0.8 s over a 1.3 s run
    here): thrown away. A run in the app pays what probes do not (the page's updates): a kind probed
    after a run counts at least what that run took beyond its parts."""
    probed = []

    def fake_measure(cfg):
        probed.append(cfg.arch)
        return pace.Pace(step_s=0.002, evaluation_s=0.05, robustness_s=0.0, measured_at=time.monotonic(),
                         extra_s=0.1)

    monkeypatch.setattr(pace, "measure", fake_measure)
    paces = pace.Paces()
    cfg = RunConfig(steps=300, robustness=False)
    assert paces.get(cfg).extra_s == 0.1 and probed == ["mlp", "mlp"]  # the first, twice
    # The run took twice its probe's step time, and 0.7 s beyond its parts.
    parts = cfg.steps * 0.004 + cfg.evaluations() * 0.05
    paces.observe(cfg, finished_record(cfg, step_s=0.004, run_seconds=parts + 0.7))
    lenet = cfg.replace(arch="lenet")
    learned = paces.get(lenet)
    assert probed == ["mlp", "mlp", "lenet"]
    assert learned.extra_s == pytest.approx(0.7) and learned.slowdown == pytest.approx(2.0)
    assert learned.seconds_range(300, cfg.evaluations())[1] == pytest.approx(parts + 0.7)
    # The line says what it learned in words: twice as slow as measured, 0.7 s to start and finish.
    assert "stepped 2× as slow as its own quick measurement, and took 0.7 s" in duration.describe(lenet, learned)
    # Measured again when stale, a kind keeps what the runs taught (before, it was forgotten).
    paces._known[pace.key(cfg)] = dataclasses.replace(paces._known[pace.key(cfg)], measured_at=-1e9)
    again = paces.get(cfg)
    assert probed[-1] == "mlp" and again.extra_s == pytest.approx(0.7) and again.slowdown == pytest.approx(2.0)


def test_train_times_the_whole_run_and_the_next_estimate_includes_it():
    handlers = handler()
    values = train_values(steps=30)
    cfg = controls_view.config_from(values, handlers.space)
    start = time.monotonic()
    *_, (session, status, _curves, _field) = handlers.train(None, values, request=None)
    wall = time.monotonic() - start
    final = session["runs"][-1]["record"]["final"]
    assert final["elapsed"] <= final["run_seconds"] <= wall  # training only < the run < the handler
    assert f"Finished 30 steps in {final['run_seconds']:.1f} s" in status
    learned = handlers.paces.cached(cfg)
    assert learned.observed_step_s is not None
    assert "the last run like it here" in duration.describe(cfg, learned)


def test_the_estimate_is_a_range_from_the_spread_of_the_timed_steps():
    cfg = controls_view.config_from({"steps": 1000, "robustness": False}, Limits())
    measured = pace.Pace(step_s=0.01, evaluation_s=0.0, robustness_s=0.0, step_low_s=0.008, step_high_s=0.02)
    low, high = measured.seconds_range(1000, cfg.evaluations())
    assert (low, high) == pytest.approx((8.0, 20.0))
    assert "about 8.0 s to 20 s" in duration.describe(cfg, measured)


@pytest.mark.parametrize("dataset", ["digits", "moons"])
@pytest.mark.parametrize("robustness", [True, False])
def test_the_steps_a_refusal_offers_fit_as_the_page_would_run_them(dataset, robustness):
    """The offered count, typed into Steps, makes a run with its own evaluations (30 steps evaluate
    more often than 2000): it must fit, and not by far less than the most that do. Before, 48 of
    300 such offers were themselves refused ("32 steps fit", then "29", then "28")."""
    space = Limits()
    for step_s, evaluation_s, attacks_s in itertools.product([0.001, 0.1, 6.6], [0.01, 3.0, 10.0], [0.0, 30.0]):
        asked = controls_view.config_from({"steps": 20_000, "dataset": dataset, "robustness": robustness}, space)
        measured = pace.Pace(step_s=step_s, evaluation_s=evaluation_s, robustness_s=attacks_s if robustness else 0)
        if not duration._beyond(asked, measured, 0):
            continue
        fits = duration.fitting_steps(asked, measured)

        def typed(steps):
            return controls_view.config_from({"steps": steps, "dataset": dataset, "robustness": robustness}, space)

        assert fits == 1 or not duration._beyond(typed(fits), measured, 0), (step_s, evaluation_s, fits)
        assert duration._beyond(typed(int(fits * 1.1) + 1), measured, 0), (step_s, evaluation_s, fits)


def test_a_run_that_cannot_finish_within_the_limit_is_refused_before_it_starts():
    handlers = handler(max_seconds=1.0)
    cfg = controls_view.config_from(train_values(steps=20_000), handlers.space)
    measured = handlers.paces.get(cfg)
    expected = duration.fitting_steps(cfg, measured)
    with pytest.raises(gr.Error) as refused:
        list(handlers.train(None, train_values(steps=20_000), request=None))
    text = str(refused.value)
    fit = "About 1 step fits" if expected == 1 else f"About {expected} steps fit"
    assert "stops a run after 1.0 s" in text and fit in text
    # The fitting count does fit: it is the run the message offers.
    fits = cfg.replace(steps=expected)
    assert measured.seconds_range(fits.steps, fits.evaluations())[0] <= 1.0


# ---------------------------------------------------------------------------------------------
# No event holds the accelerator past the app's limit


def test_a_run_whose_attacks_outlast_the_limit_is_kept_as_it_stands_and_says_why():
    from demo.app.limits import AFTER_TRAINING_SHARE
    from demo.app.running import FINAL, follow

    cfg = RunConfig(steps=50, time_budget=1e-4, robustness=True)  # the budget ends training at step 1
    ticks = list(follow(cfg, 1, threading.Event()))
    assert ticks[-1].kind == FINAL
    record = ticks[-1].run["record"]
    # The final evaluation alone takes longer than the whole 0.1 ms: the attacks never start, and
    # the event ends at the budget itself, not a share later.
    assert record["status"] == STOPPED and "time limit" in record["message"]
    assert "(0 s, attacks included)" in record["message"]
    assert record["robustness"] == {}
    # The engine trained for the budget less the attacks' share.
    assert record["config"]["time_budget"] == pytest.approx(1e-4 * (1 - AFTER_TRAINING_SHARE[True]))


def test_thread_cost_and_thorough_stop_at_the_limit_in_plain_words():
    from demo.app.views import cost, thread
    from demo.app.views.robustness import evaluate_thoroughly
    from demo.engine.record import Recorder

    with pytest.raises(gr.Error, match="warm-up of 3000 steps did not finish within this app's limit"):
        list(thread.run_thread("digits", "mlp", 0, 64, 0.001, "projection", "cpu", 0.1, 10, 3000,
                               space=Limits(max_seconds=0.05), memory=Estimator()))
    with pytest.raises(gr.Error, match="did not finish within this app's limit"):
        list(cost.measure_cost("mlp", "digits", "cpu", [10], ["projection"], 8, memory=Estimator(),
                               max_seconds=1e-9))
    cfg = RunConfig(steps=5, robustness=False)
    recorder = Recorder(cfg)
    for event in train(cfg):
        recorder.add(event)
    session = {"runs": [{"id": 1, "record": recorder.record, "weights": recorder.state_dict}], "next_id": 2,
               "folder": ""}
    with pytest.raises(gr.Error, match="thorough evaluation of run #1 did not finish"):
        evaluate_thoroughly(session, "1", max_runs=20, max_seconds=1e-9)


def test_stop_during_the_attacks_ends_the_work_before_the_event_ends():
    """The accelerator's slot is free only when the work has stopped: once the handler has sent its
    last update, no worker thread is still attacking (JP_CONCURRENCY=1 then holds)."""
    handlers = handler()
    updates = handlers.train(None, train_values(arch="lenet", steps=20, robustness=True), request=None)
    for session, _status, _, _ in updates:
        record = session["runs"][-1]["record"] if isinstance(session, dict) and session.get("runs") else None
        if record and record["history"] and record["history"][-1]["step"] == 20 and record["evaluations"] \
                and record["evaluations"][-1]["step"] == 20:
            break  # trained and evaluated: the attacks are running now
    handlers.stops.request("")
    last = list(updates)
    assert last and last[-1][0]["runs"][-1]["record"]["status"] == STOPPED
    assert last[-1][0]["runs"][-1]["record"]["robustness"] == {}  # stopped before the attacks ended
    assert [t for t in threading.enumerate() if t.name == "jp-stream" and t.is_alive()] == []


# ---------------------------------------------------------------------------------------------
# The Sweep handler: the same Stop, the same last-update guarantee, and the app's limit as a whole


def sweep_handler(**limits):
    from demo.app.views.sweep import Handlers as SweepHandlers

    space = Limits(**{"max_seconds": 3600.0, **limits})
    return SweepHandlers(space, Estimator(), StopRequests(), pace.Paces(), LiveSessions(space.session_ttl,
                                                                                         space.max_runs))


def test_stop_in_a_sweep_keeps_the_stopped_run_in_the_table_with_a_true_status():
    sweeps = sweep_handler()
    updates = sweeps.sweep(None, train_values(steps=2000), "0, 0.01", ["jacobian"], 0.1, request=None)
    for _session, status, _figure, _table in updates:
        if isinstance(status, str) and "Run 2 of 2" in status and "step" in status and "step 0 " not in status:
            break  # the second run is under way
    sweeps.stops.request("")
    *_, (session, status, _figure, table) = list(updates)
    records = [run["record"] for run in session["runs"]]
    assert [r["status"] for r in records] == ["completed", STOPPED]
    step = records[-1]["final"]["steps"]
    assert "Stopped during run 2 of 2" in status and f"at step {step} of 2000" in status
    assert "<progress" not in status  # the bar of a running sweep is gone
    assert len(table) == 2  # the stopped run is in the sweep's table too


def test_a_sweep_too_long_for_the_limit_is_refused_before_it_starts_and_one_that_overruns_is_cut():
    sweeps = sweep_handler(max_seconds=2.0)
    second = pace.Pace(step_s=1e-3, evaluation_s=0.0, robustness_s=0.0, measured_at=time.monotonic())
    sweeps.paces.get = lambda cfg: second  # each run 1 s: alone it fits, three together do not
    with pytest.raises(gr.Error, match=r"These 3 runs would take about 3\.0 s here together.* at most 2\.0 s"):
        next(sweeps.sweep(None, train_values(steps=1000), "0, 0.01, 0.1", ["jacobian"], 0.1, request=None))
    # Estimated to fit (the pace says so), but the runs take longer: each gets what is left, and
    # the sweep ends with a status that says why, keeping what finished.
    sweeps = sweep_handler(max_seconds=3.0)
    quick = pace.Pace(step_s=1e-6, evaluation_s=0.0, robustness_s=0.0, measured_at=time.monotonic())
    sweeps.paces.get = lambda cfg: quick
    updates = list(sweeps.sweep(None, train_values(steps=20_000), "0, 0.01, 0.1, 1", ["jacobian"], 0.1,
                                request=None))
    status = updates[-1][1]
    runs = [u[0] for u in updates if isinstance(u[0], dict) and "runs" in u[0]][-1]["runs"]
    assert "at most 3.0 s" in status and f"it ended after run {len(runs)} of 4" in status, status
    assert 1 <= len(runs) < 4 and all(r["record"]["config"]["time_budget"] <= 3.0 for r in runs)
