"""The app through its API, as a headless client sees it: launched in-process with
prevent_thread_lock=True on a free port and driven by gradio_client (gradio's own test pattern).

Runs are short (tens of steps); the one default run is bounded by the app's own time limit.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from pathlib import Path

import pytest
import torch
from apphelpers import runs, served, wait_for
from gradio_client import Client
from gradio_client.exceptions import AppError
from safetensors.torch import load_file

from demo.app import session as sessions
from demo.app.controls import CONFIG_FIELDS, config_from
from demo.app.limits import Limits
from demo.app.streaming import HEAVY, SKIP, Throttle
from demo.engine import data
from demo.engine.config import ConfigError, RunConfig
from demo.engine.record import new_record

# The default run takes a few seconds on an idle CPU; on a loaded CI machine the time limit
# ends it early (status "time_budget"), which still ends with figures.
TEST_LIMITS = Limits(max_seconds=60.0, concurrency=2)
SHORT = {"steps": 60, "robustness": False}
WAIT_S = 120

# gradio's queue calls a pandas option that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def url():
    with served(TEST_LIMITS) as (_, address):
        yield address


@pytest.fixture
def client(url):
    client = Client(url, verbose=False)
    yield client
    client.close()


def plotly(output) -> dict:
    assert isinstance(output, dict) and output["type"] == "plotly", output
    return json.loads(output["plot"])


def test_every_endpoint_is_named_and_train_has_defaults(client):
    api = client.view_api(return_format="dict", print_info=False)
    named = api["named_endpoints"]
    for name in ("/train", "/runs", "/compare", "/download", "/jacobian", "/robustness", "/perturbed", "/thread",
                 "/cost", "/sweep", "/estimators"):
        assert name in named
    params = named["/train"]["parameters"]
    assert [p["parameter_name"] for p in params] == [
        "dataset", "arch", "penalty", "method", "num_projections", "target",
        "steps", "batch_size", "lr", "seed", "device", "robustness", "num_classes",
    ]
    assert all(p["parameter_has_default"] for p in params)
    assert {p["parameter_name"]: p["parameter_default"] for p in params}["dataset"] == "digits"


def test_the_handlers_signatures_follow_config_fields(client):
    """/train and /sweep take their parameters from CONFIG_FIELDS (config_handler), with RunConfig's
    defaults: adding a field there adds it to both endpoints."""
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    train = named["/train"]["parameters"]
    assert [p["parameter_name"] for p in train] == list(CONFIG_FIELDS)
    assert {p["parameter_name"]: p["parameter_default"] for p in train} == {
        name: getattr(RunConfig(), name) for name in CONFIG_FIELDS}
    sweep = [p["parameter_name"] for p in named["/sweep"]["parameters"]]
    assert sweep == [*CONFIG_FIELDS, "strengths", "regularizers", "epsilon"]


def test_train_without_arguments_streams_and_ends_with_figures(client):
    job = client.submit(api_name="/train")
    status, curves, _field = job.result(timeout=WAIT_S)
    outputs = job.outputs()
    assert len(outputs) >= 3
    statuses = {out[0] for out in outputs if isinstance(out[0], str)}
    assert any("step" in s and "samples/s" in s for s in statuses)  # a live update while it ran
    assert "Run #1" in status and ("Finished 1500 steps" in status or "time budget" in status)
    figure = plotly(curves)
    names = {trace["name"] for trace in figure["data"]}
    assert {"cross-entropy", "λ × R", "train", "test", "exact (test subset)"} <= names
    [row] = runs(client)
    assert row["status"] in ("completed", "time_budget") and row["test acc"] > 0.5


def test_cancel_stops_training_and_keeps_the_partial_run(client):
    steps = 5_000  # seconds here: it fits the app's time limit however busy the machine, and outlasts the wait
    job = client.submit(steps=steps, robustness=False, api_name="/train")
    # Wait for a heavy update that shows progress, so the session holds the run in progress.
    wait_for(lambda: any(isinstance(o[0], str) and re.search(r"step [1-9]\d* of", o[0]) for o in job.outputs()))
    job.cancel()
    wait_for(lambda: job.status().code.name == "CANCELLED")
    with pytest.raises(Exception):  # noqa: B017 - CancelledError from concurrent.futures
        job.result(timeout=10)

    [run] = runs(client)
    assert run["status"] == "stopped"
    assert 0 < run["steps"] < steps
    time.sleep(1.5)
    [again] = runs(client)
    assert again["steps"] == run["steps"]  # the server-side generator is closed: no more steps

    # The kept run is a real run: its record and the weights of its last evaluation download.
    json_path, weights_path = client.predict("", api_name="/download")
    record = json.loads(Path(json_path).read_text())
    assert record["status"] == "stopped" and record["history"]
    assert record["config"]["steps"] == steps


def test_two_clients_train_at_once_and_keep_their_own_runs(url):
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    try:
        jobs = [
            first.submit(seed=1, penalty=0.0, **SHORT, api_name="/train"),
            second.submit(seed=2, penalty=0.1, **SHORT, api_name="/train"),
        ]
        for job in jobs:
            job.result(timeout=WAIT_S)
        [mine], [theirs] = runs(first), runs(second)
        assert (mine["seed"], mine["λ"]) == (1, 0.0)
        assert (theirs["seed"], theirs["λ"]) == (2, 0.1)
        record = json.loads(Path(second.predict("", api_name="/download")[0]).read_text())
        assert (record["config"]["seed"], record["config"]["penalty"]) == (2, 0.1)
    finally:
        first.close()
        second.close()


def test_two_trains_of_one_session_at_once_get_their_own_ids_and_both_are_kept():
    """JP_CONCURRENCY=2: one session's two Trains run side by side, each from its own copy of the
    session's state; the live sessions give them runs #1 and #2 and neither is lost."""
    with served(Limits(concurrency=2, max_seconds=600.0)) as (_, address):
        client = Client(address, verbose=False)  # one client: one session, two events
        try:
            jobs = [client.submit(seed=seed, steps=300, robustness=False, api_name="/train") for seed in (1, 2)]
            statuses = [job.result(timeout=WAIT_S)[0] for job in jobs]
            assert sorted(re.search(r"Run #(\d+)", s).group(1) for s in statuses) == ["1", "2"]
            kept = runs(client)
            assert sorted((r["run"], r["seed"]) for r in kept) == [(1, 1), (2, 2)] or \
                sorted((r["run"], r["seed"]) for r in kept) == [(1, 2), (2, 1)]
            assert {r["status"] for r in kept} == {"completed"}
        finally:
            client.close()


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"penalty": -1.0}, "penalty λ (lambda) must be at least 0"),
        ({"dataset": "spirals", "arch": "lenet"}, "lenet needs image inputs"),
        ({"steps": TEST_LIMITS.max_steps + 1}, "more than this app allows"),
        ({"device": "tpu"}, "Unknown device 'tpu'; choose one of: auto, cpu, cuda"),  # /train: RunConfig checks all
        pytest.param(
            {"device": "cuda"}, "no CUDA GPU is available here",  # raised inside the training generator
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_bad_input_gets_a_plain_sentence_and_the_next_run_works(client, bad, words):
    with pytest.raises(AppError) as caught:
        client.predict(**{**SHORT, **bad}, api_name="/train")
    message = str(caught.value)
    assert words in message
    assert "Traceback" not in message and 'File "' not in message
    status, _, _ = client.predict(**SHORT, api_name="/train")
    assert "Finished 60 steps" in status


def test_views_of_a_run_on_2d_data(client):
    status, curves, field = client.predict(dataset="moons", penalty=0.01, steps=200, api_name="/train")
    assert "Finished 200 steps" in status
    field_figure = plotly(field)
    kinds = [trace["type"] for trace in field_figure["data"]]
    assert kinds[:2] == ["heatmap", "contour"] and "scatter" in kinds

    heatmap, jac_field, info = client.predict("", "", 3, api_name="/jacobian")
    assert plotly(heatmap)["data"][0]["type"] == "heatmap"
    assert plotly(jac_field)["data"][0]["type"] == "heatmap"
    assert "Test example 3" in info
    # Negative numbers count from the end of the test set, as Python's indices do.
    last = len(data.load("moons", seed=0).x_test) - 1
    _, _, info = client.predict("", "", -1, api_name="/jacobian")
    assert f"Test example {last}," in info

    robustness = plotly(client.predict([], api_name="/robustness"))
    assert {trace["name"] for trace in robustness["data"]} == {"#1 λ=0.01 projection"}
    examples = plotly(client.predict("", "fgsm", 0.2, api_name="/perturbed"))
    assert any(trace.get("name") == "clean" for trace in examples["data"])


def test_jacobian_view_compares_two_runs_of_images(client):
    for penalty in (0.0, 0.1):
        client.predict(penalty=penalty, **SHORT, api_name="/train")
    heatmap, field, info = client.predict("2", "1", 0, api_name="/jacobian")
    figure = plotly(heatmap)
    classes = len(data.load("digits").class_names)
    assert len(figure["data"]) == 2 * (1 + classes)  # per run: the input and one image per class
    assert info.count("predicts") == 2
    with pytest.raises(AppError, match="no run #9"):
        client.predict("9", "", 0, api_name="/jacobian")
    assert " mlp: predicts" in info  # each row names its architecture


def test_the_jacobian_panel_compares_runs_of_one_dataset_only(client):
    client.predict(dataset="moons", steps=30, robustness=False, api_name="/train")
    client.predict(dataset="spirals", steps=30, robustness=False, api_name="/train")
    ids = [r["run"] for r in runs(client)][-2:]
    _, field, info = client.predict(str(ids[0]), str(ids[1]), 0, api_name="/jacobian")
    # Both are 2-D with two classes, but the spirals model is not drawn over moons points.
    assert info.count("predicts") == 1 and f"#{ids[0]} " in info
    # Why under the figure, not in a toast (this view redraws after each run, in whichever tab is open).
    assert f"Run #{ids[1]} trained on spirals, run #{ids[0]} on moons" in info, info
    assert len([t for t in plotly(field)["data"] if t["type"] == "heatmap"]) == 1


def test_download_gives_record_and_weights_and_refuses_odd_ids(client):
    client.predict(**SHORT, api_name="/train")
    json_path, weights_path = client.predict("1", api_name="/download")
    record = json.loads(Path(json_path).read_text())
    assert {"config", "history", "evaluations", "final", "robustness", "status"} <= set(record)
    weights = load_file(weights_path)
    assert "head.weight" in weights and weights["head.weight"].shape[0] == 10
    with pytest.raises(AppError, match="no run #../../etc"):
        client.predict("../../etc/passwd", api_name="/download")


def test_thread_panel_shows_the_zero_gradient(client):
    numbers, figure = client.predict(steps=10, warmup_steps=20, api_name="/thread")
    assert "‖d penalty / d parameters‖ | 0 |" in numbers
    names = {trace["name"] for trace in plotly(figure)["data"]}
    assert any(name.startswith("thread") for name in names) and any(name.startswith("ours") for name in names)


def test_cost_view_measures_each_method_and_its_ms_and_ratio_agree(client):
    figure, table, note = client.predict(classes=[10, 30], methods=["projection"], batch_size=8, api_name="/cost")
    rows = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    assert {(r["method"], r["C"]) for r in rows} == {("plain", 10), ("projection", 10), ("plain", 30),
                                                      ("projection", 30)}
    assert {trace["name"] for trace in plotly(figure)["data"]} == {"plain", "projection"}
    # The ratio is the method's ms over the plain step's ms at the same C (to the table's rounding).
    for r in rows:
        plain = next(p for p in rows if p["method"] == "plain" and p["C"] == r["C"])
        assert r["× plain step"] == pytest.approx(r["ms per step"] / plain["ms per step"], abs=0.01, rel=0.01)
        low, high = (float(v) for v in r["× plain (min–max)"].split("–"))
        assert 0 < low <= high
    assert "the two columns agree" in note


def test_limits_come_from_the_environment_and_bound_each_run():

    space = Limits.from_env({"JP_MAX_STEPS": "500", "JP_MAX_SECONDS": "10", "JP_CONCURRENCY": "2"})
    assert (space.max_steps, space.max_seconds, space.concurrency) == (500, 10.0, 2)
    assert Limits.from_env({}) == Limits()
    with pytest.raises(ValueError, match="JP_QUEUE_SIZE"):
        Limits.from_env({"JP_QUEUE_SIZE": "many"})
    # The memory ceiling's growth: 0 turns it off (and only there is 0 a value); unset, a share.
    assert Limits.from_env({"JP_MEMORY_CEILING_MB": "0"}).memory_ceiling_mb == 0
    assert Limits.from_env({"JP_MEMORY_CEILING_MB": "1500"}).memory_ceiling_mb == 1500
    assert Limits().memory_ceiling_mb is None
    for bad in ("x", "-5"):
        with pytest.raises(ValueError, match="JP_MEMORY_CEILING_MB"):
            Limits.from_env({"JP_MEMORY_CEILING_MB": bad})
    with pytest.raises(ValueError, match="JP_QUEUE_SIZE"):
        Limits.from_env({"JP_QUEUE_SIZE": "0"})
    assert config_from({"steps": 500}, space).time_budget == 10.0  # no budget: the Space's
    assert config_from({"steps": 500, "time_budget": 3.0}, space).time_budget == 3.0
    assert config_from({"steps": 500, "time_budget": 30.0}, space).time_budget == 10.0
    with pytest.raises(ConfigError, match="500 per run"):
        config_from({"steps": 501}, space)


def test_runs_past_the_limit_are_dropped_oldest_first_and_the_table_says_so():
    session = sessions.new_session()
    for _ in range(5):
        session, run_id = sessions.reserve_run(session)
        session = sessions.with_run(session, {"id": run_id, "record": new_record(RunConfig()), "weights": {}},
                                    max_runs=3)
    assert [r["id"] for r in session["runs"]] == [3, 4, 5]
    assert sessions.table_label(session) == (f"{sessions.TABLE_LABEL}: the latest 3 are kept, 2 older run(s) "
                                             "were dropped, oldest first")
    assert sessions.merged(session, sessions.new_session())["dropped"] == 2  # a merge keeps the count
    assert sessions.table_label(sessions.new_session()) == sessions.TABLE_LABEL
    sessions.delete_files(session)


def test_session_files_live_in_a_temp_folder_the_app_made_and_go_with_the_session(tmp_path):

    session, run_id = sessions.reserve_run(sessions.new_session())
    folder = Path(session["folder"])
    assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(sessions.FOLDER_PREFIX)
    run = {"id": run_id, "record": new_record(RunConfig()), "weights": {"w": torch.ones(2)}}
    session = sessions.with_run(session, run, max_runs=5)
    json_path, weights_path = sessions.write_files(session, sessions.find_run(session, f"#{run_id}"))
    assert Path(json_path).parent == folder and Path(weights_path).parent == folder
    assert json.loads(Path(json_path).read_text())["status"] == "stopped"

    outside = tmp_path / "not-ours"
    outside.mkdir()
    sessions.delete_files({"folder": str(outside)})  # a folder the app did not make stays
    assert outside.exists()
    sessions.delete_files(session)
    assert not folder.exists()


def test_a_session_keeps_its_newest_runs():

    session = sessions.new_session()
    for _ in range(4):
        session, run_id = sessions.reserve_run(session)
        session = sessions.with_run(session, {"id": run_id, "record": new_record(RunConfig()), "weights": {}}, 3)
    assert [r["id"] for r in session["runs"]] == [2, 3, 4]
    assert sessions.find_run(session, "")["id"] == 4
    with pytest.raises(sessions.RunNotFound, match="no run #1 in this session"):
        sessions.find_run(session, "1")
    sessions.delete_files(session)


def test_throttle_paces_heavy_updates_and_cancellation_points():
    pace = Throttle(heavy_s=math.inf, skip_s=0.0)
    assert pace.next() == HEAVY  # the first update is always heavy
    assert [pace.next() for _ in range(3)] == [SKIP] * 3
    assert pace.next(final=True) == HEAVY  # and so is the last
    quiet = Throttle(heavy_s=math.inf, skip_s=math.inf)
    assert (quiet.next(), quiet.next()) == (HEAVY, None)


def test_sweep_streams_one_run_per_strength_and_keeps_them_in_the_session(client):
    job = client.submit(dataset="moons", steps=80, strengths="0, 0.1", regularizers=["jacobian", "weight_decay"],
                        epsilon=0.2, api_name="/sweep")
    status, figure, table = job.result(timeout=WAIT_S)
    # Strength 0 trains plainly whatever the regulariser: the baseline is trained once.
    assert "Run 3 of 3" in status and "complete" in status
    rows = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    assert [(r["regulariser"], r["strength"]) for r in rows] == [
        ("baseline", 0), ("jacobian", 0.1), ("weight_decay", 0.1)]
    assert any(r["Pareto"] == "★" for r in rows)
    # The table's numbers are those of the runs the session now holds (the Runs tab's table).
    kept = runs(client)
    assert [(r["run"], r["status"]) for r in kept][-3:] == [(i, "completed") for i in range(1, 4)]
    assert [r["test acc"] for r in kept] == [r["clean acc"] for r in rows]
    names = {trace.get("name") for trace in plotly(figure)["data"]}
    assert {"jacobian", "weight_decay"} <= names
    assert len(job.outputs()) >= 4  # one update per finished run at least: it streams


def test_sweep_refuses_bad_strengths_in_plain_words(client):
    for strengths, words in (("0, lots", "Each strength"), ("", "1 to 10"), ("0, 2e9", "Each strength")):
        with pytest.raises(AppError, match=words):
            client.predict(dataset="moons", steps=10, strengths=strengths, api_name="/sweep")


def test_a_thorough_evaluation_adds_apgd_and_keeps_the_results_in_the_run(client):
    client.predict(dataset="moons", steps=80, robustness=True, penalty=0.0, api_name="/train")
    client.predict(dataset="moons", steps=80, robustness=False, api_name="/train")
    figure, findings = client.predict("2", api_name="/thorough")
    figure = plotly(figure)
    assert "APGD (L∞)" in [a["text"] for a in figure["layout"]["annotations"]]
    # The overlay keeps the other run's curves: both runs are drawn, the thorough one with APGD.
    assert len({trace["name"] for trace in figure["data"] if trace.get("name")}) == 2
    json_path, _ = client.predict("2", api_name="/download")
    record = json.loads(Path(json_path).read_text())
    assert {"noise", "fgsm", "pgd", "square", "apgd", "unbounded"} <= set(record["robustness"])
    assert isinstance(record["robustness_checks"], list)
    assert record["config"]["thorough"] is True  # the record says how it was evaluated
    assert record["config"]["num_classes"] == 2  # the run's own classes, not the synthetic setting
    # The findings say, in words, what APGD and Square found against PGD and what the checks said.
    apgd = {r["epsilon"]: r["accuracy"] for r in record["robustness"]["apgd"]}
    pgd = {r["epsilon"]: r["accuracy"] for r in record["robustness"]["pgd"]}
    gap = max(pgd[e] - apgd[e] for e in apgd if e > 0)
    assert "Run #2, evaluated thoroughly" in findings and "Masking checks" in findings
    from demo.evaluation.attacks import TOLERANCE  # the masking checks' own margin

    assert ("PGD alone overstated robustness" in findings) == (gap > TOLERANCE)
    with pytest.raises(AppError, match="no run #7"):
        client.predict("7", api_name="/thorough")


def test_legends_name_what_differs_between_the_runs_drawn_together():
    def run(run_id, **cfg):
        return {"id": run_id, "weights": {}, "record": new_record(RunConfig(**cfg))}

    same = [run(1, penalty=0.0), run(2, penalty=0.01)]
    assert sessions.legend_labels(same) == ["#1 λ=0 projection", "#2 λ=0.01 projection"]
    mixed = [run(1, penalty=0.01), run(2, penalty=0.01, dataset="moons"), run(3, penalty=0.01, seed=4)]
    labels = sessions.legend_labels(mixed)
    assert labels == ["#1 λ=0.01 projection digits seed 0", "#2 λ=0.01 projection moons seed 0",
                      "#3 λ=0.01 projection digits seed 4"]
    assert len(set(label.split(" ", 1)[1] for label in labels)) == 3  # without the id, still tell apart
    by_target = [run(1, penalty=0.01), run(2, penalty=0.01, target="features")]
    assert sessions.legend_labels(by_target) == ["#1 λ=0.01 projection logits", "#2 λ=0.01 projection features"]


def test_the_robustness_overlay_draws_runs_of_one_dataset(client):
    client.predict(dataset="digits", steps=40, api_name="/train")
    client.predict(dataset="moons", steps=40, api_name="/train")
    figure = plotly(client.predict(["1", "2"], api_name="/robustness"))
    names = {trace["name"] for trace in figure["data"]}
    assert names == {"#2 λ=0.01 projection"}  # the newest run's dataset (moons); #1 (digits) left out
    figure = plotly(client.predict(["1"], api_name="/robustness"))
    assert {trace["name"] for trace in figure["data"]} == {"#1 λ=0.01 projection"}


def test_presets_say_their_settings_are_ready_and_name_what_they_set():
    from demo.app import sharing
    from demo.engine import sweep as sweeps

    targets = [*CONFIG_FIELDS, "tab", "sweep_strengths", "sweep_regularizers", "sweep_epsilon",
               "sweep_status", "thread_numbers", "cost_classes", "cost_methods", "cost_note"]
    for name, preset in sharing.PRESETS.items():
        values = dict(zip(targets, sharing.preset_values(name, targets), strict=True))
        RunConfig.from_mapping(preset["controls"])  # every preset's settings are a valid run
        ready = sharing.READY_TARGETS[preset["tab"]]
        assert "Settings ready" in values[ready], name
        others = [t for t in sharing.READY_TARGETS.values() if t != ready]
        assert all(not isinstance(values[t], str) for t in others), name  # other tabs are left alone
        if preset["tab"] == "sweep":  # the count a preset announces is the count the sweep trains
            base = RunConfig.from_mapping(preset["controls"])
            strengths = [float(s) for s in preset["sweep_strengths"].split(",")]
            runs = sweeps.configs(base, strengths, preset["sweep_regularizers"], distinct=True)
            counted = re.search(r"(\d+) runs", preset["ready"])
            assert counted is None or int(counted.group(1)) == len(runs), name
    thousand = sharing.PRESETS["1000 classes: cost flat in C"]["controls"]
    assert (thousand["dataset"], thousand["num_classes"]) == ("synthetic", 1000)  # visibly 1000 classes


def test_the_runs_table_names_the_regulariser_and_the_robust_accuracy():
    record = new_record(RunConfig(dataset="moons", regularizer="input_gradient", penalty=0.1))
    record["final"] = {"test_accuracy": 0.9, "steps": 10}
    record["robustness"] = {"pgd": [{"epsilon": e, "accuracy": a} for e, a in ((0.1, 0.8), (0.2, 0.6))],
                            "square": [{"epsilon": e, "accuracy": a} for e, a in ((0.1, 0.85), (0.2, 0.7))]}
    plain = new_record(RunConfig(robustness=False))
    table = sessions.table({"runs": [{"id": 1, "record": record, "weights": {}},
                                     {"id": 2, "record": plain, "weights": {}}]})
    first, second = table.to_dict("records")
    # Moons is attacked at the ε where an unregularised model is not already robust: 0.2.
    assert (first["regulariser"], first["PGD ε"], first["PGD acc"], first["Square acc"]) == (
        "input_gradient", 0.2, 0.6, 0.7)
    assert second["regulariser"] == "jacobian" and math.isnan(second["PGD acc"])  # not measured: empty


def test_the_robustness_figure_says_in_itself_what_it_leaves_out(monkeypatch):
    """It redraws after every run, in whichever tab is open: what it leaves out goes in the figure,
    never in a toast over another tab."""
    from demo.app.views import robustness

    toasts = []
    monkeypatch.setattr(robustness.gr, "Info", toasts.append)
    monkeypatch.setattr(robustness.gr, "Warning", toasts.append)

    def run(number: int, dataset: str, measured: bool) -> dict:
        record = new_record(RunConfig(dataset=dataset))
        if measured:
            record["robustness"] = {"pgd": [{"epsilon": e, "accuracy": 1 - e} for e in (0.0, 0.1, 0.2)]}
        return {"id": number, "record": record, "weights": {}}

    mixed = {"runs": [run(1, "digits", True), run(2, "moons", True)]}
    figure = robustness.show_robustness(mixed, [])
    assert figure.layout.title.text == "Not drawn: #1, trained on another dataset than moons", figure.layout.title
    names = {trace.name for trace in figure.data}
    assert names and not any(name.startswith("#1") for name in names), names
    unmeasured = robustness.show_robustness({"runs": [run(1, "digits", False)]}, ["1"])  # chosen, not measured
    assert "None of these runs measured robustness" in unmeasured.layout.annotations[0].text
    assert toasts == []


def test_the_runs_table_reads_as_the_status_line_of_the_same_run():
    from demo.app.views.training import status_html

    record = new_record(RunConfig(dataset="moons", robustness=False))
    record["status"] = "completed"
    accuracy = 0.95551  # where 3 and 4 decimals part: 0.956 against 0.9555
    record["evaluations"] = [{"step": 40, "test_accuracy": accuracy}]
    # The whole run in the app (attacks and start included) against the engine's training time.
    record["final"] = {"test_accuracy": accuracy, "steps": 40, "elapsed": 9.04, "run_seconds": 12.34}
    run = {"id": 1, "record": record, "weights": {}}
    row = sessions.table({"runs": [run]}).to_dict("records")[0]
    status = status_html(run)
    # The table shows its floats as they are: the same digits as the line, not more.
    assert f"test accuracy {row['test acc']}" in status and f"in {row['time (s)']} s" in status, (row, status)
