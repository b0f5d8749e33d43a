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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "COMPARE_PANELS",
    "COST_METRICS",
    "Panel",
    "Series",
    "THREAD_PANELS",
    "TRAINING_PANELS",
    "cost_figure",
    "examples_figure",
    "field_figure",
    "jacobian_figure",
    "robustness_figure",
    "message_figure",
    "run_label",
    "steps_figure",
]

Record = Mapping[str, Any]
Run = tuple[str, Record]  # (legend label, record)

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
DASHES = ("solid", "dash", "dot", "dashdot")
MAX_CLASS_IMAGES = 10  # df_c/dx images shown per run: the classes with the largest rows
HEIGHT = 380
DIVERGING = "RdBu_r"  # J entries: red raises the logit, blue lowers it, white is 0
# A figure that only says why a view is empty is as tall as the figures that replace it: gr.Plot
# redraws the same plotly element with Plotly.react and autosize, which kept the 120 px that an
# empty figure once had; the next figure's colour bar then got a negative length, plotly threw
# "Something went wrong with axis scaling", and the page stopped updating (the Jacobian tab after a
# dataset change). tests/app/test_browser.py walks that sequence.
EMPTY_HEIGHT = HEIGHT


@dataclass(frozen=True)
class Series:
    """One curve of a panel: `key` of each entry of record[`source`] against its "step"."""

    source: str  # "history" (every report) or "evaluations" (test-set evaluations)
    key: str
    label: str


@dataclass(frozen=True)
class Panel:
    title: str
    y_title: str
    series: tuple[Series, ...]
    log_y: bool = False


TRAINING_PANELS = (
    Panel(
        "Loss terms",
        "loss",
        (Series("history", "ce_loss", "cross-entropy"), Series("history", "weighted_term", "λ × penalty")),
        log_y=True,
    ),
    Panel(
        "Accuracy",
        "accuracy",
        (Series("history", "train_accuracy", "train"), Series("evaluations", "test_accuracy", "test")),
    ),
    Panel(
        "Jacobian norm ‖J‖_F",
        "‖J‖_F",
        (
            Series("history", "jacobian_norm_estimate", "estimate (train batch)"),
            Series("evaluations", "jacobian_norm", "exact (test subset)"),
        ),
        log_y=True,
    ),
)

# Runs side by side: one series a panel, so the legend names each run once.
COMPARE_PANELS = (
    Panel("Cross-entropy (train)", "cross-entropy", (Series("history", "ce_loss", "cross-entropy"),), log_y=True),
    Panel("Test accuracy", "accuracy", (Series("evaluations", "test_accuracy", "test accuracy"),)),
    Panel("Exact ‖J‖_F (test subset)", "‖J‖_F", (Series("evaluations", "jacobian_norm", "‖J‖_F"),), log_y=True),
)

# The forum thread's demo: records with one history entry per report (see demo.evaluation.thread).
THREAD_PANELS = (
    Panel("Exact ‖J‖_F on test data", "‖J‖_F", (Series("history", "jacobian_norm", "‖J‖_F"),), log_y=True),
    Panel("Test accuracy", "accuracy", (Series("history", "test_accuracy", "test accuracy"),)),
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


def steps_figure(runs: Sequence[Run], panels: Sequence[Panel], *, title: str | None = None) -> go.Figure:
    """One subplot per panel, metrics against the step. With one run, colours tell the series
    apart; with several, colours tell the runs apart and dashes the series (a panel with one
    series names its curves after the runs alone)."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p.title for p in panels])
    single = len(runs) == 1
    # With one run every series gets its own colour across all panels, so the shared legend
    # tells "cross-entropy" from "train" from "estimate".
    first_series = [sum(len(p.series) for p in panels[:i]) for i in range(len(panels))]
    for col, panel in enumerate(panels, start=1):
        for s_index, series in enumerate(panel.series):
            for r_index, (label, record) in enumerate(runs):
                points = [e for e in record.get(series.source, []) if _finite(e.get(series.key))]
                color = COLORS[(first_series[col - 1] + s_index if single else r_index) % len(COLORS)]
                name = series.label if single else label if len(panel.series) == 1 else f"{label} · {series.label}"
                fig.add_trace(
                    go.Scatter(
                        x=[e["step"] for e in points],
                        y=[e[series.key] for e in points],
                        name=name,
                        legendgroup=name,
                        showlegend=_first_use(fig, name),
                        mode="lines+markers" if series.source == "evaluations" else "lines",
                        line={"color": color, "dash": "solid" if single else DASHES[s_index % len(DASHES)]},
                    ),
                    row=1,
                    col=col,
                )
        fig.update_xaxes(title_text="step", row=1, col=col)
        fig.update_yaxes(title_text=panel.y_title, type="log" if panel.log_y else "linear", row=1, col=col)
        if panel.log_y:
            ys = [y for trace in fig.data if trace.xaxis == ("x" if col == 1 else f"x{col}") for y in trace.y]
            fig.update_yaxes(**log_ticks(ys), row=1, col=col)
    return _layout(fig, title)


def log_ticks(values: Sequence[float]) -> dict[str, Any]:
    """Tick values and their full labels for a log axis over `values`: 1-2-5 steps within two
    decades, 1-3 steps within three, every decade alone beyond (at most about seven labels, which
    fit a panel 200 px tall: a phone's stacked panels), each labelled as a number ("0.02", "50"),
    never plotly's bare "2" and "5" between decades. Empty (plotly's own ticks) without two
    positive values."""
    positive = [float(v) for v in values if v is not None and _finite(v) and v > 0]
    if len(positive) < 1:
        return {}
    low, high = min(positive), max(positive)
    span = high / low
    mantissas = (1,) if span > 1e3 else (1, 3) if span > 30 else (1, 2, 5) if span > 4 else (1, 1.5, 2, 3, 5, 7)
    ticks = [m * 10.0**d for d in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
             for m in mantissas]
    ticks = [t for t in ticks if low / 1.2 <= t <= high * 1.2]
    if len(ticks) < 2:
        return {}
    return {"tickvals": ticks, "ticktext": [f"{t:.3g}" for t in ticks]}


def robustness_figure(runs: Sequence[Run], attacks: Sequence[str] = ("noise", "fgsm", "pgd", "square")) -> go.Figure:
    """Accuracy against the attack's strength, one panel per attack, one curve per run."""
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
                    line={"color": COLORS[r_index % len(COLORS)]},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="σ" if strength == "sigma" else "ε", row=1, col=col)
    fig.update_yaxes(title_text="test accuracy", range=[0, 1.02], row=1, col=1)
    fig = _layout(fig, None)
    # The signs of gradient masking the runs' records hold, under the panels, in words.
    flags = [f"⚠ {label}: {flag}" for label, record in runs for flag in record.get("robustness_checks", [])]
    if flags:
        fig.add_annotation(text="<br>".join(_wrap(f, 150) for f in flags[:4]), showarrow=False, xref="paper",
                           yref="paper", x=0, y=-0.35, xanchor="left", yanchor="top", align="left",
                           font={"color": COLORS[1], "size": 11})
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
                           showscale=row == 1 and col == 2, name=f"∂f[{names[c]}]/∂x"),
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
    for col, (_, field) in enumerate(fields, start=1):
        xs, ys = field["xs"], field["ys"]
        fig.add_trace(
            go.Heatmap(x=xs, y=ys, z=field["norms"], colorscale="Viridis", zmin=0, zmax=top,
                       colorbar={"title": {"text": "‖J‖_F"}}, showscale=col == 1, name="‖J(x)‖_F"),
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
                               marker={"size": 5, "color": COLORS[(c + 3) % len(COLORS)],
                                       "line": {"width": 0.5, "color": "black"}}),
                    row=1,
                    col=col,
                )
        fig.update_xaxes(title_text="x1", range=[xs[0], xs[-1]], row=1, col=col)
        fig.update_yaxes(title_text="x2", range=[ys[0], ys[-1]], row=1, col=col)
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
    for flag, name, color in ((True, "perturbed, still correct", COLORS[2]), (False, "perturbed, wrong", COLORS[1])):
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
                           line={"color": COLORS[m_index % len(COLORS)]}),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="outputs C", type="log", row=1, col=col,
                         **log_ticks([r["num_classes"] for r in rows]))
        fig.update_yaxes(title_text=title, type="log" if log_y else "linear", row=1, col=col,
                         **(log_ticks([r[key] for r in rows]) if log_y else {}))
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def tradeoff_figure(rows: Sequence[Mapping[str, Any]], epsilon: float) -> go.Figure:
    """A sweep's trade-off: clean against robust accuracy (the Pareto front joined), and ‖J‖_F
    against the strength on log axes; one colour per regulariser. Rows as demo.engine.sweep.table gives."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"clean vs PGD accuracy at ε = {epsilon:g}",
                                                        "‖J‖_F against the strength"])
    regularizers = list(dict.fromkeys(r["regularizer"] for r in rows))
    positive = [r["penalty"] for r in rows if r["penalty"] > 0]
    # A log axis has no 0: strength 0 sits a decade below the smallest positive one, labelled "0".
    zero_at = min(positive) / 10 if positive else 1e-3
    for index, name in enumerate(regularizers):
        mine = [r for r in rows if r["regularizer"] == name]
        color = COLORS[index % len(COLORS)]
        fig.add_trace(go.Scatter(
            x=[r["test_accuracy"] for r in mine], y=[r["robust_accuracy"] for r in mine], mode="markers+text",
            text=[f"{r['penalty']:g}" for r in mine], textposition="top center", name=name, legendgroup=name,
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
    fig.update_xaxes(title_text="clean test accuracy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy under PGD", row=1, col=1)
    ticks = sorted({r["penalty"] or zero_at for r in rows})
    fig.update_xaxes(title_text="strength (λ, or ε for adversarial)", type="log", tickvals=ticks,
                     ticktext=["0" if t == zero_at and zero_at not in positive else f"{t:g}" for t in ticks],
                     row=1, col=2)
    fig.update_yaxes(title_text="mean ‖J‖_F", type="log", row=1, col=2,
                     **log_ticks([r["jacobian_norm"] for r in rows]))
    return _layout(fig, None)


def message_figure(message: str) -> go.Figure:
    """A figure that only says something (why a view is empty, what to do first)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, None).update_layout(height=EMPTY_HEIGHT)


def _layout(fig: go.Figure, title: str | None) -> go.Figure:
    fig.update_layout(
        title=title,
        height=HEIGHT,
        margin={"l": 50, "r": 20, "t": 60 if title else 40, "b": 40},
        legend={"orientation": "h", "y": -0.2},
        template="plotly_white",
        uirevision="keep",  # keep zoom across updates where the front end allows it
    )
    return fig
