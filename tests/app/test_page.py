"""The page's phone script (demo.app.page.SCRIPT) on figures of demo.app.plots, in headless
Chromium with the plotly.js that the plotly package ships: no server, a few seconds. The browser
tests (test_browser.py) walk the same on the running app."""

from __future__ import annotations

import json
import os
from pathlib import Path

import plotly
import pytest

from demo.app import page, plots

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(f"needs Chromium at {CHROMIUM} (set CHROMIUM)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HINT = "<strong>How to read this.</strong> Left: the loss. Middle: accuracy. Right: ‖J‖_F. Up and to the right."
SELECTORS = ".infolayer .annotation-text, .xtick text, .ytick text, .g-xtitle text, .g-ytitle text, .legendtext"
TEXTS = """gd => [...gd.querySelectorAll('SELECTORS, .textpoint text')]
  .filter(e => e.textContent.trim() && e.getBoundingClientRect().width > 0)
  .map(e => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height,
                                                            text: e.textContent}; })""".replace(
    "SELECTORS", SELECTORS)


def record(penalty: float) -> dict:
    steps = range(10, 310, 10)
    return {
        "config": {"penalty": penalty, "method": "projection", "arch": "mlp", "dataset": "digits", "steps": 300},
        "history": [{"step": s, "ce_loss": 2.3 / (1 + s / 30), "weighted_penalty": penalty, "train_accuracy": s / 310,
                     "jacobian_norm_estimate": 1 + s / 5} for s in steps],
        "evaluations": [{"step": s, "test_accuracy": s / 320, "jacobian_norm": 2 + s / 5} for s in steps[4::5]],
        "robustness": {a: [{"sigma" if a == "noise" else "epsilon": e, "accuracy": 0.9 - e - penalty}
                           for e in (0.0, 0.05, 0.1, 0.2)] for a in ("noise", "fgsm", "pgd", "square")},
    }


def figures() -> dict:
    strengths = [0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1]  # ten labels on one log axis
    rows = [{"regularizer": "jacobian", "penalty": p, "test_accuracy": 0.97 - p / 10, "robust_accuracy": 0.4 + p / 3,
             "jacobian_norm": 30 / (1 + 100 * p), "pareto": False} for p in strengths]
    return {
        "robust": plots.robustness_figure([("λ=0", record(0.0)), ("λ=0.1", record(0.1))]),
        "sweep": plots.tradeoff_figure(rows, 0.1),
        "empty": plots.steps_figure([("r", {"config": {"steps": 100}, "history": [], "evaluations": []})],
                                    plots.TRAINING_PANELS),
        "curves": plots.steps_figure([("r", record(0.01))], plots.TRAINING_PANELS),
    }


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """The figures drawn on one page at a phone's width and at a desktop's: {width: page}."""
    figs = figures()
    divs = "".join(f'<div id="{name}"></div>' for name in figs)
    data = json.dumps({name: json.loads(fig.to_json()) for name, fig in figs.items()})
    html = tmp_path_factory.mktemp("page") / "page.html"
    html.write_text(f"""<html><head><script src="{PLOTLY_JS.as_uri()}"></script></head><body>
<div class="jp-hint"><p>{HINT}</p></div>{divs}<script>
const figs = {data};
for (const name in figs) Plotly.newPlot(name, figs[name].data, figs[name].layout, {{responsive: true}});
({page.SCRIPT})();
</script></body></html>""")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        opened = {}
        for width in (420, 1000):
            opened[width] = browser.new_page(viewport={"width": width, "height": 900})
            opened[width].goto(html.as_uri())
            opened[width].wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                            f".filter(gd => gd._fullLayout).length === {len(figs)}")
            opened[width].wait_for_timeout(500)  # the script's relayouts after the first draws
        yield opened
        browser.close()


def layout(pg, name: str, key: str):
    return pg.locator(f"#{name}").evaluate(f"""gd => Object.keys(gd._fullLayout).filter(k => /^{key}axis\\d*$/.test(k))
        .sort().map(k => [k, gd._fullLayout[k].domain, gd._fullLayout[k].showticklabels,
                          gd._fullLayout[k].tickangle])""")


def overlaps(pg, name: str) -> list:
    boxes = pg.locator(f"#{name}").evaluate(TEXTS)
    return [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a["x"] < b["x"] + b["w"] - 1 and b["x"] < a["x"] + a["w"] - 1
            and a["y"] < b["y"] + b["h"] - 1 and b["y"] < a["y"] + a["h"] - 1]


def test_stacked_attack_panels_each_show_their_accuracy_numbers(pages):
    phone = layout(pages[420], "robust", "y")
    assert len(phone) == 4 and all(shown for _, _, shown, _ in phone)
    assert all(domain == [0, 1] for _, domain, _, _ in layout(pages[420], "robust", "x"))  # stacked
    # Side by side they share one axis, numbered once at the left.
    assert [shown for _, _, shown, _ in layout(pages[1000], "robust", "y")] == [True, False, False, False]


def test_phone_x_labels_stay_level_and_thinned_so_they_do_not_collide(pages):
    xs = layout(pages[420], "sweep", "x")
    assert all(angle == 0 for _, _, _, angle in xs)  # never turned 30 or 90 degrees
    ticks = pages[420].locator("#sweep").evaluate("gd => gd.layout.xaxis2.tickvals.length")
    assert 2 <= ticks < 10  # ten strengths do not fit side by side on a phone: some are left unlabelled
    for name in ("sweep", "robust", "curves"):
        assert overlaps(pages[420], name) == []
        assert overlaps(pages[1000], name) == []


def test_empty_panels_keep_their_y_numbers_hidden_when_stacked(pages):
    shown = [shown for _, _, shown, _ in layout(pages[420], "empty", "y")]
    assert shown == [False, True, False]  # loss and ‖J‖ invent no numbers; accuracy reads 0 to 1


def test_help_text_names_stacked_panels_top_to_bottom(pages):
    phone, desktop = (pages[w].locator(".jp-hint").inner_text() for w in (420, 1000))
    assert "Top: the loss. Middle: accuracy. Bottom: ‖J‖_F." in phone
    assert "Left" not in phone and "Right:" not in phone
    assert "Left: the loss. Middle: accuracy. Right: ‖J‖_F." in desktop
    assert "Up and to the right." in phone  # the words inside one panel stay as they are
