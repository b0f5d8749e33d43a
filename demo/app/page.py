"""The page around the views: its CSS, and the script that fits figures to a phone.

Phones (narrower than NARROW_PX): the Settings fold when the page opens (the tabs come first),
Train, Stop, the status line and the estimate in short stay fixed at the bottom of the screen,
so a run can be started, timed and stopped from anywhere in the long single column; and a figure
whose panels stand side by side (training curves, attacks, costs) is redrawn with its panels
stacked, each full width, so titles and ticks no longer overlap. Stacked panels each show their y
numbers (side by side, panels that share a y axis show them once), x tick labels stay horizontal
(labels that would collide are thinned, not turned 90 degrees), and help text that places panels
"Left:", "Middle:", "Right:" says "Top:", "Middle:", "Bottom:" instead. The figures themselves stay
pure functions of their data (demo.app.plots): the script only moves axes, titles, colour bars
and words, in the browser, after each draw.
"""

from __future__ import annotations

import json
from types import MappingProxyType

__all__ = ["CSS", "NARROW_PX", "SCRIPT", "STACKED_PLACES"]

NARROW_PX = 720
PANEL_PX = 270  # the height of one stacked panel
TICK_CHAR_PX = 7  # width of one character of a tick label (plotly's 12 px font), plus TICK_GAP_PX between labels
TICK_GAP_PX = 10
# Help text (elements of class jp-hint) names panels by their place side by side; stacked, the
# same panels stand in this order from the top.
STACKED_PLACES = MappingProxyType({"Left": "Top", "Middle": "Middle", "Right": "Bottom"})

CSS = f"""
.jp-status, .jp-sweep-status {{ font-size: 0.95em; padding: 4px 2px; }}
.jp-status progress, .jp-sweep-status progress {{ width: 12em; vertical-align: middle; margin-right: 0.5em; }}
.jp-hint {{ font-size: 0.85em; opacity: 0.8; }}
.jp-estimate {{ padding: 0 4px; }}
/* the estimate in short, beside Train: a phone's only (its full line is in the folded Settings) */
#jp-estimate-brief {{ display: none; }}
/* the λ presets: six short buttons stay on one row, however narrow the settings column */
.jp-presets {{ flex-wrap: nowrap !important; gap: 4px !important; }}
.jp-presets > button {{ min-width: 0 !important; flex: 1 1 0 !important; padding-left: 2px !important;
  padding-right: 2px !important; }}
/* short headers ("run", "seed") must not break mid-word */
#jp-runs th, #jp-runs th * {{ word-break: keep-all; overflow-wrap: normal; white-space: nowrap; }}
/* A refused request says why in a toast. gradio also puts a red "Error" badge (its status tracker,
   translucent, over the whole component) on every output of that event: it hid the status line and
   the plots, which still show the last good run. */
.wrap:has(> span.error) {{ display: none !important; }}
@media (max-width: {NARROW_PX}px) {{
  #jp-actions {{
    position: fixed; left: 0; right: 0; bottom: 0; z-index: 1000; margin: 0;
    padding: 6px 10px calc(6px + env(safe-area-inset-bottom));
    background: var(--background-fill-primary); box-shadow: 0 -2px 10px rgba(0, 0, 0, 0.15);
  }}
  #jp-actions .jp-status {{ max-height: 4.5em; overflow-y: auto; font-size: 0.85em; }}
  #jp-actions .jp-status progress {{ width: 5em; }}
  #jp-actions {{ gap: 2px !important; }}
  #jp-actions .html-container {{ padding: 2px 4px !important; }}
  #jp-actions #jp-estimate-brief {{ display: block; padding: 0 2px; margin: 0; }}
  #jp-actions .jp-brief {{ font-size: 0.8em; }}
  .gradio-container {{ padding-bottom: 9em !important; }}
  /* plotly's toolbar sat over the plot's label ("Training curves") at this width; a double tap
     still resets the zoom */
  .js-plotly-plot .modebar-container {{ display: none !important; }}
}}
"""

# Runs once when the page loads (gr.Blocks.launch(js=...)). After every draw of a plotly figure,
# on a narrow screen: a figure of one row of panels gets one panel per row; in a grid of images
# (perturbed inputs, the Jacobian's rows), the titles shrink to fit their columns.
SCRIPT = f"""() => {{
  const NARROW = {NARROW_PX}, PANEL = {PANEL_PX}, CHAR = 0.62, SMALLEST = 7;
  const TICK_CHAR = {TICK_CHAR_PX}, TICK_GAP = {TICK_GAP_PX}, PLACES = {json.dumps(dict(STACKED_PLACES))};
  const PLACE = new RegExp("\\\\b(" + Object.keys(PLACES).join("|") + ")(?=:)", "g");
  const axes = (full) => Object.keys(full).filter((k) => /^xaxis\\d*$/.test(k) && full[k].visible !== false);
  const titled = (a) => a.xref === "paper" && a.yref === "paper" && typeof a.text === "string";
  const stack = (gd, full, xs, ys) => {{
    const order = xs.map((k, i) => [k, ys[i]]).sort((a, b) => full[a[0]].domain[0] - full[b[0]].domain[0]);
    // The legend (at the figure's foot, demo.app.plots) keeps its height at this width: the
    // figure grows by it, so the stacked panels keep theirs.
    const legend = gd.querySelector(".legend");
    const legendHeight = legend ? legend.getBoundingClientRect().height : 0;
    const n = order.length, gap = 0.35 / n, update = {{height: n * PANEL + 90 + legendHeight}};
    const centres = order.map(([x]) => (full[x].domain[0] + full[x].domain[1]) / 2);
    order.forEach(([x, y], i) => {{
      update[x + ".domain"] = [0, 1];
      update[y + ".domain"] = [1 - (i + 1) / n + gap, 1 - i / n - gap / 2];
      update[x + ".tickangle"] = 0;  // level from the first stacked draw (see level below)
      // A y axis shared side by side (the attacks' accuracy) showed its numbers on the first
      // panel only; stacked, every panel needs its own.
      if ((gd.layout[y] || {{}}).matches && full[y].showticklabels === false) update[y + ".showticklabels"] = true;
    }});
    update.annotations = (gd.layout.annotations || []).map((a) => {{
      if (!titled(a) || a.y < 0.98) return a;
      const i = centres.findIndex((c) => Math.abs(c - a.x) < 0.05);
      return i < 0 ? a : {{...a, x: 0.5, y: 1 - i / n - gap / 4, yanchor: "bottom"}};
    }});
    // Plotly keeps the angle it chose side by side (90 degrees) through the redraws that its
    // automatic margins make after a relayout, whatever tickangle says: forget it first.
    order.forEach(([x]) => {{ delete full[x]._tickAngles; delete full[x]._prevTickAngles; }});
    window.Plotly.relayout(gd, update);
    gd.data.forEach((t, j) => {{  // colour bars follow their panel
      if (!t.colorbar && !(t.marker && t.marker.colorbar)) return;
      const i = order.findIndex(([x]) => x === "xaxis" + (t.xaxis || "x").slice(1));
      if (i >= 0) window.Plotly.restyle(gd, {{"colorbar.y": 1 - (i + 0.5) / n, "colorbar.len": 1 / n - gap}}, [j]);
    }});
  }};
  // x tick labels level: plotly turns colliding labels 30 or 90 degrees, unreadable on a phone.
  // Labels given as a list (log axes, strengths) keep every k-th so that they fit side by side.
  const level = (gd, full, xs) => {{
    const update = {{}};
    xs.forEach((k) => {{
      const ax = full[k], own = gd.layout[k] || {{}};
      if (ax.showticklabels === false) return;
      if (own.tickangle !== 0) update[k + ".tickangle"] = 0;
      const vals = own.tickvals, texts = own.ticktext;
      if (!Array.isArray(vals) || !Array.isArray(texts) || vals.length < 3) return;
      const widest = Math.max(...texts.map((t) => String(t).length)) * TICK_CHAR + TICK_GAP;
      const every = Math.ceil(widest / (ax._length / (vals.length - 1)));
      if (every <= 1) return;
      const keep = (_, i) => i % every === 0;
      update[k + ".tickvals"] = vals.filter(keep);
      update[k + ".ticktext"] = texts.filter(keep);
    }});
    if (Object.keys(update).length) window.Plotly.relayout(gd, update);
  }};
  const shrink = (gd, full, xs) => {{
    const width = full._size.w;
    let changed = false;
    const annotations = (gd.layout.annotations || []).map((a) => {{
      if (!titled(a)) return a;
      const column = xs.map((k) => full[k].domain).find((d) => d[0] <= a.x && a.x <= d[1]);
      if (!column) return a;
      const chars = Math.max(...a.text.split("<br>").map((line) => line.length));
      const now = (a.font && a.font.size) || 12;
      const fits = Math.max(SMALLEST, Math.floor((column[1] - column[0]) * width / (CHAR * chars)));
      if (fits >= now) return a;
      changed = true;
      return {{...a, font: {{...(a.font || {{}}), size: fits}}}};
    }});
    if (changed) window.Plotly.relayout(gd, {{annotations}});
  }};
  const fit = (gd) => {{
    if (window.innerWidth > NARROW || !gd._fullLayout || !window.Plotly) return;
    const full = gd._fullLayout, xs = axes(full);
    if (!xs.length) return;
    const ys = xs.map((k) => "yaxis" + full[k].anchor.slice(1));
    const rows = new Set(ys.map((k) => full[k] && full[k].domain.join(",")));
    const starts = new Set(xs.map((k) => full[k].domain[0].toFixed(3)));
    if (xs.length > 1 && rows.size === 1 && starts.size === xs.length) stack(gd, full, xs, ys);  // one row
    else if (rows.size > 1 && starts.size > 1) shrink(gd, full, xs);  // a grid
    else level(gd, full, xs);  // one panel, or panels stacked already (the next draw comes back here)
  }};
  const watch = (gd) => {{
    if (gd.dataset.jpFit) return;
    gd.dataset.jpFit = "1";
    gd.on("plotly_afterplot", () => fit(gd));
    fit(gd);
  }};
  // Help text in the words of the layout on screen; each text node keeps its wide wording.
  const wide = new WeakMap();
  const place = () => {{
    const narrow = window.innerWidth <= NARROW;
    document.querySelectorAll(".jp-hint").forEach((hint) => {{
      const walker = document.createTreeWalker(hint, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {{
        if (!wide.has(node)) {{
          PLACE.lastIndex = 0;
          if (!PLACE.test(node.nodeValue)) continue;
          wide.set(node, node.nodeValue);
        }}
        const text = narrow ? wide.get(node).replace(PLACE, (word) => PLACES[word]) : wide.get(node);
        if (node.nodeValue !== text) node.nodeValue = text;
      }}
    }});
  }};
  const update = () => {{
    document.querySelectorAll(".js-plotly-plot").forEach(watch);
    place();
  }};
  new MutationObserver(update).observe(document.body, {{childList: true, subtree: true}});
  window.addEventListener("resize", place);
  update();
  // On a phone the Settings fold once the page is built, so the tabs and results come first
  // (the visitor opens them with one tap); a wide page keeps them open beside the tabs.
  const fold = (tries) => {{
    const toggle = document.querySelector("#jp-settings > button.label-wrap");
    if (!toggle) {{ if (tries > 0) setTimeout(() => fold(tries - 1), 200); return; }}
    if (window.innerWidth <= NARROW && toggle.classList.contains("open")) toggle.click();
  }};
  fold(50);
}}"""
