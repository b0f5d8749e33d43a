"""The Gradio app: `build_demo()` composes the views of demo/app/views into one Blocks; `launch()`.

Layout: the run's controls on the left; on the right Train / Stop, the status line and one tab
per view (Training, Jacobian, Robustness, Runs, "Why did .backward() not learn?", Cost).

State: a visitor's runs live in one gr.State per session (demo.app.session), dropped
`Limits.session_ttl` seconds after its last update; nothing is kept at module level. Events that
train or measure share the concurrency_id "accelerator" (JP_CONCURRENCY at a time); the queue
holds JP_QUEUE_SIZE events (demo.app.limits).

Endpoints (api_name): train, runs, compare, download, jacobian, robustness, perturbed, thorough, sweep, thread,
cost, estimators. Stop (Train's and Sweep's) is a request the running handler answers with one last update; a
headless client can also call job.cancel().
"""

from __future__ import annotations

import importlib
import signal
import threading
from functools import partial

import gradio as gr
import torch
from starlette.middleware import Middleware

from demo.app import controls as controls_view
from demo.app import duration as duration_view
from demo.app import fairness, guard, keeper, page, server, sharing, visitors
from demo.app import limits as limits_module
from demo.app import session as sessions
from demo.app.streaming import StopRequests
from demo.app.views import cost as cost_view
from demo.app.views import estimators as estimators_view
from demo.app.views import jacobian as jacobian_view
from demo.app.views import robustness as robustness_view
from demo.app.views import runs as runs_view
from demo.app.views import sweep as sweep_view
from demo.app.views import thread as thread_view
from demo.app.views import training as training_view
from demo.budget import memory, pace
from demo.engine.config import RunConfig

__all__ = ["build_demo", "launch"]

TITLE = "Jacobian Penalty Playground"
MAX_UPLOAD = "1kb"  # nothing in the app takes a file: refuse anything larger at the door
INTRO = (
    "# Jacobian Penalty Playground\n"
    "Train a classifier with cross-entropy + λ·‖J(x)‖²<sub>F</sub>, the squared Frobenius norm of its "
    "input-output Jacobian, and see what the penalty does: smaller and smoother Jacobians, accuracy "
    "under noise and attacks, and what each estimator costs. Defaults: a few-second run on 8×8 digits."
)


def refresh_views(views: tuple, session: dict | None) -> dict:
    """New run choices and tables for every view, after the session's runs changed."""
    jacobian, robustness, runs = views
    return {
        **jacobian_view.choices_update(jacobian, session),
        **robustness_view.choices_update(robustness, session),
        **runs_view.choices_update(runs, session),
    }


def redraws(jacobian: jacobian_view.JacobianView, robustness: robustness_view.RobustnessView,
            session: gr.State) -> list[tuple]:
    """(handler, inputs, outputs) of the panels that draw runs of the session."""
    return [
        (jacobian_view.show_jacobian, [session, jacobian.run, jacobian.compare, jacobian.example],
         [jacobian.heatmap, jacobian.field, jacobian.info]),
        (robustness_view.show_examples, [session, robustness.run, robustness.attack, robustness.strength],
         [robustness.examples]),
    ]


def _no_note() -> str:
    return ""


def quietly(fn, outputs: int):
    """fn for a redraw nobody asked for: what it would refuse (no run with weights yet, after a
    Stop at step 0) leaves the panel as it is, without a toast."""
    def redraw(*values):
        try:
            return fn(*values)
        except gr.Error:
            return tuple(gr.skip() for _ in range(outputs)) if outputs > 1 else gr.skip()

    return redraw


def build_demo(space: limits_module.Limits | None = None) -> gr.Blocks:
    """The app as a gr.Blocks, queue configured; limits from the environment unless given."""
    space = space or limits_module.Limits.from_env()
    defaults = RunConfig()
    # Gradio's cache in a folder of this server's own (its components read the place as they
    # are made): removed at shutdown, and by the next server if this one is killed.
    server.use_own_cache()
    # Downloads gradio copied into its cache are deleted with their session
    # (demo.app.session.delete_files), and in any case once older than a session's time to live.
    expiry = max(1, int(space.session_ttl))
    with gr.Blocks(title=TITLE, delete_cache=(expiry, expiry)) as demo:
        session = gr.State(sessions.new_session(), time_to_live=space.session_ttl,
                           delete_callback=sessions.delete_files)
        # The visitor's token (demo.app.visitors): the key of their runs on this server.
        browser = gr.BrowserState({"visitor": ""}, storage_key="jp-visitor")
        gr.Markdown(INTRO)
        welcome = gr.Markdown("", elem_classes=["jp-hint"])
        with gr.Row():
            # "jp-settings": on a phone the page script folds it, so the tabs and results come first.
            with gr.Column(scale=1, min_width=320), gr.Accordion("Settings", open=True, elem_id="jp-settings"):
                controls = controls_view.layout(defaults)
                with gr.Accordion("Share and presets", open=False):
                    link = gr.Textbox(label="Link to these settings", interactive=False, buttons=["copy"])
                    copy = gr.Button("Copy link", size="sm")
                    presets = {name: gr.Button(name, size="sm") for name in sharing.PRESETS}
            with gr.Column(scale=3):
                buttons = training_view.layout_buttons()
                with gr.Tabs() as tabs:
                    with gr.Tab("Training", id="training"):
                        training = training_view.layout_tab(defaults, buttons)
                    jacobian = jacobian_view.layout()
                    robustness = robustness_view.layout()
                    sweep = sweep_view.layout()
                    runs = runs_view.layout()
                    thread = thread_view.layout()
                    cost = cost_view.layout()
                    estimators = estimators_view.layout()

        # Wiring
        controls_view.wire(controls)
        # One memory estimator per app: its probes describe models, and are shared by the sessions.
        estimator = memory.Estimator(space.max_memory_mb)
        # One registry of Stop requests per app: it describes running handlers, keyed by session.
        stops = StopRequests()  # one per app: Train's and Sweep's Stop
        paces = pace.Paces()  # one per app: the estimate under Steps and Train's refusal read the same
        # One per app: the latest runs of each browser session, merged across its concurrent events.
        # One per app: who each visitor is across reloads (demo.app.visitors); live sessions save
        # every finished run there at once.
        known = visitors.Visitors(ttl=space.session_ttl, capacity=space.max_sessions)
        live = sessions.LiveSessions(ttl=space.session_ttl, max_runs=space.max_runs,
                                     on_update=known.save_page_session)
        # Gradio's page runs the handlers of one trigger in the order they were attached, each after
        # the one before has finished: the quick ones go first, or they wait for a whole run or
        # measurement (the visitor's runs restored only after the load's estimate; the controls kept
        # for a reload only after a change's estimate; the welcome note cleared after the run).
        # On load: a returning visitor's runs and controls (demo.app.visitors), else the URL's
        # settings; every change of a control is kept for the next visit.
        page_handlers = visitors.PageHandlers(known, controls_view.CONFIG_FIELDS, sharing.from_url,
                                              sharing.settings_of)
        loaded = demo.load(page_handlers.load, [browser, session], [browser, session, *controls.inputs(), welcome],
                           api_visibility="private", show_progress="hidden")
        gr.on([c.change for c in controls.inputs()], page_handlers.save_controls, [browser, *controls.inputs()],
              None, api_visibility="private", show_progress="hidden", queue=False, trigger_mode="always_last")
        # The welcome note goes with the next Train.
        training.train.click(_no_note, None, welcome, api_visibility="private", queue=False, show_progress="hidden")
        train_event = training_view.wire(training, controls, session, space, estimator, stops, paces, live)
        jacobian_view.wire(jacobian, session)
        thorough_event = robustness_view.wire(robustness, session, space, live)
        runs_view.wire(runs, session)
        sweep_event = sweep_view.wire(sweep, controls, session, space, estimator, stops, paces, live)
        duration_view.wire(controls, space, paces, estimator, demo.load, training.estimate, (train_event, sweep_event))
        thread_view.wire(thread, controls, space, estimator)
        cost_view.wire(cost, controls, space, estimator)
        estimators_view.wire(estimators, controls, session, space)

        # "Copy link" writes the settings into a link; presets set controls and open a tab.
        copy.click(None, controls.inputs(), link, js=sharing.copy_link_js(), api_visibility="private") \
            .then(page_handlers.save_link, [browser, link], None, api_visibility="private", queue=False)
        targets = {**dict(zip(controls_view.CONFIG_FIELDS, controls.inputs(), strict=True)), "tab": tabs,
                   "sweep_strengths": sweep.strengths, "sweep_regularizers": sweep.regularizers,
                   "sweep_epsilon": sweep.epsilon, "sweep_status": sweep.status, "thread_numbers": thread.numbers,
                   "cost_classes": cost.classes, "cost_methods": cost.methods, "cost_note": cost.note}
        for name, button in presets.items():
            button.click(partial(sharing.preset_values, name, list(targets)), None, list(targets.values()),
                         api_visibility="private", queue=False, show_progress="hidden")

        views = (jacobian, robustness, runs)
        refreshed = list(refresh_views(views, None))  # the components whose choices follow the runs
        for event in (train_event, sweep_event, thorough_event):
            # Kept for the visitor's next visit (a reload, a closed tab), then the views follow.
            event.then(page_handlers.save_session, [browser, session], None, api_visibility="private",
                       show_progress="hidden", queue=False)
        # After a reload the Training tab shows the newest run again (status line and curves).
        loaded.then(training_view.show_newest, session, [training.status, training.curves], api_visibility="private",
                    show_progress="hidden")
        for event in (train_event, sweep_event, loaded):
            refreshed_event = event.then(partial(refresh_views, views), session, refreshed,
                                         api_visibility="private", show_progress="hidden")
            # The panels that show "the newest run" (or a chosen one) redraw for the new runs, even
            # in the tab that stayed open while they trained.
            for fn, inputs, outputs in redraws(jacobian, robustness, session):
                refreshed_event.then(quietly(fn, len(outputs)), inputs, outputs, api_visibility="private",
                                     show_progress="hidden", preprocess=False)
    # api_open=False: no REST route around the queue (POST /gradio_api/run/<api> answers 404), so
    # every event that trains or measures waits for the accelerator's concurrency slot.
    demo.queue(max_size=space.queue_size, default_concurrency_limit=space.concurrency, api_open=False)
    demo.playground_limits = space  # what launch() enforces at the door for this app
    return demo


def launch(demo: gr.Blocks, **options) -> tuple:
    """Serve on 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (or options) say
    otherwise; never a public share link. Theme and CSS are launch() arguments in Gradio 6.
    Returns gradio's (app, local url, share url); blocks until interrupted unless
    prevent_thread_lock=True.

    Around gradio it sets up what a public server needs (demo.app.server, fairness, keeper,
    guard): torch's intra-op threads (JP_TORCH_THREADS); the Gate in front of every route, with
    the queue's fairness; the session keeper; every handler's failure in plain words; the memory
    ceiling (demo.budget.memory.set_ceiling); memory handed back while idle; a quiet log. The app
    takes no uploads, so gradio's upload route is held to MAX_UPLOAD; gradio keeps a record
    (~0.2 MB) of at most JP_MAX_SESSIONS sessions."""
    space = getattr(demo, "playground_limits", None) or limits_module.Limits.from_env()
    torch.set_num_threads(space.torch_threads)
    server.quiet_torch()
    monitoring = server.monitoring_wanted()
    fair = fairness.Fairness(lambda: getattr(demo, "_queue", None), space)
    options = {
        "max_file_size": MAX_UPLOAD,
        "state_session_capacity": space.max_sessions,
        "enable_monitoring": monitoring,
        "app_kwargs": {"middleware": [Middleware(server.Gate, monitoring=monitoring,
                                                 endpoints=partial(server.signatures, demo), fairness=fair,
                                                 proxy_hops=space.proxy_hops)]},
        **options,
    }
    blocking = not options.pop("prevent_thread_lock", False)
    server.remove_stale_folders()
    if blocking and threading.current_thread() is threading.main_thread():
        # SIGTERM (a Space's restart, `kill`) and SIGHUP end the server as Ctrl-C does, so the
        # clean-up below runs.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)
    try:
        served = demo.launch(share=False, theme=gr.themes.Soft(), css=page.CSS, js=page.SCRIPT,
                             prevent_thread_lock=True, **options)
        if getattr(demo, "server_app", None) is not None:
            keeper.install(demo)
        guard.guard(demo)
        if not blocking:  # a test's server in its own process: no process-wide limits
            return served
        _preload()  # before the ceiling: a shared library mapped under it can fail to map
        memory.set_ceiling(space.memory_ceiling_mb)
        server.return_memory_when_idle(lambda: bool(fair.events()))
        demo.block_thread()
        return served
    finally:
        if blocking:
            server.remove_own_folders()
            server.remove_own_folders(server.cache_folder().parent)


# What handlers import on first use (the embedded datasets, the gradient-free attacks): loaded
# before the address-space ceiling, under which mapping a new shared library can fail.
LAZY_IMPORTS = ("sklearn.datasets", "sklearn.model_selection", "torchattacks")


def _preload() -> None:
    for name in LAZY_IMPORTS:
        importlib.import_module(name)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
