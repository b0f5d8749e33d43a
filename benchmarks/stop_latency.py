"""How long Stop takes to show, per architecture, in a real browser against `python app.py`.

For each architecture: Train a long run, click Stop while it trains (phase "training") and, in a
second run, while its robustness checks run (phase "attacks": the longest single event of a run),
and time the click until the status line says "Stopped". Each stop also checks that the status
line's numbers are those of the last plotted evaluation (the curves' last "test" point).

    .venv/bin/python benchmarks/stop_latency.py                # all architectures, 3 stops each; ~4 min here
    .venv/bin/python benchmarks/stop_latency.py --archs resnet vit --repeats 5

Needs Debian's chromium (/usr/bin/chromium) and playwright (requirements-dev.txt). Writes
results/stop_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import RESULTS_DIR, environment, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("mlp", "lenet", "resnet", "vit")
LONG_STEPS = 20_000
ATTACK_STEPS = 20  # a short run: Stop lands in the robustness checks at its end
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "JP_TORCH_THREADS": str(threads), "JP_MAX_SECONDS": "600"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("python app.py did not start within 120 s")


def last_plotted_test_accuracy(page) -> float | None:
    """The last "test" point of the training curves, read from the plotly figure in the page."""
    return page.evaluate("""() => {
        const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.offsetParent !== null);
        const trace = gd && gd.data.find(t => t.name === 'test');
        return trace && trace.y.length ? trace.y[trace.y.length - 1] : null;
    }""")


def stop_once(page, arch: str, phase: str, delay_s: float, run: int) -> dict:
    """Run #`run`: Train, then Stop in `phase`; the latency from the click to "Stopped"."""
    status = page.locator(".jp-status")
    steps = LONG_STEPS if phase == "training" else ATTACK_STEPS
    page.get_by_label("Steps", exact=True).first.fill(str(steps))
    page.get_by_label("Measure robustness at the end (noise, FGSM, PGD)", exact=True).set_checked(phase == "attacks")
    page.get_by_role("button", name="Train", exact=True).click()
    if phase == "training":
        status.filter(has_text=re.compile(rf"Run #{run}: step [1-9]\d* of")).wait_for(timeout=TIMEOUT_MS)
        time.sleep(delay_s)
    else:  # every step done: what is left is the last evaluation and the attacks
        status.filter(has_text=re.compile(rf"Run #{run}(: step {steps} of {steps}| .*Finished)")).wait_for(
            timeout=TIMEOUT_MS)
        if "Finished" in status.inner_text():  # the attacks took less than one update (mlp): nothing to stop
            return {"arch": arch, "phase": phase, "latency_s": None, "stopped": False,
                    "status_matches_plot": True, "status": status.inner_text()}
    clicked = time.perf_counter()
    page.get_by_role("button", name="Stop", exact=True).click()
    status.filter(has_text=re.compile(rf"Run #{run} .*(Stopped at step|Finished)")).wait_for(timeout=TIMEOUT_MS)
    latency = time.perf_counter() - clicked
    time.sleep(1.5)  # the Train event ends up to a second after its last update; the page ignores Train till then
    text = status.inner_text()
    shown = re.search(r"test accuracy (\d\.\d+)", text)
    plotted = last_plotted_test_accuracy(page)
    agree = shown is None and plotted is None or (
        shown is not None and plotted is not None and abs(float(shown.group(1)) - plotted) < 5e-4)
    return {"arch": arch, "phase": phase, "latency_s": round(latency, 3), "stopped": "Stopped" in text,
            "status_matches_plot": agree, "status": text}


def measure(archs: list[str], repeats: int, threads: int, log) -> dict:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_server(port, threads)
    samples = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("button", name="Train", exact=True).wait_for(timeout=TIMEOUT_MS)
            run = 0
            for arch in archs:
                box = page.get_by_label("Architecture", exact=True)
                box.click()
                page.get_by_role("option", name=arch, exact=True).click()
                page.locator(".jp-estimate", has_text=f"· {arch} ·").wait_for(timeout=TIMEOUT_MS)
                for repeat in range(repeats):
                    for phase in ("training", "attacks"):
                        run += 1
                        sample = stop_once(page, arch, phase, delay_s=1.0 + repeat, run=run)
                        samples.append(sample)
                        log(f"{arch:7} {phase:9} {sample['latency_s']} s  matches plot: "
                            f"{sample['status_matches_plot']}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = {}
    for arch in archs:
        for phase in ("training", "attacks"):
            values = [s["latency_s"] for s in samples
                      if s["arch"] == arch and s["phase"] == phase and s["latency_s"] is not None]
            if values:
                summary[f"{arch}/{phase}"] = {"median_s": round(statistics.median(values), 3), "max_s": max(values),
                                              "stops": len(values)}
    return {"environment": {**environment("cpu"), "server_torch_threads": threads}, "samples": samples,
            "summary": summary}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Stop: click to \"Stopped\" in the status line",
        "",
        f"{env['device_name']}, {env['cpu_count']} cores, server with {env['server_torch_threads']} torch "
        f"thread(s); torch {env['torch']}; {env['date']}; load average at start {env['load_average_start']}.",
        "Headless Chromium against `python app.py`; digits; `training`: Stop 1-3 s into a 20 000-step run; "
        "`attacks`: Stop while a 20-step run measures robustness (its longest single event).",
        "",
        "| arch | phase | stops | median (s) | max (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for key, row in result["summary"].items():
        arch, phase = key.split("/")
        lines.append(f"| {arch} | {phase} | {row['stops']} | {row['median_s']:.2f} | {row['max_s']:.2f} |")
    stops = [s for s in result["samples"] if s["latency_s"] is not None]
    agree = sum(s["status_matches_plot"] for s in stops)
    lines += ["", f"The status line's test accuracy equalled the curves' last point in {agree} of {len(stops)} stops. "
              "A run whose attacks ended within one update (mlp) had nothing left to stop and is not counted."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads (JP_TORCH_THREADS)")
    parser.add_argument("--name", default="stop_latency")
    args = parser.parse_args(argv)
    result = measure(args.archs, args.repeats, args.threads, log=print)
    write_report(result, markdown(result), RESULTS_DIR / args.name, print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
