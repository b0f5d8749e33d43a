"""Settings in the page's URL, a "copy link" button, and one-click presets.

A link like `/?dataset=moons&penalty=0.01&seed=3` opens the page with those controls set (read on
load; a value RunConfig refuses is named in a warning and the defaults stay), so a run can be
shared and reproduced, seed included, as TensorFlow Playground keeps its state in its URL. "Copy
link" writes the controls' values into the address bar and the link box (and the clipboard when the
browser allows it). Presets set the controls, and a tab's own settings, for the questions people ask
first, and open that tab.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import gradio as gr

from demo.app.controls import CONFIG_FIELDS
from demo.engine.config import ConfigError, RunConfig

__all__ = ["PRESETS", "copy_link_js", "from_url"]

# Each preset: the controls it sets, the tab it opens and that tab's settings (by a short name
# the wiring in demo.app.ui maps to components).
PRESETS = MappingProxyType({
    "λ = 0 against 0.01 on digits": {
        "controls": {"dataset": "digits", "arch": "mlp", "method": "projection", "steps": 1500, "seed": 0,
                     "robustness": True},
        "tab": "sweep", "sweep_strengths": "0, 0.01", "sweep_regularizers": ["jacobian"],
    },
    "the thread's mistake": {
        "controls": {"dataset": "digits", "arch": "mlp", "method": "projection"},
        "tab": "thread",
    },
    "1000 classes: cost flat in C": {
        "controls": {"dataset": "digits", "arch": "mlp"},
        "tab": "cost", "cost_classes": [10, 100, 1000], "cost_methods": ["projection", "exact", "jvp", "fd"],
    },
    "compare regularisers": {
        "controls": {"dataset": "moons", "arch": "mlp", "steps": 1500, "robustness": True},
        "tab": "sweep", "sweep_strengths": "0, 0.01, 0.1",
        "sweep_regularizers": ["jacobian", "input_gradient", "adversarial", "spectral", "weight_decay"],
    },
})


def from_url(request: gr.Request) -> list[Any]:
    """On page load: each control named in the URL's query set to its value, or left (gr.skip())."""
    params = dict(request.query_params) if request is not None else {}
    chosen = {name: params[name] for name in CONFIG_FIELDS if name in params}
    if not chosen:
        return [gr.skip() for _ in CONFIG_FIELDS]
    try:
        cfg = RunConfig.from_mapping(chosen)
    except ConfigError as exc:
        gr.Warning(f"The link's settings were not applied: {exc}", duration=8)
        return [gr.skip() for _ in CONFIG_FIELDS]
    return [getattr(cfg, name) if name in chosen else gr.skip() for name in CONFIG_FIELDS]


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
    values = []
    for target in targets:
        if target in CONFIG_FIELDS:
            values.append(preset["controls"].get(target, gr.skip()))
        elif target == "tab":
            values.append(gr.Tabs(selected=preset["tab"]))
        else:
            values.append(preset.get(target, gr.skip()))
    return values
