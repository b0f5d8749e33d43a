"""End to end in a real headless Chromium: the page loads, controls change, Train streams curves,
every tab shows the session's runs, Stop keeps the partial run, a run's record downloads.

The app runs as a subprocess, `python app.py` with GRADIO_SERVER_PORT, as `make run` and a Space
start it: that covers app.py itself (module-level `demo`, `launch()` with the theme and CSS, the
JP_* limits read from the environment) and keeps the server's threads apart from the test
process. One server, one browser and one page (one gradio session) serve the whole module; runs
are short (300 steps on digits and moons). Any uncaught page error, console error or server
traceback fails the test during which it happened.

Screenshots of the main views go to a temporary folder, or to docs/ when UPDATE_SCREENSHOTS=1
(`UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/app/test_browser.py`), so `make test` leaves
the tree clean.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from apphelpers import url_from_log
from PIL import Image

from demo.app.page import NARROW_PX

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(
        f"browser tests need Debian's chromium at {CHROMIUM}: `apt-get install chromium` "
        "(`make test` run as root installs it), or set CHROMIUM to a Chromium binary",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")
expect = sync_api.expect

# Quiet on a closed network: no update checks, sync or component downloads.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
PHONE = {"width": 420, "height": 860}
SERVER_START_S = 120  # importing torch and gradio on a loaded 2-core machine
RUN_MS = 90_000  # ms: one 300-step run with robustness, on a loaded machine
VIEW_MS = 60_000  # ms: a view's figure after a click
STEPS = 300
LONG_STEPS = 20_000  # a run that Stop must end (JP_MAX_SECONDS bounds it if Stop fails)
SHOTS = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else None


# ---------------------------------------------------------------------------------------------
# Fixtures: one server, one browser, one page for the module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` on loopback, the port gradio picks (7860 or the next free one, read from
    its log); yields (url, log path). Fails with the log if it dies."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",  # no calls out of a closed network
        # Bounds a run that Stop fails to end; large enough that the long run fits the estimate on a
        # busy machine (a run that cannot finish within it is refused before it starts).
        "JP_MAX_SECONDS": "600",
        # Every page here comes from 127.0.0.1: one client address, which the queue's per-client
        # share would otherwise hold to half the queue (a Space sees each visitor's own address).
        "JP_CLIENT_EVENTS": "1000",
        "JP_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"python app.py exited with {proc.returncode}:\n{log_path.read_text()}")
            url = url_from_log(log_path.read_text())
            try:
                if url is not None:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"python app.py did not answer within {SERVER_START_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def problems():
    """Page errors and console errors, collected as they happen."""
    return []


@pytest.fixture(scope="module")
def page(browser, server, problems):
    url, _ = server
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True, device_scale_factor=1)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: _console(message, url, problems))
    page.goto(url)
    expect(train_button(page)).to_be_visible(timeout=VIEW_MS)
    yield page
    context.close()


def _console(message, url: str, problems: list[str]) -> None:
    """Console errors fail a test, except a resource from another host failing to load: on a
    closed network (CI, this machine) third-party hosts are unreachable, which says nothing about
    the app. The app's own resources failing, and every other console error, count."""
    if message.type != "error":
        return
    source = message.location.get("url", "")
    if message.text.startswith("Failed to load resource") and urlparse(source).netloc != urlparse(url).netloc:
        return
    problems.append(f"console error: {message.text} ({source})")


@pytest.fixture(autouse=True)
def no_errors(request, problems):
    """Each test fails on a page or console error, or a server traceback, that happened during it."""
    if "page" not in request.fixturenames:
        yield
        return
    _, log_path = request.getfixturevalue("server")
    seen, log_start = len(problems), log_path.stat().st_size
    yield
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(log_start)
        new_log = log.read()
    assert problems[seen:] == []
    assert "Traceback" not in new_log, new_log


# ---------------------------------------------------------------------------------------------
# Helpers: locators by visible labels and roles (the app sets no elem_id)


def train_button(page):
    return page.get_by_role("button", name="Train", exact=True)


def status(page):
    return page.locator(".jp-status")


def control(page, label: str):
    """A control of the left column (tab contents reuse some labels, e.g. "Steps")."""
    return page.get_by_label(label, exact=True).filter(visible=True).first


def estimate(page):
    return page.locator(".jp-estimate")


def settled(page, prefix: str) -> None:
    """Wait until the line under Steps gives its estimate for `prefix` ("digits · mlp", "· lenet"):
    not the "Measuring…" line of its probe, after which the page may still fit Steps."""
    expect(estimate(page)).to_contain_text(re.compile(re.escape(prefix) + r".* \d+ steps: about"), timeout=RUN_MS)


def open_tab(page, name: str):
    tab = page.get_by_role("tab", name=name, exact=True)
    more = page.get_by_role("button", name="More tabs")
    # Gradio lays the tab bar out after the page loads (it measures which tabs fit): wait for it.
    expect(tab.or_(more).filter(visible=True).first).to_be_visible(timeout=VIEW_MS)
    if tab.is_visible():
        tab.click()
    else:  # a narrow page keeps some tabs behind "More tabs"
        more.click()
        page.locator(".overflow-dropdown button", has_text=name).click()
    panel = page.get_by_role("tabpanel").filter(visible=True)
    expect(panel).to_have_count(1)
    return panel


def block(scope, label: str):
    """The innermost component block that shows the label `label`."""
    return scope.locator(".block").filter(has=scope.page.get_by_text(label, exact=True)).last


def plot(scope, label: str):
    """The plotly chart inside the gr.Plot labelled `label`."""
    return block(scope, label).locator(".js-plotly-plot")


def expect_drawn(chart, min_traces: int = 1) -> None:
    """A rendered plotly figure: its SVG and at least `min_traces` traces (lines, markers, heatmaps)."""
    expect(chart.locator(".main-svg").first).to_be_visible(timeout=VIEW_MS)
    traces = chart.locator(".scatterlayer .trace, .heatmaplayer .hm, .contourlayer .contour, .barlayer .trace")
    expect(traces.nth(min_traces - 1)).to_be_attached(timeout=VIEW_MS)


def choose(page, scope, label: str, *options: str) -> None:
    """Pick the options whose text starts with each of `options` in the dropdown labelled `label`."""
    box = scope.get_by_label(label, exact=True)
    box.click()
    listbox = page.locator(f"[id='{box.get_attribute('aria-controls')}']")  # this dropdown's own list
    for option in options:
        listbox.get_by_role("option", name=re.compile("^" + re.escape(option))).click()
    box.blur()  # closes the list; the next click opens it again


TEXT_BOXES = """chart => [...chart.querySelectorAll(
    '.infolayer .annotation-text, .xtick text, .ytick text, .g-xtitle text, .g-ytitle text, .gtitle')]
  .filter(e => e.textContent.trim() && e.getBoundingClientRect().width > 0)
  .map(e => { const r = e.getBoundingClientRect();
              return {x: r.x, y: r.y, w: r.width, h: r.height, text: e.textContent}; })"""


def assert_readable(chart) -> None:
    """No two texts of a figure (panel titles, tick labels, axis titles) overlap on screen."""
    boxes = chart.evaluate(TEXT_BOXES)
    assert boxes, "the figure has no text"
    clashes = [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
               if a["x"] < b["x"] + b["w"] - 1 and b["x"] < a["x"] + a["w"] - 1
               and a["y"] < b["y"] + b["h"] - 1 and b["y"] < a["y"] + a["h"] - 1]
    assert clashes == []


def assert_level(chart) -> None:
    """Every x tick label of a figure stands level: none turned by plotly's automatic angle (on a
    phone, 90° labels read sideways down a stacked panel)."""
    expect(chart.locator(".xtick text").first).to_be_attached(timeout=VIEW_MS)
    transforms = chart.evaluate("gd => [...gd.querySelectorAll('.xtick text')]"
                                ".map(t => (t.getAttribute('transform') || '') + ' ' + t.textContent)")
    tilted = [t for t in transforms if re.search(r"rotate\((?!0[ ,)])", t)]
    assert tilted == [], tilted


def last_test_accuracy(chart) -> float:
    """The last point of the run's "test" curve, as the browser drew it (the run is drawn first; a
    λ = 0 reference beside it has its own, prefixed curves)."""
    return chart.evaluate("gd => { const t = gd.data.find(t => t.name === 'test' || t.name.endsWith(' · test'));"
                          " return t.y[t.y.length - 1]; }")


def run_table(page) -> list[dict[str, str]]:
    grid = page.get_by_role("grid", name="This session's runs")
    header = [text.strip() for text in grid.get_by_role("columnheader").all_inner_texts()]
    rows = grid.get_by_role("row").all()[1:]
    return [dict(zip(header, [t.strip() for t in row.get_by_role("gridcell").all_inner_texts()], strict=True))
            for row in rows]


def train(page, *, run: int, dataset: str | None = None, penalty: str | None = None, preset: str | None = None,
          steps: int = STEPS, robustness: bool = True) -> None:
    """Set the controls, press Train, wait for run #`run` to finish."""
    open_tab(page, "Training")
    if dataset:
        choose(page, page, "Dataset", dataset)
        # The page fits Steps to a new dataset (a measured probe) before our own count goes in.
        settled(page, f"{dataset} · ")
    if preset is not None:  # the λ preset buttons set the field in the browser
        page.get_by_role("button", name=preset, exact=True).click()
        expect(control(page, "Penalty weight λ")).to_have_value(preset)
    if penalty is not None:
        control(page, "Penalty weight λ").fill(penalty)
    control(page, "Steps").fill(str(steps))
    control(page, "Measure robustness at the end (noise, FGSM, PGD)").set_checked(robustness)
    train_button(page).click()
    expect(status(page)).to_contain_text(re.compile(rf"Run #{run} .*Finished {steps} steps"), timeout=RUN_MS)
    expect(train_button(page)).to_be_enabled(timeout=VIEW_MS)  # the event and its .then are done


def screenshot(page, scope, name: str, folder: Path, *, top=None) -> Path:
    """A PNG of the tab bar and the open tab (from `top`'s top edge if given), or of the viewport
    when scope is the page; reduced to a 256-colour palette, which keeps it near 100 KB."""
    path = (SHOTS or folder) / f"screenshot-{name}.png"
    page.mouse.move(0, 0)  # no hover highlight on the button just clicked
    page.wait_for_timeout(500)  # plotly's transitions settle
    page.evaluate("window.scrollTo(0, 0)")  # bounding boxes in page coordinates
    if scope is page:
        page.screenshot(path=path)
    else:
        panel = scope.bounding_box()
        y = (top or page.get_by_role("tablist")).bounding_box()["y"] - 8
        bottom = panel["y"] + panel["height"] + 8
        clip = {"x": panel["x"] - 8, "y": y, "width": panel["width"] + 16, "height": bottom - y}
        page.screenshot(path=path, clip=clip, full_page=True)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def runs(page, problems) -> dict[str, int]:
    """Three runs trained through the UI: #1 digits λ=0 (a preset button), #2 digits λ=0.01
    (typed), #3 moons λ=0.01 (the dataset dropdown). Tests that need runs share them."""
    train(page, run=1, dataset="digits", preset="0")
    train(page, run=2, penalty="0.01")
    train(page, run=3, dataset="moons")
    assert problems == []
    return {"plain": 1, "penalised": 2, "moons": 3}


# ---------------------------------------------------------------------------------------------
# Tests


def test_training_streams_curves_and_the_2d_field(page, runs, shots):
    panel = open_tab(page, "Training")
    expect(status(page)).to_contain_text(re.compile(r"Run #3 on cpu.*Finished 300 steps.*test accuracy 0\.\d+"))
    curves = plot(panel, "Training curves")
    expect_drawn(curves, min_traces=4)  # cross-entropy, λ × R, train and test accuracy, ...
    for title in ("Loss terms", "Accuracy"):
        expect(curves.get_by_text(title, exact=True)).to_be_visible()
    assert_readable(curves)
    field = plot(panel, "‖J(x)‖_F over the input plane, decision boundary and test points")
    expect_drawn(field, min_traces=2)  # the heatmap and the test points (moons is 2-D)
    assert_readable(field)
    screenshot(page, page, "app", shots)
    screenshot(page, panel, "training", shots)


def test_jacobian_view_compares_two_runs(page, runs, shots):
    panel = open_tab(page, "Jacobian")
    choose(page, panel, "Run", "#2 λ=0.01")
    choose(page, panel, "Compare with", "#1 λ=0 ")
    panel.get_by_role("button", name="Show", exact=True).click()
    expect(panel.get_by_text(re.compile(r"#1 λ=0 projection mlp: predicts"))).to_be_visible(timeout=VIEW_MS)
    expect(panel.get_by_text(re.compile(r"#2 λ=0.01 projection mlp: predicts"))).to_be_visible()
    expect_drawn(plot(panel, "Jacobian of the logits"), min_traces=2)
    assert_readable(plot(panel, "Jacobian of the logits"))
    screenshot(page, panel, "jacobian", shots)


def test_robustness_view_overlays_runs_and_shows_perturbed_inputs(page, runs, shots):
    panel = open_tab(page, "Robustness")
    choose(page, panel, "Runs to overlay (none chosen: the newest 6 that measured it)", "#1 λ=0 ", "#2 λ=0.01")
    figure = plot(panel, "Accuracy against perturbation strength")
    expect_drawn(figure, min_traces=6)  # two runs x (noise, FGSM, PGD)
    expect(figure.locator(".legendtext", has_text="#1 λ=0 projection")).to_be_attached()
    expect(figure.locator(".legendtext", has_text="#2 λ=0.01 projection")).to_be_attached()
    assert_readable(figure)
    # The perturbed inputs follow the chosen run, without a click on "Show perturbed inputs".
    choose(page, panel, "Run", "#2 λ=0.01")
    examples = plot(panel, "Perturbed test inputs and the run's predictions")
    expect(examples.locator(".gtitle")).to_contain_text("#2 λ=0.01", timeout=VIEW_MS)
    expect_drawn(examples)
    assert_readable(examples)
    screenshot(page, panel, "robustness", shots)


def test_runs_view_lists_and_compares_the_runs(page, runs, shots):
    panel = open_tab(page, "Runs")
    expect(page.get_by_role("grid", name="This session's runs").get_by_role("row")).to_have_count(4)
    table = run_table(page)
    assert [(r["run"], r["status"], r["dataset"], r["λ"]) for r in table[:3]] == [
        ("1", "completed", "digits", "0"), ("2", "completed", "digits", "0.01"), ("3", "completed", "moons", "0.01")
    ]
    expect_drawn(plot(panel, "Training curves of the chosen runs"), min_traces=3)
    screenshot(page, panel, "runs", shots)


def test_thread_view_shows_the_zero_gradient(page, shots):
    choose(page, page, "Dataset", "digits")  # the panel trains the controls' dataset and architecture
    panel = open_tab(page, "Why did .backward() not learn?")
    panel.get_by_label("Steps", exact=True).fill("20")
    panel.get_by_label("Plain warm-up steps first", exact=True).fill("50")
    run_both = panel.get_by_role("button", name="Run both")
    run_both.click()
    row = panel.get_by_role("row").filter(has=page.get_by_role("cell", name="‖d penalty / d parameters‖"))
    expect(row).to_be_visible(timeout=VIEW_MS)
    expect(row.get_by_role("cell").nth(1)).to_have_text("0")  # the thread's penalty: no gradient at all
    expect_drawn(plot(panel, "The thread's approach against ours"), min_traces=2)
    expect(run_both).to_be_enabled(timeout=VIEW_MS)
    screenshot(page, panel, "thread", shots, top=run_both)  # from its inputs down: no code listing


def measure_cost(page, classes_off: tuple[str, ...]):
    """Measure on the Cost tab without the C values `classes_off`; check that the ms and the ×
    columns agree: both come from the same medians, × = ms / the plain step's ms at that C."""
    panel = open_tab(page, "Cost")
    for classes in classes_off:
        panel.get_by_label(classes, exact=True).uncheck()
    measure = panel.get_by_role("button", name="Measure")
    measure.click()
    measurements = panel.get_by_role("grid", name="Measurements").get_by_role("row")
    kept = 3 - len(classes_off)
    expect(measurements).to_have_count(1 + kept * 5, timeout=VIEW_MS)  # header + kept C x 5 kinds of step
    expect_drawn(plot(panel, "Cost of a training step against C"), min_traces=5)
    assert_readable(plot(panel, "Cost of a training step against C"))
    expect(measure).to_be_enabled(timeout=VIEW_MS)
    grid = panel.get_by_role("grid", name="Measurements")
    header = [text.strip() for text in grid.get_by_role("columnheader").all_inner_texts()]
    rows = [dict(zip(header, [c.strip() for c in row.get_by_role("gridcell").all_inner_texts()], strict=True))
            for row in grid.get_by_role("row").all()[1:]]
    for row in rows:
        plain = next(r for r in rows if r["method"] == "plain" and r["C"] == row["C"])
        assert float(row["× plain step"]) == pytest.approx(float(row["ms per step"]) / float(plain["ms per step"]),
                                                         abs=0.011, rel=0.01)
    expect(panel.get_by_text(re.compile("so the two columns agree"))).to_be_visible()
    return panel


def test_cost_view_measures_the_estimators(page, shots):
    panel = measure_cost(page, ("1000",))  # exact at C = 1000 takes long on a CPU
    screenshot(page, panel, "cost", shots)


def test_stop_ends_a_long_run_and_keeps_it_with_the_numbers_the_curves_show(page, runs):
    panel = open_tab(page, "Training")
    control(page, "Steps").fill(str(LONG_STEPS))
    control(page, "Measure robustness at the end (noise, FGSM, PGD)").uncheck()
    train_button(page).click()
    expect(status(page)).to_contain_text(re.compile(rf"Run #4: step [1-9]\d* of {LONG_STEPS}"), timeout=RUN_MS)
    # Past an evaluation: the status line then carries numbers (on a busy machine, seconds).
    expect(status(page)).to_contain_text("test accuracy", timeout=RUN_MS)
    page.get_by_role("button", name="Stop", exact=True).click(timeout=VIEW_MS)
    expect(status(page)).to_contain_text(re.compile(r"Run #4 .*Stopped at step \d+"), timeout=VIEW_MS)
    text = status(page).inner_text()
    step = int(re.search(r"Stopped at step (\d+)", text).group(1))
    # The status line and the curves come from one record: the same last evaluation.
    shown = float(re.search(r"test accuracy (\d\.\d+)", text).group(1))
    assert shown == pytest.approx(last_test_accuracy(plot(panel, "Training curves")), abs=5e-4)

    # The Runs table keeps the run, stopped at that step, and it trains no further.
    open_tab(page, "Runs")
    refresh = page.get_by_role("button", name="Refresh", exact=True)
    refresh.click()
    expect(page.get_by_role("grid", name="This session's runs").get_by_role("row")).to_have_count(5,
                                                                                                  timeout=VIEW_MS)
    row = {r["run"]: r for r in run_table(page)}["4"]
    assert (row["status"], int(row["steps"])) == ("stopped", step)
    page.wait_for_timeout(1500)
    refresh.click()
    page.wait_for_timeout(500)
    assert int({r["run"]: r for r in run_table(page)}["4"]["steps"]) == step


def test_download_a_run_record(page, runs, tmp_path):
    panel = open_tab(page, "Runs")
    choose(page, panel, "Run to download", "#2 λ=0.01")
    panel.get_by_role("button", name="Prepare downloads").click()
    link = block(panel, "Run record (JSON)").get_by_role("link")
    expect(link).to_have_attribute("download", "run-2.json", timeout=VIEW_MS)
    with page.expect_download() as download:
        link.click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    record = json.loads(path.read_text())
    assert {"config", "history", "final", "robustness"} <= set(record)
    assert (record["config"]["dataset"], record["config"]["penalty"], record["status"]) == ("digits", 0.01, "completed")
    assert record["history"][-1]["step"] == STEPS and record["final"]["steps"] == STEPS
    assert 0.5 < record["final"]["test_accuracy"] <= 1
    assert all(record["robustness"][kind] for kind in ("noise", "fgsm", "pgd"))


def test_sweep_tab_streams_runs_and_draws_the_trade_off(page, runs, shots):
    open_tab(page, "Training")
    control(page, "Steps").fill(str(STEPS))
    panel = open_tab(page, "Sweep")
    panel.get_by_label("Strengths (λ; ε for adversarial training)", exact=True).fill("0, 0.1")
    panel.get_by_role("button", name="Run sweep", exact=True).click()
    expect(panel.locator(".jp-sweep-status")).to_contain_text("Run 1 of 2", timeout=RUN_MS)  # it streams
    expect(panel.locator(".jp-sweep-status")).to_contain_text("Run 2 of 2 (jacobian at strength 0.1) finished. "
                                                         "The sweep is complete.", timeout=2 * RUN_MS)
    rows = panel.get_by_role("grid", name="The sweep's runs").get_by_role("row")
    expect(rows).to_have_count(3, timeout=VIEW_MS)
    expect_drawn(plot(panel, "Trade-off"), min_traces=3)
    expect(panel.get_by_text(re.compile("^How to read this"))).to_be_visible()
    screenshot(page, panel, "sweep", shots)
    # The sweep's runs joined the session: the Runs table lists them after the earlier ones.
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh", exact=True).click()
    expect(page.get_by_role("grid", name="This session's runs").get_by_role("row")).to_have_count(1 + 6,
                                                                                                  timeout=VIEW_MS)


def test_a_shared_link_restores_the_controls_and_presets_open_their_tab(browser, server, problems):
    url, _ = server
    context = browser.new_context(viewport=VIEWPORT)
    shared = context.new_page()
    shared.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    shared.on("console", lambda message: _console(message, url, problems))
    try:
        shared.goto(f"{url}?dataset=moons&penalty=0.1&seed=7&steps=123&method=jvp")
        expect(control(shared, "Seed")).to_have_value("7", timeout=VIEW_MS)
        expect(control(shared, "Steps")).to_have_value("123")
        expect(control(shared, "Penalty weight λ")).to_have_value("0.1")
        expect(control(shared, "Dataset")).to_have_value("moons")
        expect(shared.get_by_role("radio", name="jvp", exact=True)).to_be_checked()
        shared.get_by_text("Share and presets", exact=True).click()
        control(shared, "Seed").fill("8")
        shared.get_by_role("button", name="Copy link", exact=True).click()
        # A read-only textbox carries no accessible name: found by its block's label.
        link = shared.locator(".block").filter(has=shared.get_by_text("Link to these settings", exact=True)).last \
            .locator("textarea, input").first
        expect(link).to_have_value(re.compile(r"dataset=moons.*seed=8"), timeout=VIEW_MS)
        assert "seed=8" in shared.url  # the address bar holds the same link
        # The link opens a page with the same settings: a round trip.
        shared.goto(link.input_value())
        expect(control(shared, "Seed")).to_have_value("8", timeout=VIEW_MS)
        # A preset sets the controls and opens its tab with its own settings.
        shared.get_by_text("Share and presets", exact=True).click()
        shared.get_by_role("button", name="compare regularisers", exact=True).click()
        expect(shared.get_by_role("tab", name="Sweep", exact=True)).to_have_attribute("aria-selected", "true",
                                                                                       timeout=VIEW_MS)
        for name in ("jacobian", "input_gradient", "adversarial", "spectral", "weight_decay"):
            expect(shared.get_by_label(name, exact=True)).to_be_checked()
        expect(control(shared, "Dataset")).to_have_value("moons")
    finally:
        context.close()


def test_the_jacobian_tab_survives_a_change_of_dataset_and_the_page_keeps_training(page, runs):
    """The sequence that once wedged the page: the Jacobian tab on a digits run (its 2-D field panel
    an empty message), then on a moons run (a field with a colour bar), then Train again."""
    panel = open_tab(page, "Jacobian")
    choose(page, panel, "Run", "#1 λ=0 ")  # digits
    panel.get_by_role("button", name="Show", exact=True).click()
    expect(panel.get_by_text(re.compile(r"#1 λ=0 projection mlp: predicts")).first).to_be_visible(timeout=VIEW_MS)
    choose(page, panel, "Run", "#3 λ=0.01")  # moons
    choose(page, panel, "Compare with", "#1 λ=0 ")
    panel.get_by_role("button", name="Show", exact=True).click()
    expect_drawn(plot(panel, "‖J(x)‖_F over the input plane (2-D data)"), min_traces=2)
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh", exact=True).click()
    page.wait_for_timeout(1000)
    next_run = len(run_table(page)) + 1
    train(page, run=next_run, dataset="digits", steps=STEPS, robustness=False)
    expect(status(page)).to_contain_text(f"Run #{next_run}")
    # A penalised run's curves show the session's λ = 0 run of the same model beside it (the
    # newest such run: #1, or a sweep's baseline when the sweep ran first).
    names = plot(open_tab(page, "Training"), "Training curves").evaluate("gd => gd.data.map(t => t.name)")
    assert any(re.match(r"λ = 0 \(run #\d+\)", name) for name in names), names
    # Every panel follows the runs: files prepared for an earlier run are gone from Runs, and the
    # perturbed inputs are the new newest run's.
    panel = open_tab(page, "Runs")
    expect(block(panel, "Run record (JSON)").get_by_role("link")).to_have_count(0)
    panel = open_tab(page, "Robustness")
    choose(page, panel, "Run", "newest run")
    examples = plot(panel, "Perturbed test inputs and the run's predictions")
    expect(examples.locator(".gtitle")).to_contain_text(f"#{next_run} ", timeout=VIEW_MS)


def new_page(browser, server, problems, viewport, query: str = ""):
    url, _ = server
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: _console(message, url, problems))
    page.goto(url + query)
    expect(train_button(page)).to_be_visible(timeout=VIEW_MS)
    return context, page


def in_view(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= page.viewport_size["height"]


def assert_presets_in_one_row(page) -> None:
    """The λ presets (0 ... 1) stand side by side: none wraps onto a row of its own."""
    buttons = page.locator(".jp-presets button")
    expect(buttons.first).to_be_visible(timeout=VIEW_MS)
    texts = [t.strip() for t in buttons.all_inner_texts()]
    tops = buttons.evaluate_all("bs => bs.map(b => Math.round(b.getBoundingClientRect().top))")
    assert texts[-1] == "1" and len(texts) >= 6 and len(set(tops)) == 1, (texts, tops)


def test_on_a_phone_train_stays_in_reach_and_panels_stack(browser, server, problems, shots):
    context, page = new_page(browser, server, problems, PHONE)
    try:
        # The Settings fold on a phone: the tabs and their results come first, not 3000 px down.
        settings = page.locator("#jp-settings > button.label-wrap")
        expect(settings).not_to_have_class(re.compile(r"\bopen\b"), timeout=VIEW_MS)
        assert page.get_by_role("tablist").first.bounding_box()["y"] < 1.5 * PHONE["height"]
        assert in_view(page, train_button(page))  # at the top of a long single column ...
        # ... with the estimate beside it, in short (its whole line is in the folded Settings)
        brief = page.locator("#jp-estimate-brief")
        expect(brief).to_contain_text(re.compile(r"Estimated: about [\d.]+ s"), timeout=RUN_MS)
        assert in_view(page, brief)
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        assert in_view(page, train_button(page)) and in_view(page, brief)  # ... and at its bottom
        settings.click()  # one tap opens them
        assert_presets_in_one_row(page)
        control(page, "Steps").fill(str(STEPS))
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(rf"Run #1 .*Finished {STEPS} steps"), timeout=RUN_MS)
        curves = plot(open_tab(page, "Training"), "Training curves")
        expect_drawn(curves, min_traces=4)
        # One panel per row, full width: every x axis spans the figure, each y axis its own band.
        domains = curves.evaluate("""gd => Object.keys(gd._fullLayout).filter(k => /^[xy]axis\\d*$/.test(k))
            .map(k => [k, gd._fullLayout[k].domain])""")
        assert sorted(d for k, d in domains if k.startswith("x")) == [[0, 1]] * 3
        bands = sorted(d for k, d in domains if k.startswith("y"))
        assert all(low[1] <= high[0] for low, high in zip(bands, bands[1:], strict=False))
        assert_readable(curves)
        assert_level(curves)
        page.evaluate("window.scrollTo(0, 0)")
        screenshot(page, page, "phone", shots)
        panel = open_tab(page, "Robustness")
        for label in ("Accuracy against perturbation strength", "Perturbed test inputs and the run's predictions"):
            expect_drawn(plot(panel, label))
            assert_readable(plot(panel, label))
        # Side by side, plotly turned these labels 90°, and kept that angle once stacked.
        page.wait_for_timeout(1000)  # the stacked figure's own redraws (its margins) are done
        assert_level(plot(panel, "Accuracy against perturbation strength"))
        panel = measure_cost(page, ("100", "1000"))  # the Cost tab's ms and × agree on a phone too
        assert_level(plot(panel, "Cost of a training step against C"))
    finally:
        context.close()


def test_settings_say_how_long_a_run_takes_and_refusals_leave_the_page_as_it_was(browser, server, problems,
                                                                                 tmp_path):
    context, page = new_page(browser, server, problems, VIEWPORT)
    try:
        about = r"about [\d.]+ s( to [\d.]+ s)? here on the"
        expect(estimate(page)).to_contain_text(re.compile(rf"digits · mlp · 1500 steps: {about}"), timeout=VIEW_MS)
        expect(page.locator("#jp-estimate-brief")).to_be_hidden()  # a phone's: here the line is in view
        assert_presets_in_one_row(page)
        # Another architecture: Steps becomes the count that fits a short run, measured here.
        choose(page, page, "Architecture", "lenet")
        settled(page, "· lenet ·")
        fitted = int(re.search(r"lenet · (\d+) steps", estimate(page).inner_text()).group(1))
        expect(control(page, "Steps")).to_have_value(str(fitted))
        # A count the visitor typed stays theirs.
        control(page, "Steps").fill("200")
        expect(estimate(page)).to_contain_text("lenet · 200 steps", timeout=VIEW_MS)
        choose(page, page, "Architecture", "mlp")
        expect(estimate(page)).to_contain_text("mlp · 200 steps", timeout=VIEW_MS)
        expect(control(page, "Steps")).to_have_value("200")
        # A count typed while the page still measures a new architecture (seconds, for resnet) wins
        # over the fitted one.
        control(page, "Steps").fill(str(fitted))  # the page's own suggestion again
        choose(page, page, "Architecture", "resnet")
        control(page, "Steps").fill("25")
        expect(estimate(page)).to_contain_text("resnet · 25 steps", timeout=RUN_MS)
        expect(control(page, "Steps")).to_have_value("25")
        choose(page, page, "Architecture", "mlp")

        # The synthetic set's class count is a control, shown for that set only.
        classes = page.get_by_label("Classes of the synthetic set", exact=True)
        expect(classes).to_be_hidden()
        choose(page, page, "Dataset", "synthetic")
        settled(page, "synthetic · mlp")
        classes.fill("30")
        control(page, "Steps").fill("10")
        control(page, "Measure robustness at the end (noise, FGSM, PGD)").uncheck()
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(r"Run #1 .*Finished 10 steps"), timeout=RUN_MS)

        # A refused Train: a toast in plain words; the status line and curves stay readable.
        control(page, "Steps").fill("-3")
        train_button(page).click()
        expect(page.locator(".toast-body")).to_contain_text("steps must be between 1", timeout=VIEW_MS)
        expect(page.locator(".wrap span.error").filter(visible=True)).to_have_count(0)
        expect(status(page)).to_contain_text("Run #1")

        # The record says 30 classes; the Jacobian's titles stay apart however many there are.
        panel = open_tab(page, "Runs")
        panel.get_by_role("button", name="Prepare downloads").click()
        link = block(panel, "Run record (JSON)").get_by_role("link")
        expect(link).to_have_attribute("download", "run-1.json", timeout=VIEW_MS)
        with page.expect_download() as download:
            link.click()
        path = tmp_path / "run-1.json"
        download.value.save_as(path)
        record = json.loads(path.read_text())
        assert record["config"]["num_classes"] == record["dataset"]["num_classes"] == 30
        panel = open_tab(page, "Jacobian")
        heatmap = plot(panel, "Jacobian of the logits")
        expect_drawn(heatmap, min_traces=2)
        assert_readable(heatmap)
        # Trained while this tab stays open, the next run replaces the newest one in it: no click.
        expect(panel.get_by_text(re.compile(r"#1 λ=0.01 projection mlp: predicts"))).to_be_visible(timeout=VIEW_MS)
        control(page, "Steps").fill("10")
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(r"Run #2 .*Finished 10 steps"), timeout=RUN_MS)
        expect(panel.get_by_text(re.compile(r"#2 λ=0.01 projection mlp: predicts"))).to_be_visible(timeout=VIEW_MS)
    finally:
        context.close()


def show_settings(page) -> None:
    """On a phone the Settings start folded (the page script folds them, so the tabs come first):
    once folded, one tap opens them. On a wide page they are open already."""
    if page.viewport_size["width"] > NARROW_PX:
        return
    settings = page.locator("#jp-settings > button.label-wrap")
    expect(settings).not_to_have_class(re.compile(r"\bopen\b"), timeout=VIEW_MS)
    settings.click()
    expect(control(page, "Steps")).to_be_visible(timeout=VIEW_MS)


WIDTHS = pytest.mark.parametrize("viewport", [VIEWPORT, PHONE], ids=["1400px", "420px"])


def test_a_stop_pressed_with_nothing_running_does_not_stop_the_next_run(browser, server, problems):
    """Stop counts for a run still waiting its turn only if Train was pressed after the last run
    ended. The press must be noted when Train is pressed: noted once the run had ended (where the
    page's order of handlers had put it), it made an idle Stop stop the next run at step 0."""
    context, page = new_page(browser, server, problems, VIEWPORT)
    try:
        control(page, "Steps").fill("10")
        control(page, "Measure robustness at the end (noise, FGSM, PGD)").uncheck()
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(r"Run #1 .*Finished 10 steps"), timeout=RUN_MS)
        expect(train_button(page)).to_be_enabled(timeout=VIEW_MS)
        page.wait_for_timeout(1000)  # whatever the page sends after the run has arrived
        page.get_by_role("button", name="Stop", exact=True).click(timeout=VIEW_MS)  # nothing runs
        page.wait_for_timeout(1000)
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(r"Run #2 .*(Finished|Stopped)"), timeout=RUN_MS)
        expect(status(page)).to_contain_text("Finished 10 steps")
    finally:
        context.close()


@WIDTHS
def test_a_reload_keeps_the_runs_and_the_controls_as_they_were_on_screen(browser, server, problems, viewport):
    context, page = new_page(browser, server, problems, viewport)
    try:
        show_settings(page)
        control(page, "Steps").fill("10")
        control(page, "Measure robustness at the end (noise, FGSM, PGD)").uncheck()
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(r"Run #1 .*Finished 10 steps"), timeout=RUN_MS)
        expect(train_button(page)).to_be_enabled(timeout=VIEW_MS)
        control(page, "Seed").fill("42")  # changed on screen after the run
        control(page, "Seed").blur()
        page.wait_for_timeout(500)  # the change reaches the server (no queue: at once)
        page.reload()
        expect(train_button(page)).to_be_visible(timeout=VIEW_MS)
        expect(page.get_by_text("Welcome back: your 1 run(s) are as you left them.")).to_be_visible(timeout=VIEW_MS)
        show_settings(page)
        expect(control(page, "Seed")).to_have_value("42", timeout=VIEW_MS)
        expect(control(page, "Steps")).to_have_value("10")
        # The note goes with the next Train while that run trains, not once it has ended.
        control(page, "Steps").fill(str(LONG_STEPS))
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(rf"Run #2: step [1-9]\d* of {LONG_STEPS}"), timeout=RUN_MS)
        expect(page.get_by_text(re.compile("Welcome back"))).to_be_hidden()
        page.get_by_role("button", name="Stop", exact=True).click(timeout=VIEW_MS)
        expect(status(page)).to_contain_text(re.compile(r"Run #2 .*Stopped at step \d+"), timeout=VIEW_MS)
        open_tab(page, "Runs")
        page.get_by_role("button", name="Refresh", exact=True).click()
        rows = page.get_by_role("grid", name="This session's runs").get_by_role("row")
        expect(rows).to_have_count(3, timeout=VIEW_MS)  # the header, run #1 and the stopped run #2
        # Another browser (its own storage) sees none of them.
        other, stranger = new_page(browser, server, problems, viewport)
        try:
            open_tab(stranger, "Runs")
            stranger.get_by_role("button", name="Refresh", exact=True).click()
            expect(stranger.get_by_role("grid", name="This session's runs").get_by_role("row")).to_have_count(
                1, timeout=VIEW_MS)
        finally:
            other.close()
    finally:
        context.close()


@WIDTHS
def test_numbers_that_cannot_mislead(browser, server, problems, viewport):
    """A run too long for the app's limit is refused before it starts; a features-target run names
    its Jacobian; a sweep over two regularisers trains the baseline once."""
    # Exact at 300 classes for 20000 steps cannot finish within the limit: refused, with what fits.
    # (Set by a link, opened as the page's first address: a count typed while the page still fits
    # Steps to a new dataset can be replaced by the fitted one when that arrives.)
    context, page = new_page(browser, server, problems, viewport,
                             query="?dataset=synthetic&num_classes=300&method=exact&steps=20000")
    try:
        show_settings(page)
        expect(estimate(page)).to_contain_text(re.compile(r"synthetic · mlp · 20000 steps: .*Train will refuse it"),
                                               timeout=RUN_MS)
        train_button(page).click()
        expect(page.locator(".toast-body")).to_contain_text(re.compile(r"steps fit|1 step fits"), timeout=RUN_MS)
        # ... and where the eye is, in the refusal's own words (no quotes around them)
        expect(status(page)).to_contain_text(re.compile(r"Not started: This run .*(steps fit|1 step fits)"))

        # Penalising the features: the curves and the status line say which Jacobian is which.
        choose(page, page, "Dataset", "digits")
        settled(page, "digits · mlp")
        page.get_by_role("radio", name="projection", exact=True).check()
        page.get_by_role("radio", name="features", exact=True).check()
        control(page, "Steps").fill("30")
        control(page, "Measure robustness at the end (noise, FGSM, PGD)").uncheck()
        train_button(page).click()
        expect(status(page)).to_contain_text(re.compile(r"Run #1 .*Finished 30 steps"), timeout=RUN_MS)
        expect(status(page)).to_contain_text("of the features")
        curves = plot(open_tab(page, "Training"), "Training curves")
        expect_drawn(curves, min_traces=4)
        names = curves.evaluate("gd => gd.data.map(t => t.name)")
        assert any("of the features" in name for name in names), names

        # A sweep over two regularisers with strength 0: one baseline, not one per regulariser.
        page.get_by_role("radio", name="logits", exact=True).check()
        panel = open_tab(page, "Sweep")
        panel.get_by_label("Strengths (λ; ε for adversarial training)", exact=True).fill("0, 0.1")
        panel.get_by_label("weight_decay", exact=True).check()
        panel.get_by_role("button", name="Run sweep", exact=True).click()
        expect(panel.locator(".jp-sweep-status")).to_contain_text("Run 3 of 3", timeout=2 * RUN_MS)
        expect(panel.locator(".jp-sweep-status")).to_contain_text("The sweep is complete", timeout=2 * RUN_MS)
        rows = panel.get_by_role("grid", name="The sweep's runs").get_by_role("row")
        expect(rows).to_have_count(1 + 3, timeout=VIEW_MS)

        # Stop during a sweep: a true status, no progress bar, and the stopped run in the table.
        panel.get_by_label("weight_decay", exact=True).uncheck()
        control(page, "Steps").fill(str(LONG_STEPS))
        panel.get_by_role("button", name="Run sweep", exact=True).click()
        sweep_status = panel.locator(".jp-sweep-status")
        expect(sweep_status).to_contain_text(re.compile(r"Run 1 of 2 .*step [1-9]"), timeout=RUN_MS)
        panel.get_by_role("button", name="Stop", exact=True).click()
        expect(sweep_status).to_contain_text(re.compile(r"Stopped during run 1 of 2 .*partial one are kept"),
                                             timeout=VIEW_MS)
        expect(sweep_status.locator("progress")).to_have_count(0)
        expect(rows).to_have_count(1 + 1, timeout=VIEW_MS)  # the stopped run, in this sweep's table
    finally:
        context.close()
