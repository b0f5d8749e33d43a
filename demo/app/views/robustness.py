"""The robustness view: accuracy against sigma (Gaussian noise) and epsilon (FGSM, PGD) for the
session's runs overlaid, and a few perturbed inputs with a run's predictions."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from demo.app import inputs, inspection, limits, plots
from demo.app import session as sessions
from demo.app.running import deadline, visitor
from demo.app.streaming import ACCELERATOR
from demo.engine.record import with_robustness
from demo.engine.train import robustness_report
from demo.evaluation.attacks import TOLERANCE
from demo.evaluation.robustness import ATTACKS, Stopped

__all__ = ["RobustnessView", "choices_update", "show_examples", "show_robustness"]

MAX_OVERLAID = 6  # runs drawn when none are chosen: the newest with robustness results
MAX_EXAMPLES = 8
DEFAULT_STRENGTH = 0.1
THOROUGH_ATTACKS = ("noise", "fgsm", "pgd", "square", "apgd")
MAX_STRENGTH = 10.0  # sigma or epsilon in input units: inputs live in [0, 1] or are of order 1


HOW_TO_READ = (
    "**How to read this.** Test accuracy (up) against the perturbation's size (across), one curve per "
    'run. Curves that stay high for longer are more robust. PGD is the honest gradient attack; Square '
    "uses no gradient, so if it does better than PGD the gradients are misleading the attacks (the run's "
    'record then lists a masking warning).'
)
HOW_TO_READ_EXAMPLES = (
    "**How to read this.** Each panel is a perturbed test input with the true label and the run's "
    "prediction; red titles mark the inputs the perturbation fooled."
)


@dataclass(frozen=True)
class RobustnessView:
    tab: gr.Tab
    runs: gr.Dropdown
    figure: gr.Plot
    run: gr.Dropdown
    attack: gr.Radio
    strength: gr.Number
    show: gr.Button
    examples: gr.Plot
    thorough: gr.Button
    findings: gr.Markdown


def show_robustness(session: dict | None, runs: list[str] | None):
    """/robustness: accuracy against attack strength for runs (ids; empty: the newest few)."""
    chosen = _chosen(session, runs)
    measured = [run for run in chosen if run["record"].get("robustness")]
    # What is not drawn is said in the figure, not in a toast: this redraws after every run, in
    # whichever tab is open (a toast about this figure popped up over the Runs tab).
    if chosen and not measured:
        return plots.message_figure("None of these runs measured robustness: it is measured when a run finishes.")
    # Like with like: an epsilon means different things on different data (pixels in [0, 1] or
    # 2-D coordinates), so only the runs of the newest chosen run's dataset share the axes.
    dataset = measured[-1]["record"]["config"]["dataset"] if measured else None
    left_out = [run for run in measured if run["record"]["config"]["dataset"] != dataset]
    ids = ", ".join(f"#{run['id']}" for run in left_out)
    note = f"Not drawn: {ids}, trained on another dataset than {dataset}" if left_out else None
    drawn = [run for run in measured if run not in left_out]
    return plots.robustness_figure(list(zip(sessions.legend_labels(drawn), (r["record"] for r in drawn), strict=True)),
                                   note=note)


def show_examples(session: dict | None, run: str, attack: str, strength: float):
    """/perturbed: the first test inputs perturbed by `attack` at `strength`, and run's predictions."""
    run = inputs.run_id(run)
    attack = inputs.choice(attack, "Perturbation", tuple(ATTACKS))
    strength = inputs.number(strength, "Strength (σ or ε)", 0, MAX_STRENGTH)
    if not (session or {}).get("runs"):  # drawn on opening the tab too: not worth an error
        return plots.message_figure("Train a run first: its perturbed test inputs appear here.")
    chosen, model = _run_with_model(session, run)
    record = chosen["record"]
    examples = inspection.perturbed(model, inspection.load_data(record), attack=attack, strength=strength,
                                 count=MAX_EXAMPLES, seed=record["config"]["seed"])
    return plots.examples_figure(examples, run=sessions.short_label(chosen))


def evaluate_thoroughly(session: dict | None, run: str, request: gr.Request = None, *,
                        live: sessions.LiveSessions | None = None, max_runs: int = 20, max_seconds: float = 0.0):
    """/thorough: the run's robustness again, with APGD and a longer Square attack on more points;
    the run's record keeps the new results and masking checks (its config says `thorough`). Returns
    (session, figure, findings): the overlay of the newest runs, the thorough one among them with
    its extra panels, and what APGD, Square and the masking checks found, in words."""
    chosen, model = _run_with_model(session, inputs.run_id(run))
    record = chosen["record"]
    try:
        report = robustness_report(model, inspection.load_data(record), record["config"]["seed"],
                                   thorough_evaluation=True, should_stop=deadline(max_seconds))
    except Stopped:
        raise inputs.refuse(f"The thorough evaluation of run #{chosen['id']} did not finish within this app's limit "
                            f"of {max_seconds:g} s; its earlier results are kept. Evaluate a smaller model, or run "
                            "`python -m demo train --thorough` on your own machine.") from None
    record = with_robustness(record, report.results, list(report.checks), thorough=True)
    chosen = {**chosen, "record": record}
    # Through the live sessions when there are (the app): a Train running beside it keeps this result.
    session = (live.with_run(visitor(request), session, chosen) if live is not None
               else sessions.with_run(session, chosen, max_runs))
    # The overlay as it was, with this run's new results: no curve of another run vanishes.
    overlay = [run for run in _chosen(session, None) if run["record"]["config"]["dataset"]
               == record["config"]["dataset"]]
    if all(r["id"] != chosen["id"] for r in overlay):
        overlay.append(chosen)
    figure = plots.robustness_figure(list(zip(sessions.legend_labels(overlay), (r["record"] for r in overlay),
                                              strict=True)), THOROUGH_ATTACKS)
    return session, figure, findings(chosen)


def findings(run: dict) -> str:
    """What the thorough evaluation found, in words: APGD and Square against PGD at each ε, and
    the masking checks."""
    results, checks = run["record"]["robustness"], run["record"].get("robustness_checks", [])
    pgd = {r["epsilon"]: r["accuracy"] for r in results.get("pgd", [])}
    lines = []
    for name, label in (("apgd", "APGD"), ("square", "Square (no gradient)")):
        rows = [r for r in results.get(name, []) if r["epsilon"] in pgd and r["epsilon"] > 0]
        if not rows:
            continue
        worst = min(rows, key=lambda r: r["accuracy"] - pgd[r["epsilon"]])
        gap = pgd[worst["epsilon"]] - worst["accuracy"]
        verdict = (f"lowered accuracy below PGD's by up to {gap:.3f} (at ε = {worst['epsilon']:g}: "
                   f"{worst['accuracy']:.3f} against {pgd[worst['epsilon']]:.3f}), so PGD alone overstated robustness"
                   if gap > TOLERANCE else f"found nothing PGD had not (within {TOLERANCE:g}): PGD's curve holds")
        lines.append(f"- **{label}** {verdict}.")
    lines.append("- **Masking checks:** " + ("; ".join(checks) if checks else
                                              "none raised (the attacks' gradients look informative)."))
    return f"**Run #{run['id']}, evaluated thoroughly.**\n" + "\n".join(lines)


def _run_with_model(session: dict | None, run: str) -> tuple[dict, Any]:
    """The chosen run and its model, or a plain refusal (no such run, no weights yet)."""
    with inputs.plain_errors():
        chosen = sessions.find_run(session, run, need_weights=True)
    if not chosen["weights"]:
        raise inputs.refuse(f"Run #{chosen['id']} has no weights yet.")
    return chosen, inspection.load_model(chosen["record"], chosen["weights"])


def choices_update(view: RobustnessView, session: dict | None) -> dict:
    runs = sessions.choices(session)
    return {view.runs: gr.update(choices=runs), view.run: gr.update(choices=[("newest run", ""), *runs])}


def _chosen(session: dict | None, runs: list[str] | None) -> list[dict]:
    runs = inputs.run_ids(runs, "Runs to overlay")
    if runs:
        with inputs.plain_errors():
            return [sessions.find_run(session, run_id) for run_id in runs]
    newest = [run for run in (session or {}).get("runs", []) if run["record"].get("robustness")]
    return newest[-MAX_OVERLAID:]


# ---------------------------------------------------------------------------------------------
# Layout


def layout() -> RobustnessView:
    with gr.Tab("Robustness") as tab:
        gr.Markdown(
            "Test accuracy under Gaussian noise (σ) and under the L∞ attacks FGSM and PGD (ε), in input "
            "units (pixels in [0, 1]). Try λ = 0 against λ = 0.01. FGSM alone overstates robustness: "
            "PGD is the honest check."
        )
        runs = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                           label=f"Runs to overlay (none chosen: the newest {MAX_OVERLAID} that measured it)")
        figure = gr.Plot(label="Accuracy against perturbation strength")
        gr.Markdown(HOW_TO_READ, elem_classes=["jp-hint"])
        with gr.Row():
            run = gr.Dropdown([("newest run", "")], value="", label="Run", allow_custom_value=True)
            attack = gr.Radio(list(ATTACKS), value="pgd", label="Perturbation")
            strength = gr.Number(DEFAULT_STRENGTH, label="Strength (σ or ε)", minimum=0)
            show = gr.Button("Show perturbed inputs", scale=0)
            thorough = gr.Button("Evaluate thoroughly", scale=0)
        gr.Markdown("*Evaluate thoroughly* attacks the chosen run again with APGD (AutoAttack's step-size-free "
                    "PGD) and a longer Square attack on more points, and adds them to the curves above; it takes "
                    "seconds to a minute. What it found is said here:", elem_classes=["jp-hint"])
        findings = gr.Markdown("")
        examples = gr.Plot(label="Perturbed test inputs and the run's predictions")
        gr.Markdown(HOW_TO_READ_EXAMPLES, elem_classes=["jp-hint"])
    return RobustnessView(tab, runs, figure, run, attack, strength, show, examples, thorough, findings)


# ---------------------------------------------------------------------------------------------
# Wiring


def wire(view: RobustnessView, session: gr.State, space: limits.Limits, live: sessions.LiveSessions):
    """The tab's events; returns the thorough evaluation's (it changes the session's runs)."""
    gr.on(
        [view.tab.select, view.runs.change],
        show_robustness,
        [session, view.runs],
        view.figure,
        api_name="robustness",
        api_description="Accuracy against sigma and epsilon, the chosen runs overlaid (empty: the newest).",
        trigger_mode="always_last",
        preprocess=False,  # values as sent, checked by demo.app.inputs
    )
    # The examples follow the chosen run, perturbation and strength, and the newest run on opening the tab.
    gr.on(
        [view.show.click, view.tab.select, view.run.input, view.attack.input, view.strength.submit],
        show_examples,
        [session, view.run, view.attack, view.strength],
        view.examples,
        api_name="perturbed",
        api_description="A few test inputs perturbed (noise, fgsm or pgd) and a run's predictions for them.",
        trigger_mode="always_last",
        preprocess=False,
    )
    return view.thorough.click(
        partial(evaluate_thoroughly, live=live, max_runs=space.max_runs, max_seconds=space.max_seconds),
        [session, view.run],
        [session, view.figure, view.findings],
        api_name="thorough",
        api_description="A run's robustness with APGD and a longer Square attack added; the masking checks.",
        preprocess=False,
        concurrency_id=ACCELERATOR,
        concurrency_limit=space.concurrency,
    )
