"""The runs view: every finished or stopped run of the session in a table, chosen runs' curves
overlaid, and a run's record (JSON, the CLI's schema) and weights (safetensors) to download."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from demo.app import inputs, plots
from demo.app import session as sessions

FILE_BOX_PX = 100  # download boxes stay small until there is a file in them

__all__ = ["RunsView", "choices_update", "compare_runs", "download", "runs_table"]


HOW_TO_READ = (
    "**How to read this.** The chosen runs' curves over training steps, one colour per run: the loss "
    'terms, accuracy and ‖J‖_F (log scale). The legend names what differs between the runs.'
)


@dataclass(frozen=True)
class RunsView:
    tab: gr.Tab
    table: gr.Dataframe
    refresh: gr.Button
    compare: gr.Dropdown
    curves: gr.Plot
    run: gr.Dropdown
    download: gr.Button
    json_file: gr.File
    weights_file: gr.File


def runs_table(session: dict | None):
    """/runs: the session's runs, one row each (id, status, config summary, results)."""
    return sessions.table(session)


def compare_runs(session: dict | None, runs: list[str] | None):
    """/compare: training curves of the chosen runs (ids; none chosen: every run) overlaid."""
    runs = inputs.run_ids(runs, "Runs to compare")
    with inputs.plain_errors():
        chosen = [sessions.find_run(session, r) for r in runs] if runs else (session or {}).get("runs", [])
    labels = sessions.legend_labels(chosen)
    return plots.steps_figure([(label, run["record"]) for label, run in zip(labels, chosen, strict=True)],
                              plots.COMPARE_PANELS)


def download(session: dict | None, run: str):
    """/download: (record JSON, weights safetensors) of run `run` ("" = newest), written to the
    session's own temporary folder."""
    run = inputs.run_id(run, "Run to download")
    with inputs.plain_errors():
        chosen = sessions.find_run(session, run)
    return sessions.write_files(session, chosen)


def choices_update(view: RunsView, session: dict | None) -> dict:
    runs = sessions.choices(session)
    return {
        view.table: gr.update(value=sessions.table(session), label=sessions.table_label(session)),
        view.compare: gr.update(choices=runs),
        view.run: gr.update(choices=[("newest run", ""), *runs]),
        # Files prepared for an earlier "newest run" would now be another run's: cleared.
        view.json_file: None,
        view.weights_file: None,
    }


# ---------------------------------------------------------------------------------------------
# Layout


def layout() -> RunsView:
    with gr.Tab("Runs") as tab:
        table = gr.Dataframe(sessions.table(None), label=sessions.TABLE_LABEL, interactive=False, wrap=True,
                             elem_id="jp-runs")
        refresh = gr.Button("Refresh", size="sm", scale=0)
        compare = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                              label="Runs to compare (none chosen: all)")
        curves = gr.Plot(label="Training curves of the chosen runs")
        gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
        with gr.Row(equal_height=True):
            run = gr.Dropdown([("newest run", "")], value="", label="Run to download", allow_custom_value=True)
            download_button = gr.Button("Prepare downloads", scale=0, min_width=180)
        with gr.Row():
            json_file = gr.File(label="Run record (JSON)", interactive=False, height=FILE_BOX_PX)
            weights_file = gr.File(label="Weights (safetensors)", interactive=False, height=FILE_BOX_PX)
    return RunsView(tab, table, refresh, compare, curves, run, download_button, json_file, weights_file)


# ---------------------------------------------------------------------------------------------
# Wiring


def _no_files() -> tuple[None, None]:
    return None, None


def wire(view: RunsView, session: gr.State) -> None:
    gr.on(
        [view.refresh.click, view.tab.select],
        runs_table,
        session,
        view.table,
        api_name="runs",
        api_description="The session's runs: config summary, status, test accuracy, ‖J‖_F, time.",
    )
    gr.on(
        [view.tab.select, view.compare.change],
        compare_runs,
        [session, view.compare],
        view.curves,
        api_name="compare",
        trigger_mode="always_last",
        preprocess=False,  # values as sent, checked by demo.app.inputs
    )
    view.run.input(_no_files, None, [view.json_file, view.weights_file], api_visibility="private",
                   queue=False, show_progress="hidden")
    view.download.click(download, [session, view.run], [view.json_file, view.weights_file], api_name="download",
                        preprocess=False)
