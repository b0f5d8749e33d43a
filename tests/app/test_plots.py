"""Figure builders as pure functions of small hand-made run records: the right traces, names,
axes, and values equal to the records' values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from demo.app import plots


def record(penalty: float, steps=(10, 20, 30)) -> dict:
    return {
        "config": {"penalty": penalty, "method": "projection", "arch": "mlp", "dataset": "digits"},
        "status": "completed",
        "history": [
            {"step": s, "ce_loss": 1.0 / s, "weighted_term": penalty * s, "train_accuracy": s / 100,
             "jacobian_norm_estimate": 2.0 + s}
            for s in steps
        ],
        "evaluations": [{"step": 15, "test_accuracy": 0.5, "jacobian_norm": 7.0},
                        {"step": 30, "test_accuracy": 0.75, "jacobian_norm": 5.0}],
        "robustness": {
            "noise": [{"sigma": 0.0, "accuracy": 0.9}, {"sigma": 0.2, "accuracy": 0.6 + penalty}],
            "fgsm": [{"epsilon": 0.0, "accuracy": 0.9}, {"epsilon": 0.1, "accuracy": 0.3 + penalty}],
            "pgd": [{"epsilon": 0.0, "accuracy": 0.9}, {"epsilon": 0.1, "accuracy": 0.2 + penalty}],
        },
    }


def traces_by_name(fig) -> dict:
    return {trace.name: trace for trace in fig.data}


def test_run_label_names_lambda_method_arch_and_dataset():
    assert plots.run_label(record(0.01)) == "λ=0.01 projection, mlp/digits"
    assert plots.run_label({"label": "ours"}) == "ours"


def test_training_curves_of_one_run_follow_the_record():
    rec = record(0.1)
    fig = plots.steps_figure([("run", rec)], plots.TRAINING_PANELS)
    traces = traces_by_name(fig)
    assert list(traces) == ["cross-entropy", "λ × R", "train", "test", "estimate (train batch)",
                            "exact (test subset)"]
    assert list(traces["cross-entropy"].x) == [10, 20, 30]
    assert list(traces["cross-entropy"].y) == [h["ce_loss"] for h in rec["history"]]
    assert list(traces["λ × R"].y) == pytest.approx([1.0, 2.0, 3.0])
    assert list(traces["test"].x) == [15, 30] and list(traces["test"].y) == [0.5, 0.75]
    assert list(traces["exact (test subset)"].y) == [7.0, 5.0]
    # Each panel's traces sit on its own axes, with the panel's titles and scale.
    assert [traces[n].xaxis for n in ("cross-entropy", "train", "exact (test subset)")] == ["x", "x2", "x3"]
    layout = fig.layout
    assert [layout.xaxis.title.text, layout.xaxis2.title.text] == ["step", "step"]
    assert [layout.yaxis.title.text, layout.yaxis2.title.text, layout.yaxis3.title.text] == [
        "loss", "accuracy", "‖J‖_F of the logits"]
    assert [layout.yaxis.type, layout.yaxis2.type, layout.yaxis3.type] == ["log", "linear", "log"]
    assert [a.text for a in layout.annotations] == ["Loss terms", "Accuracy", "‖J‖_F of the logits"]
    # One legend serves all panels: each series needs its own colour to be told apart there.
    colours = [trace.line.color for trace in fig.data]
    assert len(set(colours)) == len(colours)


def test_several_runs_get_a_colour_each_and_a_dash_per_series():
    fig = plots.steps_figure([("a", record(0.0)), ("b", record(0.1))], plots.TRAINING_PANELS[:1])
    traces = traces_by_name(fig)
    assert set(traces) == {"a · cross-entropy", "b · cross-entropy", "a · λ × R", "b · λ × R"}
    assert traces["a · cross-entropy"].line.color == traces["a · λ × R"].line.color
    assert traces["a · cross-entropy"].line.color != traces["b · cross-entropy"].line.color
    assert traces["a · cross-entropy"].line.dash != traces["a · λ × R"].line.dash
    assert list(traces["b · λ × R"].y) == pytest.approx([1.0, 2.0, 3.0])


def test_missing_and_non_finite_values_are_left_out():
    rec = record(0.1)
    rec["history"][1]["ce_loss"] = math.nan
    del rec["history"][2]["ce_loss"]
    fig = plots.steps_figure([("run", rec)], plots.TRAINING_PANELS[:1])
    assert list(traces_by_name(fig)["cross-entropy"].x) == [10]


def test_thread_panels_draw_the_thread_records():
    thread = {"label": "thread", "history": [{"step": 0, "jacobian_norm": 3.0, "test_accuracy": 0.5},
                                             {"step": 5, "jacobian_norm": 9.0, "test_accuracy": 0.1,
                                              "penalty_grad_norm": 0.0, "grad_pollution": 40.0}]}
    ours = {"label": "ours", "history": [{"step": 0, "jacobian_norm": 3.0, "test_accuracy": 0.5},
                                         {"step": 5, "jacobian_norm": 1.0, "test_accuracy": 0.6,
                                          "penalty_grad_norm": 2.5, "grad_pollution": 0.0}]}
    fig = plots.steps_figure([(r["label"], r) for r in (thread, ours)], plots.THREAD_PANELS)
    # One series a panel: the legend names the runs, once each.
    assert [t.name for t in fig.data if t.showlegend] == ["thread", "ours"]
    thread_norm, ours_norm, _, _, thread_grad, ours_grad, _, ours_pollution = fig.data
    assert (thread_norm.name, list(thread_norm.y)) == ("thread", [3.0, 9.0])
    assert (ours_norm.name, list(ours_norm.y)) == ("ours", [3.0, 1.0])
    assert thread_grad.xaxis == "x3" and list(thread_grad.x) == [5] and list(thread_grad.y) == [0.0]
    assert list(ours_grad.y) == [2.5] and list(ours_pollution.y) == [0.0]


def test_robustness_figure_has_a_panel_per_attack_and_a_curve_per_run():
    runs = [("λ=0", record(0.0)), ("λ=0.1", record(0.1))]
    fig = plots.robustness_figure(runs, ("noise", "fgsm", "pgd"))
    assert len(fig.data) == 6
    by_panel = {}
    for trace in fig.data:
        by_panel.setdefault(trace.xaxis, []).append(trace)
    assert sorted(by_panel) == ["x", "x2", "x3"]
    noise = {t.name: t for t in by_panel["x"]}
    assert list(noise["λ=0.1"].x) == [0.0, 0.2] and list(noise["λ=0.1"].y) == pytest.approx([0.9, 0.7])
    pgd = {t.name: t for t in by_panel["x3"]}
    assert list(pgd["λ=0"].y) == [0.9, 0.2]
    assert [t.showlegend for t in fig.data if t.name == "λ=0"] == [True, False, False]
    assert [fig.layout.xaxis.title.text, fig.layout.xaxis2.title.text, fig.layout.xaxis3.title.text] == ["σ", "ε", "ε"]
    assert fig.layout.yaxis.title.text == "test accuracy"
    # By default the gradient-free attack has its own panel too (empty for a record without it).
    assert len(plots.robustness_figure(runs).data) == 8
    assert [a.text for a in fig.layout.annotations] == ["Gaussian noise", "FGSM (L∞)", "PGD (L∞)"]


def image_example(scale: float, prediction: int = 1) -> dict:
    jac = scale * np.arange(3 * 2 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 2) - 5  # (C=3, channels=2, 2, 2)
    return {"jacobian": jac, "input": np.full((2, 2, 2), 0.5), "prediction": prediction,
            "class_names": ["a", "b", "c"], "kind": "image"}


def test_jacobian_images_show_each_class_row_with_one_colour_scale():
    examples = [("run 1", image_example(1.0)), ("run 2", image_example(0.5, prediction=2))]
    fig = plots.jacobian_figure(examples)
    assert len(fig.data) == 2 * (1 + 3)  # per run: the input and one image per class
    assert [t.name for t in fig.data[:4]] == ["input", "∂f[a]/∂x", "∂f[b]/∂x", "∂f[c]/∂x"]
    jac = examples[0][1]["jacobian"]
    np.testing.assert_allclose(np.asarray(fig.data[2].z), jac[1].sum(axis=0))  # channels summed
    np.testing.assert_allclose(np.asarray(fig.data[7].z), examples[1][1]["jacobian"][2].sum(axis=0))
    top = float(np.abs(jac).max())
    assert all(t.zmin == -top and t.zmax == top for t in fig.data if t.name != "input")
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["input", "a", "b", "c"] * 2
    # Each row is named by its run and that run's prediction, on its first column's axis.
    assert fig.layout.yaxis.title.text == "run 1: predicts b" and fig.layout.yaxis5.title.text == "run 2: predicts c"
    # Square pixels, first row on top.
    assert fig.layout.yaxis3.scaleanchor == "x3" and fig.layout.yaxis3.autorange == "reversed"


def test_jacobian_images_keep_the_classes_with_the_largest_rows():
    jac = np.zeros((12, 1, 2, 2), dtype=np.float32)
    jac[[0, 5, 11]] = 1.0  # 3 large rows among 12; the other 9 are 0, tied
    example = {"jacobian": jac, "input": np.zeros((1, 2, 2)), "prediction": 0,
               "class_names": [str(i) for i in range(12)], "kind": "image"}
    names = [t.name for t in plots.jacobian_figure([("r", example)]).data]
    assert len(names) == 1 + plots.MAX_CLASS_IMAGES
    assert {"∂f[0]/∂x", "∂f[5]/∂x", "∂f[11]/∂x"} <= set(names)


def test_jacobian_of_points_is_a_c_by_d_matrix():
    jac = np.array([[1.0, -2.0], [0.5, 3.0]])
    example = {"jacobian": jac, "input": np.zeros(2), "prediction": 0, "class_names": ["class 0", "class 1"],
               "kind": "points"}
    fig = plots.jacobian_figure([("r", example)])
    [heatmap] = fig.data
    np.testing.assert_allclose(np.asarray(heatmap.z), jac)
    assert list(heatmap.x) == ["x1", "x2"] and list(heatmap.y) == ["class 0", "class 1"]
    assert (heatmap.zmin, heatmap.zmax, heatmap.zmid) == (-3.0, 3.0, 0)
    assert fig.layout.xaxis.title.text == "input d" and fig.layout.yaxis.title.text == "output c"


def test_field_shows_norms_boundary_and_points():
    field = {"xs": np.array([0.0, 1.0, 2.0]), "ys": np.array([-1.0, 1.0]),
             "norms": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
             "predictions": np.array([[0, 0, 1], [0, 1, 1]]), "num_classes": 2}
    points = {"x": np.array([[0.5, 0.0], [1.5, 0.5], [1.0, -0.5]]), "y": np.array([0, 1, 0])}
    fig = plots.field_figure([("run", field)], points)
    heatmap, contour, class0, class1 = fig.data
    np.testing.assert_allclose(np.asarray(heatmap.z), field["norms"])
    assert list(heatmap.x) == [0.0, 1.0, 2.0] and list(heatmap.y) == [-1.0, 1.0]
    np.testing.assert_array_equal(np.asarray(contour.z), field["predictions"])
    assert contour.contours.start == contour.contours.end == 0.5  # the one boundary between 2 classes
    assert (class0.name, list(class0.x), list(class0.y)) == ("class 0", [0.5, 1.0], [0.0, -0.5])
    assert (class1.name, list(class1.x), list(class1.y)) == ("class 1", [1.5], [0.5])
    assert fig.layout.xaxis.title.text == "x1" and fig.layout.yaxis.title.text == "x2"


def test_empty_views_say_why():
    for fig in (plots.field_figure([]), plots.jacobian_figure([])):
        assert not fig.data and fig.layout.annotations[0].text


def test_perturbed_images_are_shown_above_their_originals_with_predictions():
    examples = {"kind": "image", "inputs": np.zeros((2, 1, 2, 2)), "perturbed": np.ones((2, 1, 2, 2)),
                "labels": [3, 4], "predictions": [3, 1], "class_names": [str(i) for i in range(5)],
                "attack": "fgsm", "strength": 0.1}
    fig = plots.examples_figure(examples)
    assert len(fig.data) == 4
    assert [t.name for t in fig.data] == ["inputs", "inputs", "perturbed", "perturbed"]
    np.testing.assert_allclose(np.asarray(fig.data[3].z), np.ones((2, 2)))
    assert [a.text for a in fig.layout.annotations] == ["3", "4", "3 ✓", "1 ✗"]
    assert (fig.layout.yaxis.title.text, fig.layout.yaxis3.title.text) == ("label", "prediction")
    assert fig.layout.title.text == "fgsm at strength 0.1"
    assert plots.examples_figure(examples, run="#2 λ=0.01").layout.title.text == "#2 λ=0.01: fgsm at strength 0.1"


def test_perturbed_points_are_joined_to_their_originals():
    examples = {"kind": "points", "inputs": np.array([[0.0, 0.0], [1.0, 1.0]]),
                "perturbed": np.array([[0.1, 0.0], [1.0, 1.2]]), "labels": [0, 1], "predictions": [0, 0],
                "class_names": ["class 0", "class 1"], "attack": "pgd", "strength": 0.2}
    traces = traces_by_name(plots.examples_figure(examples))
    assert list(traces["clean"].x) == [0.0, 1.0]
    assert list(traces["perturbed, still correct"].x) == [0.1]
    assert list(traces["perturbed, wrong"].y) == [1.2]


def test_cost_figure_plots_each_metric_against_c():
    rows = [
        {"method": "plain", "num_classes": 100, "ms_per_step": 2.0, "ratio": 1.0},
        {"method": "plain", "num_classes": 10, "ms_per_step": 1.0, "ratio": 1.0},
        {"method": "exact", "num_classes": 10, "ms_per_step": 3.0, "ratio": 3.0},
        {"method": "exact", "num_classes": 100, "ms_per_step": 40.0, "ratio": 20.0},
    ]
    fig = plots.cost_figure(rows)
    assert len(fig.data) == 4
    ms = {t.name: t for t in fig.data if t.xaxis == "x"}
    ratio = {t.name: t for t in fig.data if t.xaxis == "x2"}
    assert list(ms["plain"].x) == [10, 100] and list(ms["plain"].y) == [1.0, 2.0]
    assert list(ratio["exact"].y) == [3.0, 20.0]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.title.text == "outputs C"
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"  # ratios from 2 to 1000: log


def test_robustness_figure_states_the_masking_flags_of_its_runs():
    flagged = {**record(0.0), "robustness_checks": ["PGD left more accuracy than FGSM at epsilon 0.1: ..."]}
    fig = plots.robustness_figure([("λ=0", flagged), ("λ=0.1", record(0.1))])
    texts = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("⚠ λ=0: PGD left more accuracy than FGSM") for t in texts)
    unflagged = plots.robustness_figure([("λ=0.1", record(0.1))])
    assert not any("⚠" in a.text for a in unflagged.layout.annotations)


@pytest.mark.parametrize("values", [[0.0012, 0.9], [2.1, 3.9], [59.9, 5.3, 0.4], [1e-4, 10.0, 250.0], [0.005, 2.0],
                                    [0.5, 1.0], [3.0, 100.0], [29.0, 2.1], [6.9, 0.4], [10.0, 1000.0], [5.7, 5.7]])
def test_log_axes_label_every_tick_with_its_full_value(values):
    ticks = plots.log_ticks(values)
    vals = ticks["tickvals"]
    assert 2 <= len(vals) <= 8  # few enough to fit a phone's panel
    for value, text in zip(vals, ticks["ticktext"], strict=True):
        assert float(text) == pytest.approx(value, rel=1e-2)  # "0.02", not a bare "2"
        assert "e" not in text  # "1000", not "1e+03"
    # The labelled ticks enclose the data, one step beyond it at most, and the axis shows them all:
    # no curve runs above the last number (a top tick of 30 under a curve at 60).
    assert vals[0] <= min(values) < vals[1] and vals[-2] < max(values) <= vals[-1]
    low, high = ticks["range"]
    assert low < math.log10(vals[0]) and math.log10(vals[-1]) < high
    assert plots.log_ticks([0.0, float("nan")]) == {}


def test_the_training_curves_log_panels_use_full_tick_labels():
    fig = plots.steps_figure([("run", record(0.01))], plots.TRAINING_PANELS)
    log_axes = [fig.layout[name] for name in fig.layout if name.startswith("yaxis") and fig.layout[name].type == "log"]
    assert log_axes and all(axis.ticktext and all(float(t) > 0 for t in axis.ticktext) for axis in log_axes)


# --- Figures that cannot mislead -------------------------------------------------------------


def hex_rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def axis_of(fig, trace) -> tuple:
    """The layout's (x axis, y axis) objects of a trace: "x3" -> layout.xaxis3."""
    return fig.layout["xaxis" + trace.xaxis[1:]], fig.layout["yaxis" + trace.yaxis[1:]]


def test_a_log_axis_labels_a_tick_above_the_highest_point_of_its_curves():
    rec = record(0.01)
    for h in rec["history"]:  # a run whose ‖J‖ climbs to 60 and whose cross-entropy starts at ln 1000
        h["jacobian_norm_estimate"] *= 60 / 32
        h["ce_loss"] = math.log(1000) / (1 + h["step"] / 10)
    fig = plots.steps_figure([("run", rec)], plots.TRAINING_PANELS)
    for trace in fig.data:
        _, y_axis = axis_of(fig, trace)
        if y_axis.type != "log" or not len(trace.y):
            continue
        assert max(y_axis.tickvals) >= max(trace.y)  # the curve stays under its last number
        assert min(y_axis.tickvals) <= min(trace.y)
        assert 10 ** y_axis.range[1] >= max(y_axis.tickvals)  # and that number is on screen
    assert max(fig.layout.yaxis3.tickvals) >= 60 and max(fig.layout.yaxis.tickvals) >= math.log(1000)


def test_cost_axes_say_1000_not_1e03():
    rows = [{"method": "exact", "num_classes": c, "ms_per_step": c * 1.5, "ratio": c / 3} for c in (10, 100, 1000)]
    fig = plots.cost_figure(rows)
    texts = [*fig.layout.xaxis.ticktext, *fig.layout.yaxis.ticktext, *fig.layout.yaxis2.ticktext]
    assert "1000" in fig.layout.xaxis.ticktext
    assert texts and not any("e" in t for t in texts)
    assert [plots.axes.tick_text(v) for v in (1000, 0.002, 50, 1.5, 2e6, 1e-5)] == [
        "1000", "0.002", "50", "1.5", "2e6", "1e-5"]


def sweep_rows(points) -> list[dict]:
    return [{"regularizer": reg, "penalty": p, "test_accuracy": clean, "robust_accuracy": robust,
             "jacobian_norm": 30.0 / (1 + 100 * p), "pareto": False} for reg, p, clean, robust in points]


def test_sweep_accuracy_axes_span_ten_points_so_one_image_is_not_a_collapse():
    # The "λ = 0 against 0.01" preset: clean accuracy 0.967 and 0.969, one test image of 360 apart.
    fig = plots.tradeoff_figure(sweep_rows([("jacobian", 0.0, 0.967, 0.45), ("jacobian", 0.01, 0.969, 0.47)]), 0.1)
    for axis, values in ((fig.layout.xaxis, (0.967, 0.969)), (fig.layout.yaxis, (0.45, 0.47))):
        low, high = axis.range
        assert high - low >= plots.axes.MIN_ACCURACY_SPAN  # not a 0.2-point window
        assert low < min(values) and max(values) < high
        assert low > -0.1 and high < 1.1  # an accuracy axis stays about [0, 1]
        # The two runs sit within a fiftieth of the panel of each other, as 2 points in 1000 should.
        assert (max(values) - min(values)) / (high - low) < 0.2


def test_a_one_point_sweep_gets_accuracy_axes_around_its_point():
    fig = plots.tradeoff_figure(sweep_rows([("jacobian", 0.01, 0.97, 0.5)]), 0.1)
    for axis, value in ((fig.layout.xaxis, 0.97), (fig.layout.yaxis, 0.5)):
        low, high = axis.range
        assert low < value < high and high - low >= 0.1 and low > -0.1 and high < 1.1  # not -0.5 to 1.5
    low, high = fig.layout.xaxis2.range  # the strength's log axis holds its one point, with room around it
    assert low < math.log10(0.01) < high


def test_sweep_labels_merge_where_they_would_overlap_and_stay_under_the_title():
    points = [("jacobian", 0.0, 0.967, 0.450), ("jacobian", 0.001, 0.967, 0.451),
              ("input_gradient", 0.0, 0.967, 0.450), ("jacobian", 0.1, 0.930, 0.750)]
    fig = plots.tradeoff_figure(sweep_rows(points), 0.1)
    [labels] = [t for t in fig.data if t.name == "strengths"]
    texts = list(labels.text)
    # Three points in one spot get one label, each strength once; the far point its own.
    assert sorted(texts) == ["0, 0.001", "0.1"]
    assert labels.marker.opacity == 0  # invisible markers: the text clears the visible one
    positions = dict(zip(texts, labels.textposition, strict=True))
    assert positions["0.1"] == "bottom center"  # the top point's label goes under it, not under the title
    assert positions["0, 0.001"] == "top center"
    # The points keep their strengths as hover text.
    jac = next(t for t in fig.data if t.name == "jacobian" and t.xaxis == "x")
    assert list(jac.customdata) == ["0", "0.001", "0.1"]


def test_label_clusters_merge_only_labels_that_would_touch():
    far = plots.axes.label_clusters([0.0, 1.0], [0.0, 0.0], ["a", "b"], [0, 1], [0, 1])
    assert sorted(t for _, _, t, _ in far) == ["a", "b"]
    near = plots.axes.label_clusters([0.5, 0.51], [0.3, 0.31], ["a", "b"], [0, 1], [0, 1])
    assert [(x, y, t) for x, y, t, _ in near] == [(0.51, 0.31, "a, b")]  # at the higher point


def test_accuracy_panels_of_a_run_stopped_at_step_0_read_0_to_1_from_step_0():
    stopped = {"config": {"steps": 1500, "target": "logits"}, "history": [], "evaluations": []}
    fig = plots.steps_figure([("run", stopped)], plots.TRAINING_PANELS)
    low, high = fig.layout.yaxis2.range
    assert -0.1 < low <= 0 and 1 <= high < 1.1  # accuracy, not plotly's -1 to 4
    assert [fig.layout[f"xaxis{i}"].range for i in ("", 2, 3)] == [(0, 1500)] * 3  # the run's steps
    notes = [a for a in fig.layout.annotations if a.text == "no points yet"]
    assert len(notes) == 3 and {a.xref for a in notes} == {"x domain", "x2 domain", "x3 domain"}
    assert fig.layout.yaxis.showticklabels is False  # no invented loss numbers


def test_accuracy_panels_with_points_keep_a_ten_point_span_within_0_and_1():
    rec = record(0.0)
    for h in rec["history"]:
        h["train_accuracy"] = 0.968
    rec["evaluations"] = [{"step": 30, "test_accuracy": 0.969, "jacobian_norm": 5.0}]
    low, high = plots.steps_figure([("run", rec)], plots.TRAINING_PANELS).layout.yaxis2.range
    assert high - low >= 0.1 and low < 0.968 and 0.969 < high < 1.1
    compare = plots.steps_figure([("a", rec), ("b", record(0.1))], plots.COMPARE_PANELS)
    assert compare.layout.xaxis.rangemode == "tozero"  # steps from 0
    assert compare.layout.yaxis2.range[0] < 0.5 < 0.75 < compare.layout.yaxis2.range[1]


def test_the_legend_sits_at_the_foot_of_the_figure_and_the_figure_grows_for_it():
    def compare(n):
        return plots.steps_figure([(f"#{i} λ={i / 1000:g} projection, mlp/digits", record(i / 1000))
                                   for i in range(n)], plots.COMPARE_PANELS)
    legend = compare(12).layout.legend
    # At the figure's foot (container coordinates): plotly makes room for it under the x titles;
    # hung from the plot in paper units, a long legend climbed onto "step".
    assert (legend.yref, legend.y, legend.yanchor) == ("container", 0, "bottom")
    # Twenty runs' names take several rows: the figure grows so that its panels do not shrink.
    assert compare(1).layout.height == plots.HEIGHT < compare(12).layout.height < compare(20).layout.height


def test_twenty_runs_get_twenty_colours():
    runs = [(f"run {i}", record(i / 100)) for i in range(20)]
    fig = plots.steps_figure(runs, plots.COMPARE_PANELS)
    first_panel = [t.line.color for t in fig.data if t.xaxis == "x"]
    assert len(first_panel) == 20 and len(set(first_panel)) == 20
    robust = plots.robustness_figure(runs, ("pgd",))
    assert len({t.line.color for t in robust.data}) == 20
    # Told apart on screen, not only in hex: every pair differs by a visible amount.
    rgb = [hex_rgb(c) for c in plots.axes.COLORS[:20]]
    assert min(sum(abs(a - b) for a, b in zip(p, q, strict=True)) for i, p in enumerate(rgb) for q in rgb[i + 1:]) > 80


def test_a_2d_field_keeps_the_planes_proportions():
    field = {"xs": np.linspace(-1.5, 2.5, 5), "ys": np.linspace(-1.0, 1.5, 4), "norms": np.ones((4, 5)),
             "predictions": np.zeros((4, 5), dtype=int), "num_classes": 2}
    fig = plots.field_figure([("a", field), ("b", field)])
    for y_axis, x_name in ((fig.layout.yaxis, "x"), (fig.layout.yaxis2, "x2")):
        assert (y_axis.scaleanchor, y_axis.scaleratio, y_axis.constrain) == (x_name, 1, "domain")
    assert "of the logits" in fig.data[0].colorbar.title.text


def test_perturbed_titles_are_red_where_the_input_fooled_the_model():
    examples = {"kind": "image", "inputs": np.zeros((3, 1, 2, 2)), "perturbed": np.ones((3, 1, 2, 2)),
                "labels": [3, 4, 0], "predictions": [3, 1, 2], "class_names": [str(i) for i in range(5)],
                "attack": "fgsm", "strength": 0.1}
    annotations = plots.examples_figure(examples).layout.annotations
    predictions = annotations[3:]
    red = [hex_rgb(a.font.color) for a in predictions]
    fooled = [p != y for p, y in zip(examples["predictions"], examples["labels"], strict=True)]
    assert fooled == [False, True, True]
    for colour, was_fooled in zip(red, fooled, strict=True):
        r, g, _ = colour
        assert (r > 2 * g) == was_fooled  # red where fooled, not where the prediction held
    assert all(a.font.color is None for a in annotations[:3])  # the labels above stay plain


def jacobian_curves(fig) -> dict[str, list]:
    return {t.name: list(t.y) for t in fig.data if t.xaxis == "x3"}


def test_a_features_target_run_is_never_drawn_as_the_logits_jacobian():
    rec = record(0.01)
    rec["config"]["target"] = "features"
    fig = plots.steps_figure([("run", rec)], plots.TRAINING_PANELS)
    # The penalty's estimate is of the features; the exact value (demo.engine.train) of the logits.
    assert jacobian_curves(fig) == {"estimate (train batch) of the features": [12.0, 22.0, 32.0],
                                    "exact (test subset) of the logits": [7.0, 5.0]}
    assert fig.layout.annotations[2].text == "‖J‖_F of the features and logits"
    assert fig.layout.yaxis3.title.text == "‖J‖_F of the features and logits"
    # One Jacobian: the panel's titles and the hover text name it; the names stay short.
    logits = plots.steps_figure([("run", record(0.01))], plots.TRAINING_PANELS)
    assert list(jacobian_curves(logits)) == ["estimate (train batch)", "exact (test subset)"]
    assert logits.layout.annotations[2].text == logits.layout.yaxis3.title.text == "‖J‖_F of the logits"
    assert all("of the logits" in t.hovertemplate for t in logits.data if t.xaxis == "x3")


def test_a_record_with_both_exact_norms_draws_both_labelled():
    rec = record(0.01)
    rec["config"]["target"] = "features"
    for e in rec["evaluations"]:
        e["jacobian_norm_features"] = e["jacobian_norm"] / 4
    fig = plots.steps_figure([("run", rec)], plots.TRAINING_PANELS)
    curves = jacobian_curves(fig)
    assert curves["exact (test subset) of the logits"] == [7.0, 5.0]
    assert curves["exact (test subset) of the features"] == [1.75, 1.25]
    # Several runs: each curve is named after its run, its series and, the panel mixing two, its Jacobian.
    runs = plots.steps_figure([("a", rec), ("b", record(0.0))], plots.TRAINING_PANELS)
    names = [t.name for t in runs.data if t.xaxis == "x3"]
    assert "a · estimate (train batch) of the features" in names and "b · exact (test subset) of the logits" in names
    assert "b · estimate (train batch) of the logits" in names  # run b penalises the logits


def test_the_sweep_and_compare_name_the_jacobian_they_draw():
    sweep = plots.tradeoff_figure(sweep_rows([("jacobian", 0.01, 0.97, 0.5)]), 0.1)
    assert sweep.layout.yaxis2.title.text == "mean ‖J‖_F of the logits"
    assert "of the features" in plots.tradeoff_figure(sweep_rows([("jacobian", 0.01, 0.97, 0.5)]), 0.1,
                                                      jacobian="features").layout.yaxis2.title.text
    compare = plots.steps_figure([("a", record(0.0)), ("b", record(0.1))], plots.COMPARE_PANELS)
    assert compare.layout.annotations[2].text == "Exact ‖J‖_F of the logits"
    assert compare.layout.yaxis3.title.text == "‖J‖_F (test subset)"


def test_the_training_tab_draws_the_sessions_lambda_zero_run_of_the_same_model_beside_a_penalised_one():
    from demo.app.views.training import curves, reference_run
    from demo.engine.config import RunConfig
    from demo.engine.record import COMPLETED, new_record

    def run(run_id, status=COMPLETED, **cfg):
        record = new_record(RunConfig(**{"robustness": False, **cfg}))
        record["status"] = status
        record["history"] = [{"step": 1, "ce_loss": 1.0, "term": 0.5, "weighted_term": 0.005, "train_accuracy": 0.5,
                              "jacobian_norm_estimate": 1.0, "samples_per_s": 1.0, "elapsed": 0.1}]
        return {"id": run_id, "record": record, "weights": {}}

    plain, other_data, stopped = run(1, penalty=0.0), run(2, penalty=0.0, dataset="moons"), run(3, "stopped", penalty=0)
    penalised = run(4, penalty=0.01)
    session = {"runs": [plain, other_data, stopped, penalised]}
    assert reference_run(session, penalised) is plain  # same model, finished; not the moons run nor the stopped one
    assert reference_run(session, plain) is None  # a λ = 0 run needs no reference
    assert reference_run({"runs": [other_data, penalised]}, penalised) is None
    names = {trace.name for trace in curves(session, penalised).data}
    assert any("λ = 0 (run #1)" in (name or "") for name in names), names
