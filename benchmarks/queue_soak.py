"""A soak of a real `python app.py` under a queue-filling client and Stop cycles, on loopback.

    .venv/bin/python benchmarks/queue_soak.py            # about 2 minutes on 2 cores

1. A flooder joins /train (20000 steps) FLOOD times from one session and never listens: how many
   joins are accepted and refused, and whether its events still use the CPU after the grace.
2. A victim (another session) asks for /runs and a short /train while the flooder waits: answered?
3. CYCLES Stop cycles: a /train of 20000 steps submitted through gradio_client and cancelled after
   STOP_AFTER seconds. After them, the server's CPU use over an idle window, in cores: 0 means no
   worker thread kept computing; 1 per run that did.
4. The server's resident memory at start (after a warm-up run), after all that, and after an idle
   wait (the server hands freed memory back while idle).
Writes benchmarks/results/queue_soak.json and .md with the machine and versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import RESULTS_DIR, environment, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"dataset": "digits", "arch": "mlp", "penalty": 0.01, "method": "projection", "num_projections": 1,
         "target": "logits", "steps": 60, "batch_size": 32, "lr": 0.01, "seed": 0, "device": "cpu",
         "robustness": False, "num_classes": 100}
SLOW = {**TRAIN, "steps": 20000}
FLOOD, CYCLES, STOP_AFTER, GRACE, IDLE = 20, 6, 1.5, 3, 8


def status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cores(pid: int, seconds: float) -> float:
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - start) / seconds


def call(url: str, api: str, values: dict, session: str, listen: bool = True) -> tuple[int, str]:
    payload = json.dumps({"data": list(values.values()), "session_hash": session})
    with httpx.Client(base_url=url + "gradio_api", timeout=300) as http:
        answer = http.post(f"/call/{api}", content=payload, headers={"content-type": "application/json"})
        if answer.status_code != 200 or not listen:
            return answer.status_code, answer.text
        return 200, http.get(f"/call/{api}/{answer.json()['event_id']}").text


def main() -> int:
    from gradio_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="queue-soak-"))
    port = 7990
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "TMPDIR": str(tmp),
           "GRADIO_ANALYTICS_ENABLED": "False", "JP_QUEUE_SIZE": "8", "JP_LISTEN_GRACE": str(GRACE),
           "JP_MAX_SECONDS": "60", "JP_CLIENT_EVENTS": "50"}
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        call(url, "train", TRAIN, "warm-up")
        time.sleep(IDLE)
        rss_start = status(server.pid, "VmRSS")

        codes = [call(url, "train", SLOW, "flooder", listen=False)[0] for _ in range(FLOOD)]
        started = time.perf_counter()
        victim_runs = call(url, "runs", {}, "victim")[0]
        victim_train = "event: complete" in call(url, "train", TRAIN, "victim")[1]
        victim_s = time.perf_counter() - started
        time.sleep(GRACE + 2)
        flood_cores = busy_cores(server.pid, 4)

        client = Client(url, verbose=False)
        for _ in range(CYCLES):
            job = client.submit(**SLOW, api_name="/train")
            time.sleep(STOP_AFTER)
            job.cancel()
            time.sleep(0.5)
        client.close()
        time.sleep(2)
        stop_cores = busy_cores(server.pid, 4)
        rss_after = status(server.pid, "VmRSS")
        time.sleep(IDLE)
        rss_idle = status(server.pid, "VmRSS")
        rss_peak = status(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=60)
    text = (tmp / "server.log").read_text()
    report = {"environment": environment("cpu"),
              "flood": {"joins": FLOOD, "accepted": codes.count(200), "refused": codes.count(429),
                        "other": len(codes) - codes.count(200) - codes.count(429),
                        "cores_busy_after_grace": flood_cores},
              "victim": {"runs_status": victim_runs, "train_completed": victim_train, "seconds": victim_s},
              "stop_cycles": {"cycles": CYCLES, "stop_after_s": STOP_AFTER, "cores_busy_after": stop_cores},
              "rss_mb": {"start": rss_start, "after": rss_after, "idle": rss_idle, "peak": rss_peak},
              "log_tracebacks": text.count("Traceback")}
    r, f, v, s = report["rss_mb"], report["flood"], report["victim"], report["stop_cycles"]
    env_ = report["environment"]
    lines = ["# Queue soak: a client that fills the queue, and Stop cycles", "",
             f"{env_['device_name']}, {env_['cpu_count']} cores, torch {env_['torch']}, {env_['date']}. "
             f"No GPU on this machine. Queue 8, listen grace {GRACE} s.", "",
             "| | value |", "|---|---:|",
             f"| flooder's joins accepted / refused / other | {f['accepted']} / {f['refused']} / {f['other']} "
             f"of {FLOOD} |",
             f"| CPU cores busy {GRACE + 2} s after the flood (nobody listening) | {f['cores_busy_after_grace']:.2f} |",
             f"| victim: /runs status, /train completed, seconds for both | {v['runs_status']}, "
             f"{v['train_completed']}, {v['seconds']:.1f} |",
             f"| CPU cores busy after {CYCLES} Stop cycles (each {STOP_AFTER} s into a 20000-step run) | "
             f"{s['cores_busy_after']:.2f} |",
             f"| RSS at start / after / idle {IDLE} s later / peak (MB) | {r['start']:.0f} / {r['after']:.0f} / "
             f"{r['idle']:.0f} / {r['peak']:.0f} |",
             f"| tracebacks in the server's log | {report['log_tracebacks']} |", ""]
    write_report(report, "\n".join(lines), RESULTS_DIR / "queue_soak", lambda *a: print(*a, file=sys.stderr))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
