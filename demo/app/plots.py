"""Plotly figures of run records: pure functions, one builder per kind of figure.

A run record is the JSON-able dict of `demo.engine.record` (config, history, evaluations, final,
robustness); the Jacobian and field builders take the arrays of `demo.app.inspection`. No builder
touches torch or gradio, so each is tested on small hand-made records.

Builders:
- `steps_figure(runs, panels)`: metrics against the training step, one panel per `Panel`
  (training curves, run comparisons and the forum thread's demo all use it).
- `robustness_figure(runs)`: accuracy against sigma (noise) and epsilon (FGSM, PGD).
- `jacobian_figure(examples)`: J(x) of one input, per run (C x D heatmap, or df_c/dx images).
- `field_figure(fields, points)`: ‖J(x)‖_F over the plane, the decision boundary, the data.
- `examples_figure(examples)`: perturbed inputs with their predictions.
- `cost_figure(rows, metrics)`: a training step's cost of each estimator against C.
- `tradeoff_figure(rows, epsilon)`: a sweep's clean against robust accuracy, and ‖J‖_F against the strength.

Axes come from `demo.app.axes` (log ticks that enclose the data, accuracy spans, run colours), and
every ‖J‖_F says which Jacobian it is: the penalty's estimate is of the run's config `target`,
plain `jacobian_norm` is of the logits (demo.engine.train.Evaluation), and extra record keys such
as `jacobian_norm_features` are drawn too, labelled (see `panel_series`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from demo.app import axes
from demo.app.axes import log_ticks
from demo.engine.record import finite

__all__ = [
    "COMPARE_PANELS",
    "COST_METRICS",
    "Panel",
    "Series",
    "TARGET",
    "THREAD_PANELS",
    "TRAINING_PANELS",
    "cost_figure",
    "examples_figure",
    "field_figure",
    "jacobian_figure",
    "log_ticks",
    "message_figure",
    "of_the",
    "panel_series",
    "robustness_figure",
    "run_label",
    "steps_figure",
    "tradeoff_figure",
]

Record = Mapping[str, Any]
Run = tuple[str, Record]  # (legend label, record)

COLORS = axes.COLORS
DASHES = ("solid", "dash", "dot", "dashdot")
MAX_CLASS_IMAGES = 10  # df_c/dx images shown per run: the classes with the largest rows
HEIGHT = 380
DIVERGING = "RdBu_r"  # J entries: red raises the logit, blue lowers it, white is 0
RED, GREEN = COLORS[1], COLORS[2]  # wrong (a fooled input, a masking warning); still correct
# A figure that only says why a view is empty is as tall as the figures that replace it: gr.Plot
# redraws the same plotly element with Plotly.react and autosize, which kept the 120 px that an
# empty figure once had; the next figure's colour bar then got a negative length, plotly threw
# "Something went wrong with axis scaling", and the page stopped updating (the Jacobian tab after a
# dataset change). tests/app/test_browser.py walks that sequence.
EMPTY_HEIGHT = HEIGHT
# The legend's rows, estimated to grow the figure by LEGEND_ROW_PX a row beyond two: each entry
# is its symbol and gap plus its text (plotly's 12 px font).
LEGEND_WIDTH_PX, LEGEND_ENTRY_PX, LEGEND_CHAR_PX, LEGEND_ROW_PX = 800, 45, 6.5, 21
TARGET = "target"  # a series of the Jacobian the run penalises: its config's `target`
# Keys a record's history or evaluations may add to name a Jacobian outright, e.g.
# "jacobian_norm_features" (exact) or "jacobian_norm_estimate_logits"; plain "jacobian_norm" is
# the logits' (demo.engine.train.Evaluation) and "jacobian_norm_estimate" the penalty's target's.
EXTRA_JACOBIAN = re.compile(r"^jacobian_norm(_estimate)?_(logits|features)$")


@dataclass(frozen=True)
class Series:
    """One curve of a panel: `key` of each entry of record[`source`] against its "step"."""

    source: str  # "history" (every report) or "evaluations" (test-set evaluations)
    key: str
    label: str
    of: str | None = None  # the Jacobian a ‖J‖_F series measures: "logits", "features" or TARGET


@dataclass(frozen=True)
class Panel:
    """A subplot. In a panel of ‖J‖_F series, "{of}" in the titles becomes "of the logits" (or
    features, or both) from the runs drawn, and a record's extra Jacobian keys are drawn too."""

    title: str
    y_title: str
    series: tuple[Series, ...]
    log_y: bool = False
    accuracy: bool = False  # an accuracy axis: at least MIN_ACCURACY_SPAN wide, within [0, 1]


TRAINING_PANELS = (
    Panel(
        "Loss terms",
        "loss",
        (Series("history", "ce_loss", "cross-entropy"), Series("history", "weighted_term", "λ × R")),
        log_y=True,
    ),
    Panel(
        "Accuracy",
        "accuracy",
        (Series("history", "train_accuracy", "train"), Series("evaluations", "test_accuracy", "test")),
        accuracy=True,
    ),
    Panel(
        "‖J‖_F {of}",
        "‖J‖_F {of}",
        (
            Series("history", "jacobian_norm_estimate", "estimate (train batch)", of=TARGET),
            Series("evaluations", "jacobian_norm", "exact (test subset)", of="logits"),
        ),
        log_y=True,
    ),
)

# Runs side by side: one series a panel, so the legend names each run once.
COMPARE_PANELS = (
    Panel("Cross-entropy (train)", "cross-entropy", (Series("history", "ce_loss", "cross-entropy"),), log_y=True),
    Panel("Test accuracy", "accuracy", (Series("evaluations", "test_accuracy", "test accuracy"),), accuracy=True),
    # "(test subset)" on the y axis: in the title it ran past the figure's edge at 1400 px.
    Panel("Exact ‖J‖_F {of}", "‖J‖_F (test subset)",
          (Series("evaluations", "jacobian_norm", "‖J‖_F", of="logits"),), log_y=True),
)

# The forum thread's demo: records with one history entry per report (see demo.evaluation.thread).
THREAD_PANELS = (
    Panel("Exact ‖J‖_F {of} on test data", "‖J‖_F {of}", (Series("history", "jacobian_norm", "‖J‖_F", of="logits"),),
          log_y=True),
    Panel("Test accuracy", "accuracy", (Series("history", "test_accuracy", "test accuracy"),), accuracy=True),
    Panel(
        "‖d penalty / d parameters‖",
        "gradient norm",
        (Series("history", "penalty_grad_norm", "penalty gradient"),),
    ),
    Panel(
        ".grad pollution",
        "‖.grad − ∇loss‖ / ‖∇loss‖",
        (Series("history", "grad_pollution", "pollution"),),
    ),
)

COST_METRICS = (("ms_per_step", "ms per training step", True), ("ratio", "× a plain cross-entropy step", True))


def run_label(record: Record) -> str:
    """A short legend label: λ, estimator, architecture and dataset of a run record."""
    if "label" in record:
        return str(record["label"])
    cfg = record.get("config", {})
    return f"λ={cfg.get('penalty', 0):g} {cfg.get('method', '')}, {cfg.get('arch', '')}/{cfg.get('dataset', '')}"


def of_the(jacobians: Sequence[str]) -> str:
    """"of the logits", "of the features", or "of the features and logits" ("" for none)."""
    names = list(dict.fromkeys(jacobians))
    return f"of the {' and '.join(names)}" if names else ""


def panel_series(panel: Panel, record: Record) -> list[Series]:
    """The curves `panel` draws of one record: TARGET resolved to the run's target, plus any
    extra Jacobian keys (EXTRA_JACOBIAN) of the record that the panel does not draw already."""
    target = record.get("config", {}).get("target", "logits")
    series = [replace(s, of=target if s.of == TARGET else s.of) for s in panel.series]
    if not any(s.of for s in series):
        return series
    for source, where in (("history", "train batch"), ("evaluations", "test subset")):
        keys = dict.fromkeys(k for entry in record.get(source, []) for k in entry if EXTRA_JACOBIAN.match(k))
        for key in keys:
            estimate, of = EXTRA_JACOBIAN.match(key).groups()
            label = f"{'estimate' if estimate else 'exact'} ({where})"
            if not any(s.source == source and s.label == label and s.of == of for s in series):
                series.append(Series(source, key, label, of))
    return series


def steps_figure(runs: Sequence[Run], panels: Sequence[Panel], *, title: str | None = None) -> go.Figure:
    """One subplot per panel, metrics against the step. With one run, colours tell the series
    apart; with several, colours tell the runs apart and dashes the series (a panel with one
    series names its curves after the runs alone). A ‖J‖_F curve says which Jacobian it is: in
    its panel's titles and hover text, and in its name where the panel draws two Jacobians."""
    per_panel = [[panel_series(panel, record) for _, record in runs] for panel in panels]
    jacobians = [[s.of for lines in runs_series for s in lines if s.of] for runs_series in per_panel]
    titles = [_fill(panel.title, of) for panel, of in zip(panels, jacobians, strict=True)]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles)
    single = len(runs) == 1
    planned = max([r.get("config", {}).get("steps", 0) for _, r in runs] + [1])
    colour_index = 0  # one run: each series its own colour across all panels, for the shared legend
    for col, panel in enumerate(panels, start=1):
        slots = list(dict.fromkeys((s.source, s.key, s.of) for lines in per_panel[col - 1] for s in lines))
        mixed = len(set(jacobians[col - 1])) > 1
        for r_index, (label, record) in enumerate(runs):
            for series in per_panel[col - 1][r_index]:
                slot = slots.index((series.source, series.key, series.of))
                points = [e for e in record.get(series.source, []) if finite(e.get(series.key))]
                if single:
                    name, color = series.label, axes.color(colour_index + slot)
                else:
                    name = label if len(slots) == 1 else f"{label} · {series.label}"
                    color = axes.color(r_index)
                # Two Jacobians in one panel (a features target): each curve names its own. With
                # one, the panel's titles name it (a legend group title per Jacobian would stack
                # the legend three rows deep).
                name += f" {of_the([series.of])}" if mixed and series.of else ""
                fig.add_trace(
                    go.Scatter(
                        x=[e["step"] for e in points],
                        y=[e[series.key] for e in points],
                        name=name,
                        legendgroup=name,
                        showlegend=_first_use(fig, name),
                        mode="lines+markers" if series.source == "evaluations" else "lines",
                        line={"color": color, "dash": "solid" if single else DASHES[slot % len(DASHES)]},
                        hovertemplate=f"{name}{' ' + of_the([series.of]) if series.of and not mixed else ''}"
                                      "<br>step %{x}: %{y:.4g}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
        if single:
            colour_index += len(slots)
        _step_axes(fig, panel, col, planned, _fill(panel.y_title, jacobians[col - 1]))
    return _layout(fig, title)


def _fill(text: str, jacobians: Sequence[str]) -> str:
    """A panel's title with "{of}" filled in: "‖J‖_F {of}" -> "‖J‖_F of the logits"."""
    return " ".join(text.format(of=of_the(jacobians)).split())


def _step_axes(fig: go.Figure, panel: Panel, col: int, planned: int, y_title: str) -> None:
    """A panel's axes: steps from 0; an accuracy span; a log axis labelled to above its data; an
    empty panel (a run stopped before its first report) with the run's step span, no numbers on
    its y axis and a note, instead of plotly's -1 to 4."""
    axis = "x" if col == 1 else f"x{col}"
    traces = [t for t in fig.data if t.xaxis == axis]
    ys = [y for t in traces for y in t.y]
    has_points = any(len(t.x) for t in traces)
    fig.update_xaxes(title_text="step", rangemode="tozero", row=1, col=col,
                     **({} if has_points else {"range": [0, planned]}))
    fig.update_yaxes(title_text=y_title, type="log" if panel.log_y else "linear",
                     row=1, col=col)
    if panel.accuracy:
        fig.update_yaxes(range=axes.accuracy_range(ys), row=1, col=col)
    elif panel.log_y and has_points:
        fig.update_yaxes(**axes.log_ticks(ys), row=1, col=col)
    if not has_points:
        if not panel.accuracy:
            fig.update_yaxes(type="linear", showticklabels=False, range=[0, 1], row=1, col=col)
        fig.add_annotation(text="no points yet", showarrow=False, x=0.5, y=0.5, xref=f"{axis} domain",
                           yref=f"y{'' if col == 1 else col} domain", font={"color": "#888"})


def robustness_figure(runs: Sequence[Run], attacks: Sequence[str] = ("noise", "fgsm", "pgd", "square"), *,
                      note: str | None = None) -> go.Figure:
    """Accuracy against the attack's strength, one panel per attack, one curve per run; `note`
    (what is left out) as the figure's title."""
    titles = {"noise": "Gaussian noise", "fgsm": "FGSM (L∞)", "pgd": "PGD (L∞)", "square": "Square (no gradient)",
              "apgd": "APGD (L∞)"}
    fig = make_subplots(
        rows=1, cols=len(attacks), subplot_titles=[titles.get(a, a) for a in attacks], shared_yaxes=True
    )
    for col, attack in enumerate(attacks, start=1):
        strength = "sigma" if attack == "noise" else "epsilon"
        for r_index, (label, record) in enumerate(runs):
            rows = record.get("robustness", {}).get(attack, [])
            fig.add_trace(
                go.Scatter(
                    x=[r[strength] for r in rows],
                    y=[r["accuracy"] for r in rows],
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    mode="lines+markers",
                    line={"color": axes.color(r_index)},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="σ" if strength == "sigma" else "ε", row=1, col=col)
    fig.update_yaxes(title_text="test accuracy", range=[0, 1.02], row=1, col=1)
    fig = _layout(fig, note)
    if note:
        fig.update_layout(title_font_size=13)
    # The signs of gradient masking the runs' records hold, under the panels, in words.
    flags = [f"⚠ {label}: {flag}" for label, record in runs for flag in record.get("robustness_checks", [])]
    if flags:
        fig.add_annotation(text="<br>".join(_wrap(f, 150) for f in flags[:4]), showarrow=False, xref="paper",
                           yref="paper", x=0, y=-0.35, xanchor="left", yanchor="top", align="left",
                           font={"color": RED, "size": 11})
        fig.update_layout(height=HEIGHT + 40 * min(len(flags), 4), margin={"b": 40 + 45 * min(len(flags), 4)})
    return fig


def _wrap(text: str, width: int) -> str:
    """Line breaks (<br>) in a long annotation, at spaces."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join([*lines, line])


def jacobian_figure(examples: Sequence[tuple[str, Mapping[str, Any]]]) -> go.Figure:
    """J(x) of one input for each run: for images, the input and df_c/dx as an image per class
    (the classes with the largest rows, channels summed); otherwise the C x D matrix.

    Each example is (label, inspect.example_jacobian(...)); every panel shares one colour scale
    centred on 0, so runs compare at a glance.
    """
    if not examples:
        return message_figure("Train a run to see its Jacobian.")
    first = examples[0][1]
    scale = max(float(np.abs(np.asarray(ex["jacobian"])).max()) for _, ex in examples) or 1.0
    if first["kind"] == "image":
        return _jacobian_images(examples, scale)
    return _jacobian_matrices(examples, scale)


def _jacobian_title(examples) -> str:
    """The colour bar's title: which Jacobian the entries are of (the logits' unless the
    examples say otherwise)."""
    return f"J {of_the([ex.get('of', 'logits') for _, ex in examples])}".replace(" of the ", "<br>of the ", 1)


def _jacobian_images(examples, scale: float) -> go.Figure:
    jac0 = np.asarray(examples[0][1]["jacobian"])  # (C, channels, H, W)
    row_norms = np.sqrt((jac0.reshape(jac0.shape[0], -1) ** 2).sum(axis=1))
    classes = sorted(np.argsort(-row_norms)[:MAX_CLASS_IMAGES].tolist())
    names = examples[0][1]["class_names"]
    # Short titles: many classes leave each image a narrow column (11 of them across the plot). The
    # run and its prediction name the row, on the first column's axis.
    titles = ["input", *(_wrap(str(names[c]), 8) for c in classes)] * len(examples)
    fig = make_subplots(rows=len(examples), cols=1 + len(classes), subplot_titles=titles,
                        horizontal_spacing=0.01, vertical_spacing=0.12)
    for row, (label, ex) in enumerate(examples, start=1):
        image = np.asarray(ex["input"]).mean(axis=0)  # (H, W), channels averaged for display
        fig.add_trace(go.Heatmap(z=image, colorscale="gray", showscale=False, zmin=0, zmax=1, name="input"),
                      row=row, col=1)
        jac = np.asarray(ex["jacobian"])
        for col, c in enumerate(classes, start=2):
            fig.add_trace(
                go.Heatmap(z=jac[c].sum(axis=0), colorscale=DIVERGING, zmid=0, zmin=-scale, zmax=scale,
                           showscale=row == 1 and col == 2, name=f"∂f[{names[c]}]/∂x",
                           colorbar={"title": {"text": _jacobian_title(examples), "side": "right"}}),
                row=row,
                col=col,
            )
        fig.update_yaxes(title_text=_wrap(f"{label}: predicts {names[ex['prediction']]}", 18),
                         title_font_size=11, row=row, col=1)
    _image_axes(fig)
    fig = _layout(fig, None)
    fig.update_layout(height=max(HEIGHT, 230 * len(examples)))
    fig.update_annotations(font_size=11)
    return fig


def _jacobian_matrices(examples, scale: float) -> go.Figure:
    titles = [f"{label}: pred {ex['class_names'][ex['prediction']]}" for label, ex in examples]
    fig = make_subplots(rows=1, cols=len(examples), subplot_titles=titles)
    for col, (_, ex) in enumerate(examples, start=1):
        jac = np.asarray(ex["jacobian"]).reshape(len(ex["class_names"]), -1)  # (C, D)
        fig.add_trace(
            go.Heatmap(
                z=jac,
                x=[f"x{d + 1}" for d in range(jac.shape[1])],
                y=list(ex["class_names"]),
                colorscale=DIVERGING,
                zmid=0,
                zmin=-scale,
                zmax=scale,
                showscale=col == 1,
                colorbar={"title": {"text": _jacobian_title(examples), "side": "right"}},
                texttemplate="%{z:.3g}" if jac.size <= 64 else None,
                name="J",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="input d", row=1, col=col)
        fig.update_yaxes(title_text="output c", row=1, col=col)
    return _layout(fig, None)


def field_figure(fields: Sequence[tuple[str, Mapping[str, Any]]], points: Mapping[str, Any] | None = None) -> go.Figure:
    """‖J(x)‖_F over the input plane (colour), the decision boundary (white lines) and the
    data points (by class), one panel per run. Fields come from inspect.norm_field."""
    if not fields:
        return message_figure("The ‖J(x)‖ field is drawn for 2-D datasets (spirals, moons, circles, xor).")
    fig = make_subplots(rows=1, cols=len(fields), subplot_titles=[label for label, _ in fields])
    top = max(float(np.max(f["norms"])) for _, f in fields)
    of = of_the([f.get("of", "logits") for _, f in fields])
    for col, (_, field) in enumerate(fields, start=1):
        xs, ys = field["xs"], field["ys"]
        fig.add_trace(
            go.Heatmap(x=xs, y=ys, z=field["norms"], colorscale="Viridis", zmin=0, zmax=top,
                       colorbar={"title": {"text": f"‖J‖_F<br>{of.replace(' and ', '<br>and ')}", "side": "right"}},
                       showscale=col == 1, name=f"‖J(x)‖_F {of}"),
            row=1,
            col=col,
        )
        num_classes = int(field.get("num_classes", 2))
        fig.add_trace(
            go.Contour(
                x=xs, y=ys, z=field["predictions"], showscale=False, name="decision boundary",
                contours={"coloring": "none", "start": 0.5, "end": num_classes - 1.5 if num_classes > 2 else 0.5,
                          "size": 1},
                line={"color": "white", "width": 2},
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        if points is not None:
            for c in sorted(set(np.asarray(points["y"]).tolist())):
                mask = np.asarray(points["y"]) == c
                xy = np.asarray(points["x"])[mask]
                fig.add_trace(
                    go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"class {c}", legendgroup=f"class {c}",
                               showlegend=col == 1,
                               marker={"size": 5, "color": axes.color(c + 3),
                                       "line": {"width": 0.5, "color": "black"}}),
                    row=1,
                    col=col,
                )
        # One unit of x1 as long as one of x2: the plane as the data live in it, not squashed
        # to the panel's shape (moons span 4 by 2.5; a 4:1 panel turned their arcs into lines).
        fig.update_xaxes(title_text="x1", range=[xs[0], xs[-1]], constrain="domain", row=1, col=col)
        fig.update_yaxes(title_text="x2", range=[ys[0], ys[-1]], scaleanchor="x" if col == 1 else f"x{col}",
                         scaleratio=1, constrain="domain", row=1, col=col)
    return _layout(fig, None)


def examples_figure(examples: Mapping[str, Any], run: str = "") -> go.Figure:
    """Clean inputs above their perturbed versions with the model's predictions (images), or the
    clean and perturbed points joined by a line (2-D data). From inspect.perturbed."""
    names = examples["class_names"]
    labels, preds = list(examples["labels"]), list(examples["predictions"])
    title = f"{run + ': ' if run else ''}{examples['attack']} at strength {examples['strength']:g}"
    if examples["kind"] == "image":
        n = len(labels)
        # Short titles (a column each): the label above the clean input, the prediction above the
        # perturbed one; the rows are named on the first column's axis.
        titles = [_wrap(str(names[y]), 8) for y in labels] + [
            _wrap(f"{names[p]} {'✓' if p == y else '✗'}", 8) for p, y in zip(preds, labels, strict=True)
        ]
        fig = make_subplots(rows=2, cols=n, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.1)
        # The prediction titles in red where the perturbation fooled the model, green where it held.
        for annotation, p, y in zip(fig.layout.annotations[n:], preds, labels, strict=True):
            annotation.font = {"color": GREEN if p == y else RED}
        for row, key in ((1, "inputs"), (2, "perturbed")):
            for col in range(1, n + 1):
                image = np.asarray(examples[key][col - 1]).mean(axis=0)
                fig.add_trace(go.Heatmap(z=image, colorscale="gray", zmin=0, zmax=1, showscale=False, name=key),
                              row=row, col=col)
        _image_axes(fig)
        fig.update_yaxes(title_text="label", row=1, col=1)
        fig.update_yaxes(title_text="prediction", row=2, col=1)
        fig.update_annotations(font_size=11)
        return _layout(fig, title)
    clean, moved = np.asarray(examples["inputs"]), np.asarray(examples["perturbed"])
    fig = go.Figure()
    for i in range(len(labels)):
        fig.add_trace(go.Scatter(x=[clean[i, 0], moved[i, 0]], y=[clean[i, 1], moved[i, 1]], mode="lines",
                                 line={"color": "grey", "width": 1}, showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=clean[:, 0], y=clean[:, 1], mode="markers", name="clean",
                             marker={"symbol": "circle-open", "size": 9, "color": "black"}))
    correct = np.array(preds) == np.array(labels)
    for flag, name, color in ((True, "perturbed, still correct", GREEN), (False, "perturbed, wrong", RED)):
        mask = correct == flag
        fig.add_trace(go.Scatter(x=moved[mask, 0], y=moved[mask, 1], mode="markers", name=name,
                                 marker={"size": 8, "color": color}))
    fig.update_xaxes(title_text="x1")
    fig.update_yaxes(title_text="x2", scaleanchor="x")
    return _layout(fig, title)


def cost_figure(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[tuple[str, str, bool]] = COST_METRICS
) -> go.Figure:
    """A training step's cost against the number of outputs C, one curve per method, one panel
    per (key, axis title, log scale) in `metrics`. Rows as demo.budget.timing.time_steps returns them."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[title for _, title, _ in metrics])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for col, (key, title, log_y) in enumerate(metrics, start=1):
        for m_index, method in enumerate(methods):
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["num_classes"])
            fig.add_trace(
                go.Scatter(x=[r["num_classes"] for r in mine], y=[r[key] for r in mine], name=method,
                           legendgroup=method, showlegend=col == 1, mode="lines+markers",
                           line={"color": axes.color(m_index)}),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="outputs C", type="log", row=1, col=col,
                         **log_ticks([r["num_classes"] for r in rows]))
        fig.update_yaxes(title_text=title, type="log" if log_y else "linear", row=1, col=col,
                         **(log_ticks([r[key] for r in rows]) if log_y else {}))
    return _layout(fig, None)


def estimators_figure(rows: Sequence[Mapping[str, Any]], *, of: str = "logits") -> go.Figure:
    """Each estimator's estimates over seeds against the exact value (left: one column of dots per
    (method, probes), the exact value dashed) and its relative spread against the time of one call
    (right). Rows as demo.app.views.estimators.spreads gives them; `of` names the Jacobian."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"estimates of ‖J‖_F² of the {of} over seeds",
                                                        "spread against cost"])
    for index, row in enumerate(rows):
        name = f"{row['method']} {row['probes']}"
        color = axes.color(index)
        fig.add_trace(go.Box(y=row["estimates"], name=name, legendgroup=name, boxpoints="all", jitter=0.4,
                             pointpos=0, marker={"color": color, "size": 4}, line={"color": color}),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=[row["ms_per_call"]], y=[row["relative_std"]], name=name, legendgroup=name,
                                 showlegend=False, mode="markers+text", text=[name], textposition="top center",
                                 marker={"color": color, "size": 10,
                                         "symbol": "diamond" if row["probes"] == "orthogonal" else "circle"}),
                      row=1, col=2)
    if rows:
        fig.add_hline(y=rows[0]["exact"], line={"dash": "dash", "color": "#334155"}, row=1, col=1,
                      annotation_text="exact", annotation_position="top left")
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    spreads = [r["relative_std"] for r in rows if finite(r["relative_std"]) and r["relative_std"] > 0]
    times = [r["ms_per_call"] for r in rows if finite(r["ms_per_call"]) and r["ms_per_call"] > 0]
    fig.update_yaxes(title_text=f"‖J‖_F² of the {of}", row=1, col=1)
    fig.update_xaxes(title_text="ms per call (no graph)", type="log", row=1, col=2, **log_ticks(times))
    fig.update_yaxes(title_text="relative std of one estimate", type="log", row=1, col=2, **log_ticks(spreads))
    return _layout(fig, None)


def _image_axes(fig: go.Figure) -> None:
    """Heatmaps drawn as images: square pixels, row 0 at the top, no tick labels."""
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    for trace in fig.data:
        axis = "yaxis" + trace.yaxis[1:]  # "y3" -> "yaxis3"
        fig.layout[axis].update(scaleanchor=trace.xaxis, constrain="domain")


def _first_use(fig: go.Figure, name: str) -> bool:
    return not any(trace.name == name and trace.showlegend is not False for trace in fig.data)


def tradeoff_figure(rows: Sequence[Mapping[str, Any]], epsilon: float, *, jacobian: str = "logits") -> go.Figure:
    """A sweep's trade-off: clean against robust accuracy (the Pareto front joined), and ‖J‖_F
    against the strength on log axes; one colour per regulariser. Rows as demo.engine.sweep.table
    gives; `jacobian` names what their "jacobian_norm" measures (the final exact norm: the logits').

    Both accuracy axes span at least ten points (axes.accuracy_range), so two runs one test image
    apart do not look like a collapse; strengths label their points once per cluster of points
    that would print over each other, inside the panel."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"clean vs PGD accuracy at ε = {epsilon:g}",
                                                        f"‖J‖_F {of_the([jacobian])} against the strength"])
    regularizers = list(dict.fromkeys(r["regularizer"] for r in rows))
    positive = [r["penalty"] for r in rows if r["penalty"] > 0]
    # A log axis has no 0: strength 0 sits a decade below the smallest positive one, labelled "0".
    zero_at = min(positive) / 10 if positive else 1e-3
    x_range = axes.accuracy_range([r["test_accuracy"] for r in rows])
    y_range = axes.accuracy_range([r["robust_accuracy"] for r in rows])
    for index, name in enumerate(regularizers):
        mine = [r for r in rows if r["regularizer"] == name]
        color = axes.color(index)
        fig.add_trace(go.Scatter(
            x=[r["test_accuracy"] for r in mine], y=[r["robust_accuracy"] for r in mine], mode="markers",
            name=name, legendgroup=name, customdata=[f"{r['penalty']:g}" for r in mine],
            hovertemplate=f"{name} at %{{customdata}}<br>clean %{{x:.3f}}, PGD %{{y:.3f}}<extra></extra>",
            marker={"color": color, "size": 10, "symbol": ["star" if r.get("pareto") else "circle" for r in mine]},
        ), row=1, col=1)
        ordered = sorted(mine, key=lambda r: r["penalty"])
        fig.add_trace(go.Scatter(
            x=[r["penalty"] or zero_at for r in ordered], y=[r["jacobian_norm"] for r in ordered],
            mode="lines+markers", name=name, legendgroup=name, showlegend=False, line={"color": color},
        ), row=1, col=2)
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["test_accuracy"])
    if front:
        fig.add_trace(go.Scatter(x=[r["test_accuracy"] for r in front], y=[r["robust_accuracy"] for r in front],
                                 mode="lines", name="Pareto front", line={"color": "#555", "dash": "dot"}),
                      row=1, col=1)
    labels = axes.label_clusters([r["test_accuracy"] for r in rows], [r["robust_accuracy"] for r in rows],
                                 [f"{r['penalty']:g}" for r in rows], x_range, y_range)
    if labels:
        fig.add_trace(go.Scatter(x=[x for x, _, _, _ in labels], y=[y for _, y, _, _ in labels],
                                 text=[t for _, _, t, _ in labels], textposition=[p for _, _, _, p in labels],
                                 # invisible markers as large as the points', so the text clears them
                                 mode="markers+text", marker={"size": 10, "opacity": 0}, name="strengths",
                                 showlegend=False, hoverinfo="skip", textfont={"size": 11, "color": "#444"}),
                      row=1, col=1)
    fig.update_xaxes(title_text="clean test accuracy", range=x_range, row=1, col=1)
    fig.update_yaxes(title_text="accuracy under PGD", range=y_range, row=1, col=1)
    ticks = sorted({r["penalty"] or zero_at for r in rows})
    fig.update_xaxes(title_text="strength (λ, or ε for adversarial)", type="log", tickvals=ticks,
                     ticktext=["0" if t == zero_at and zero_at not in positive else axes.tick_text(t) for t in ticks],
                     **_log_range(ticks), row=1, col=2)
    fig.update_yaxes(title_text=f"mean ‖J‖_F {of_the([jacobian])}", type="log", row=1, col=2,
                     **log_ticks([r["jacobian_norm"] for r in rows]))
    return _layout(fig, None)


def _log_range(values: Sequence[float]) -> dict[str, Any]:
    """A log axis's range over positive `values`, a tenth of a decade beyond each end (or one
    decade around a single value), so the end ticks and markers sit inside the panel."""
    logs = [math.log10(v) for v in values if finite(v) and v > 0]
    if not logs:
        return {}
    low, high = min(logs), max(logs)
    pad = 0.1 * (high - low) if high > low else 0.5
    return {"range": [low - pad, high + pad]}


def message_figure(message: str) -> go.Figure:
    """A figure that only says something (why a view is empty, what to do first)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, None).update_layout(height=EMPTY_HEIGHT)


def _legend_rows(fig: go.Figure) -> int:
    """About how many rows the horizontal legend takes across LEGEND_WIDTH_PX (a desktop's tab;
    a phone's stacked figure grows by the legend's drawn height, demo.app.page)."""
    widths = [LEGEND_ENTRY_PX + LEGEND_CHAR_PX * len(t.name or "") for t in fig.data
              if t.showlegend is not False and t.name and _first_entry(fig, t)]
    rows, used = (1, 0.0) if widths else (0, 0.0)
    for width in widths:
        if used and used + width > LEGEND_WIDTH_PX:
            rows, used = rows + 1, 0.0
        used += width
    return rows


def _first_entry(fig: go.Figure, trace) -> bool:
    """Plotly shows one legend entry per (name, group) with showlegend left on."""
    return next(t for t in fig.data if t.name == trace.name and t.legendgroup == trace.legendgroup
                and t.showlegend is not False) is trace


def _layout(fig: go.Figure, title: str | None) -> go.Figure:
    fig.update_layout(
        # Even None leaves layout.title as {}: gradio's Plot then gives the figure a 100 px top
        # margin, under the component's label, which otherwise covers the panel titles.
        title=title,
        height=HEIGHT + LEGEND_ROW_PX * max(0, _legend_rows(fig) - 2),  # the panels keep their height
        margin={"l": 50, "r": 20, "t": 60 if title else 40, "b": 40},
        # At the foot of the figure (container coordinates), growing upwards: plotly widens the
        # bottom margin for it, so however many rows it takes it sits under the x titles, never
        # over them (hung from the plot in paper units, it climbed onto "step" when the plot was short).
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom"},
        template="plotly_white",
        uirevision="keep",  # keep zoom across updates where the front end allows it
    )
    return fig
