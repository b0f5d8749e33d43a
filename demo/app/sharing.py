"""Settings in the page's URL, a "copy link" button, and one-click presets.

A link like `/?dataset=moons&penalty=0.01&seed=3` opens the page with those controls set (read on
load; a value RunConfig refuses is named in a warning and the defaults stay), so a run can be
shared and reproduced, seed included, as TensorFlow Playground keeps its state in its URL. "Copy
link" writes the controls' values into the address bar and the link box (and the clipboard when the
browser allows it). Presets set the controls, and a tab's own settings, for the questions people ask
first, open that tab, and say plainly there that the settings are ready and which button runs them
(the tab's old results are replaced by that sentence, so nothing on screen belongs to other settings).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import gradio as gr

from demo.app.controls import CONFIG_FIELDS
from demo.engine.config import ConfigError, RunConfig

__all__ = ["PRESETS", "copy_link_js", "from_url", "settings_of"]

# Each preset: the controls it sets, the tab it opens and that tab's settings (by a short name
# the wiring in demo.app.ui maps to components).
PRESETS = MappingProxyType({
    "λ = 0 against 0.01 on digits": {
        "controls": {"dataset": "digits", "arch": "mlp", "method": "projection", "steps": 1500, "seed": 0,
                     "robustness": True},
        "tab": "sweep", "sweep_strengths": "0, 0.01", "sweep_regularizers": ["jacobian"], "sweep_epsilon": 0.1,
        "ready": "Settings ready: two runs of digits · mlp, λ = 0 and λ = 0.01. Press **Run sweep**; the "
                 "status line says how long they take before the first starts.",
    },
    "the thread's mistake": {
        "controls": {"dataset": "digits", "arch": "mlp", "method": "projection"},
        "tab": "thread",
        "ready": "Settings ready: the thread's `.backward()` + `x.grad.data` step against ours on digits · mlp. "
                 "Press **Run both**.",
    },
    "1000 classes: cost flat in C": {
        "controls": {"dataset": "synthetic", "num_classes": 1000, "arch": "mlp"},
        "tab": "cost", "cost_classes": [10, 100, 1000], "cost_methods": ["projection", "exact", "jvp", "fd"],
        "ready": "Settings ready: the synthetic set with 1000 classes (the thread's C ≈ 1000), and the cost of "
                 "every method at C = 10, 100 and 1000. Press **Measure**: exact's line climbs with C, the "
                 "others stay flat.",
    },
    "compare regularisers": {
        "controls": {"dataset": "moons", "arch": "mlp", "steps": 1500, "robustness": True},
        "tab": "sweep", "sweep_strengths": "0, 0.01, 0.1", "sweep_epsilon": 0.2,
        "sweep_regularizers": ["jacobian", "input_gradient", "adversarial", "spectral", "weight_decay"],
        "ready": "Settings ready: every regulariser at strengths 0.01 and 0.1 on moons, with one baseline (λ = 0) "
                 "and spectral normalisation once (it is on or off): 10 runs, PGD at ε = 0.2. Press "
                 "**Run sweep**; the status line gives the total time first.",
    },
})
# Where each tab says that a preset's settings are ready (a status line or a note of that tab).
READY_TARGETS = MappingProxyType({"sweep": "sweep_status", "thread": "thread_numbers", "cost": "cost_note"})


def settings_of(query: Mapping[str, str]) -> dict[str, Any] | None:
    """The controls a link's query names, as RunConfig reads them ({} when it names none); None,
    after a warning that says why, when RunConfig refuses them."""
    chosen = {name: query[name] for name in CONFIG_FIELDS if name in query}
    if not chosen:
        return {}
    try:
        cfg = RunConfig.from_mapping(chosen)
    except ConfigError as exc:
        gr.Warning(f"The link's settings were not applied: {exc}", duration=8)
        return None
    return {name: getattr(cfg, name) for name in chosen}


def from_url(request: gr.Request) -> list[Any]:
    """On page load: each control named in the URL's query set to its value, or left (gr.skip())."""
    settings = settings_of(dict(request.query_params) if request is not None else {}) or {}
    return [settings.get(name, gr.skip()) for name in CONFIG_FIELDS]


def copy_link_js() -> str:
    """The browser side of "Copy link": the controls' values as query parameters of this page."""
    names = json.dumps(list(CONFIG_FIELDS))
    return f"""(...values) => {{
        const names = {names};
        const url = new URL(window.location.href);
        url.search = "";
        names.forEach((name, i) => url.searchParams.set(name, values[i]));
        window.history.replaceState(null, "", url);
        if (navigator.clipboard) {{ navigator.clipboard.writeText(url.toString()).catch(() => {{}}); }}
        return url.toString();
    }}"""


def preset_values(name: str, targets: list[str]) -> list[Any]:
    """The values of preset `name` for `targets` (control names, "tab", or "<tab>_<setting>"),
    gr.skip() for those it leaves alone."""
    preset = PRESETS[name]
    ready_target = READY_TARGETS.get(preset["tab"])
    values = []
    for target in targets:
        if target in CONFIG_FIELDS:
            values.append(preset["controls"].get(target, gr.skip()))
        elif target == "tab":
            values.append(gr.Tabs(selected=preset["tab"]))
        elif target == ready_target:
            values.append(ready_text(preset, target))
        elif target.endswith(("_status", "_numbers", "_note")):
            values.append(gr.skip())
        else:
            values.append(preset.get(target, gr.skip()))
    return values


def ready_text(preset: dict[str, Any], target: str) -> str:
    """The preset's sentence as its tab's status component takes it (HTML for a status line)."""
    text = preset["ready"]
    if target == "sweep_status":  # an HTML status line: **bold** as <b>
        bold = re.sub(r"[*][*](.+?)[*][*]", r"<b>\1</b>", html.escape(text))
        return f'<div class="jp-sweep-status">{bold}</div>'
    return text
