"""The Jacobian view: J(x) of one test example for a run beside a comparison run, and for 2-D
data the ‖J(x)‖_F field with the decision boundary of each.

Both runs are shown on the first run's data (the same example), so the comparison run must take
the same inputs and have the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from demo.app import inputs, inspection, plots
from demo.app import session as sessions

MAX_EXAMPLE = 10**6  # test example numbers wrap around the test set; beyond this one is a typo

__all__ = ["JacobianView", "choices_update", "show_jacobian"]

NEWEST, NONE = ("newest run", ""), ("none", "")


HOW_TO_READ = (
    "**How to read this.** Each image is one class's row of J, ∂f_c/∂x: red pixels raise that logit, blue"
    " lower it, brighter is more sensitive. A penalised run's rows are fainter and smoother. For 2-D data"
    ' the field colours ‖J(x)‖_F over the plane: dark where the network barely changes, bright along its '
    'decision boundary.'
)


@dataclass(frozen=True)
class JacobianView:
    tab: gr.Tab
    run: gr.Dropdown
    compare: gr.Dropdown
    example: gr.Number
    show: gr.Button
    info: gr.Markdown
    heatmap: gr.Plot
    field: gr.Plot


def show_jacobian(session: dict | None, run: str, compare: str, example: float):
    """/jacobian: (heatmap, field, info) for test example `example` of run `run` ("" = newest)
    beside run `compare` ("" = none)."""
    run, compare = inputs.run_id(run, "Run"), inputs.run_id(compare, "Compare with")
    # Negative numbers count from the end of the test set, as Python's indices do.
    index = inputs.number(0 if example in (None, "") else example, "Test example", -MAX_EXAMPLE, MAX_EXAMPLE,
                          whole=True)
    if not (session or {}).get("runs"):
        return plots.jacobian_figure([]), plots.field_figure([]), "Train a run first: its Jacobian appears here."
    with inputs.plain_errors():
        runs = [sessions.find_run(session, run, need_weights=True)]
        if compare not in (None, ""):
            runs.append(sessions.find_run(session, compare))
    dataset = inspection.load_data(runs[0]["record"])
    models, problems = [], []
    for other in runs:
        problem = _unusable(other, runs[0])
        if problem:
            # Said under the figure, not in a toast: this redraws after every run, in whichever tab is open.
            problems.append(problem)
            continue
        models.append((_row_label(other, runs), inspection.load_model(other["record"], other["weights"])))
    if not models:
        info = " ".join(problems) or "No run with weights to show yet."
        return plots.jacobian_figure([]), plots.field_figure([]), info
    examples = [(label, inspection.example_jacobian(model, dataset, index)) for label, model in models]
    fields, points = [], None  # the field is drawn for 2-D data; for images it says so
    if dataset.kind == "points":
        fields = [(label, inspection.norm_field(model, dataset.x_test)) for label, model in models]
        points = inspection.points_of(dataset)
    info = "\n\n".join([*problems, _info(examples)])
    return plots.jacobian_figure(examples), plots.field_figure(fields, points), info


def choices_update(view: JacobianView, session: dict | None) -> dict:
    runs = sessions.choices(session)
    return {
        view.run: gr.update(choices=[NEWEST, *runs]),
        view.compare: gr.update(choices=[NONE, *runs]),
    }


def _unusable(run: dict[str, Any], first: dict[str, Any]) -> str | None:
    if not run["weights"]:
        return f"Run #{run['id']} has no weights yet (it stopped before its first evaluation)."
    mine, theirs = run["record"]["dataset"], first["record"]["dataset"]
    # Same dataset, not only the same shapes: a spirals model drawn over moons points (both 2-D,
    # two classes) would show a field of points it never saw.
    if (mine.get("name") != theirs.get("name") or mine.get("input_shape") != theirs.get("input_shape")
            or mine.get("num_classes") != theirs.get("num_classes")):
        return (
            f"Run #{run['id']} trained on {mine.get('name')}, run #{first['id']} on {theirs.get('name')}: the "
            "Jacobian panel compares runs of one dataset only, on the same test example. Choose a run of "
            f"{theirs.get('name')} to compare with."
        )
    return None


def _row_label(run: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The run's short label with its architecture (and whatever else differs between the runs
    drawn together): rows of two architectures must not read alike."""
    label = sessions.legend_labels(runs)[runs.index(run)]
    arch = run["record"]["config"]["arch"]
    return label if f" {arch}" in label else f"{label} {arch}"


def _info(examples: list[tuple[str, dict[str, Any]]]) -> str:
    first = examples[0][1]
    names = first["class_names"]
    lines = [f"Test example {first['index']}, label **{names[first['label']]}**."]
    for label, ex in examples:
        norm = float(np.sqrt((np.asarray(ex["jacobian"]) ** 2).sum()))
        p = float(ex["probabilities"][ex["prediction"]])
        lines.append(f"- {label}: predicts **{names[ex['prediction']]}** (p = {p:.3f}); ‖J(x)‖_F = {norm:.4g}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Layout


def layout() -> JacobianView:
    with gr.Tab("Jacobian") as tab:
        gr.Markdown(
            "J(x) = ∂f(x)/∂x for one test example: one row per class c. For images each row is shown "
            "as an image ∂f_c/∂x (red raises the logit, blue lowers it; colour channels summed; the "
            "classes with the largest rows). A smaller, smoother J is what the penalty buys."
        )
        with gr.Row():
            run = gr.Dropdown([NEWEST], value="", label="Run", allow_custom_value=True)
            compare = gr.Dropdown([NONE], value="", label="Compare with", allow_custom_value=True)
            example = gr.Number(0, label="Test example", precision=0, info="-1: the last one")
            show = gr.Button("Show", scale=0)
        info = gr.Markdown()
        heatmap = gr.Plot(label="Jacobian of the logits")
        field = gr.Plot(label="‖J(x)‖_F over the input plane (2-D data)")
        gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
    return JacobianView(tab, run, compare, example, show, info, heatmap, field)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: JacobianView, session: gr.State) -> None:
    gr.on(
        [view.show.click, view.tab.select, view.run.input, view.compare.input, view.example.submit],
        show_jacobian,
        [session, view.run, view.compare, view.example],
        [view.heatmap, view.field, view.info],
        api_name="jacobian",
        api_description="J(x) of a test example for a run (empty: newest) beside a comparison run.",
        trigger_mode="always_last",
        preprocess=False,  # values as sent, checked by demo.app.inputs
    )
