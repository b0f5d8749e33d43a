"""A public server one visitor cannot take down, starve or get around, tried against a real
`python app.py` on loopback (the launcher of test_hostile.py): odd event numbers and routes,
values no handler expects, bodies on every route, closed upload and deep-link routes, a client
that fills the queue and never listens, cheap sessions that would push runs out, downloads left
in gradio's cache, memory after a big run, a hard memory ceiling, and a quiet log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_hostile import TRAIN, app_server, call, start_app

LOG_NOISE = ("Traceback", "USDT", "profiler_start", "profiler_stop", "External init callback",
             "gpuGetDeviceCount", "torch.jit.script")
SLOW = {**TRAIN, "steps": 20000, "dataset": "digits"}  # minutes of training, unless stopped


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from app_server(tmp_path_factory, "door")


def fn_indices(url: str) -> dict[str, int]:
    """api_name (or "#id" for a private event) -> fn_index, from the page's own config."""
    config = httpx.get(url + "config", timeout=30).json()
    return {(d.get("api_name") or f"#{d['id']}"): d["id"] for d in config["dependencies"]}


def detail(answer: httpx.Response) -> str:
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.text[:200]
    return str(answer.json()["detail"])


@pytest.mark.parametrize("fn_index", ['"9"', "9.0", "999", "-1", "true", "null"])
def test_any_fn_index_gets_a_plain_answer(server, fn_index):
    body = '{"data": [], "fn_index": ' + fn_index + ', "session_hash": "odd"}'
    answer = httpx.post(server[0] + "gradio_api/queue/join", content=body,
                        headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code in (404, 422), (answer.status_code, answer.text[:300])
    text = detail(answer)
    assert "fn_index" in text or "event number" in text, text


@pytest.mark.parametrize("route", ["call/nope", "call/v2/nope", "call/v2/compare"])
def test_unknown_and_v2_routes_get_a_plain_answer(server, route):
    answer = httpx.post(server[0] + "gradio_api/" + route, json={"data": ["x"], "bogus": [1, 2]}, timeout=30)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert "Traceback" not in answer.text and len(detail(answer)) < 300


def test_every_handler_private_ones_included_answers_odd_values_without_a_traceback(server):
    url, log, _, _ = server
    before = log.read_text()
    indices = fn_indices(url)
    config = httpx.get(url + "config", timeout=30).json()
    sizes = {d["id"]: len(d["inputs"]) for d in config["dependencies"]}
    sent = 0
    with httpx.Client(base_url=url + "gradio_api", timeout=60) as http:
        for value in ([], "1e400", 1e308 * 10):  # the last is Infinity in JSON
            for name, index in indices.items():
                session = f"odd-{sent}"
                data = json.dumps({"data": [value] * sizes[index], "fn_index": index, "session_hash": session})
                answer = http.post("/queue/join", content=data, headers={"content-type": "application/json"})
                sent += 1
                if answer.status_code == 200:  # listen until it ends, so it runs
                    with http.stream("GET", "/queue/data", params={"session_hash": session}) as stream:
                        for line in stream.iter_lines():
                            if "process_completed" in line or "close_stream" in line:
                                break
                else:
                    assert answer.status_code < 500, (name, answer.status_code, answer.text[:300])
    time.sleep(1)
    added = log.read_text()[len(before):]
    assert "Traceback" not in added, added[added.find("Traceback") - 300: added.find("Traceback") + 2000]
    # At most one line per kind of failure: the log grows far slower than the requests.
    assert len(added.splitlines()) < sent / 2, (sent, added[-3000:])


@pytest.mark.parametrize("route", ["gradio_api/call/v2/compare", "gradio_api/cancel", "gradio_api/reset",
                                   "gradio_api/component_server", "gradio_api/queue/join", "config", "xyz"])
def test_every_route_refuses_a_big_body_before_reading_it(server, route):
    url = server[0]
    big = b"[" + b"1," * (2**20) + b"1]"  # 2 MB
    answer = httpx.post(url + route, content=big, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 413 and "at most" in detail(answer), (answer.status_code, answer.text[:200])

    def chunks():  # no Content-Length: read only up to the limit
        for _ in range(40):
            yield b"x" * 2**16

    answer = httpx.post(url + route, content=chunks(), timeout=30)
    assert answer.status_code == 413, (answer.status_code, answer.text[:200])


def test_upload_recording_stream_and_deep_link_routes_are_closed(server):
    url = server[0]
    recorded = httpx.post(url + "gradio_api/process_recording", files={"files": ("a.wav", b"x" * 1024)}, timeout=30)
    assert recorded.status_code == 403, (recorded.status_code, recorded.text[:200])
    linked = httpx.get(url + "gradio_api/deep_link", params={"session_hash": "x"}, timeout=30)
    assert linked.status_code == 403
    streamed = httpx.post(url + "gradio_api/stream/abc", json={"data": []}, timeout=30)
    assert streamed.status_code == 403
    assert not list(server[2].rglob("deep_links"))


def test_a_normal_session_leaves_a_quiet_log(server):
    from gradio_client import Client

    url, log, _, process = server
    client = Client(url, verbose=False)
    try:
        client.predict(**{**TRAIN, "dataset": "digits", "steps": 30}, api_name="/train")
    finally:
        client.close()
    assert process.poll() is None
    text = log.read_text()
    for noise in LOG_NOISE:
        assert noise not in text, (noise, text[-3000:])


def test_one_session_cannot_fill_the_queue_and_events_nobody_hears_are_dropped(tmp_path):
    process, url = start_app(tmp_path, tmp_path / "server.log", JP_QUEUE_SIZE="4", JP_LISTEN_GRACE="2",
                             JP_MAX_SECONDS="120", JP_CLIENT_EVENTS="50")
    try:
        payload = json.dumps({"data": list(SLOW.values()), "session_hash": "flooder"})
        answers = [httpx.post(url + "gradio_api/call/train", content=payload,
                              headers={"content-type": "application/json"}, timeout=30) for _ in range(6)]
        refused = [a for a in answers if a.status_code == 429]
        assert len(refused) >= 4 and "wait for it to finish" in detail(refused[0])
        # Another visitor is served: its cheap call and its own training (the flooder's run is
        # dropped once nobody has listened for its grace, not left to train for its 120 s).
        kind, stream = call(url, "runs", "[]", session="victim")
        assert kind == "complete", stream
        kind, stream = call(url, "train", json.dumps(list(TRAIN.values())), session="victim")
        assert kind == "complete", stream
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def completed(stream: str) -> list:
    """The output values of a /call stream's complete event."""
    return json.loads(stream.split("event: complete", 1)[1].split("data:", 1)[1].splitlines()[0])


def test_cheap_sessions_cannot_push_out_a_session_with_runs_and_dropped_ones_are_cleaned(tmp_path):
    from demo.app.session import FOLDER_PREFIX

    process, url = start_app(tmp_path, tmp_path / "server.log", JP_MAX_SESSIONS="4")
    try:
        assert call(url, "train", json.dumps(list(TRAIN.values())), session="victim")[0] == "complete"
        for i in range(40):  # cheap calls, each with a fresh session
            assert call(url, "runs", "[]", session=f"cheap-{i}")[0] == "complete"
        kind, stream = call(url, "runs", "[]", session="victim")
        assert kind == "complete" and len(completed(stream)[0]["data"]) == 1, stream
        for who in "bcdef":  # now sessions that hold runs push each other out: their folders go with them
            assert call(url, "train", json.dumps(list(TRAIN.values())), session=who)[0] == "complete"
        folders = [f for f in tmp_path.glob(f"{FOLDER_PREFIX}{process.pid}-*") if not f.name.endswith("-cache")]
        assert len(folders) <= 4, [f.name for f in folders]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_downloads_in_gradios_cache_do_not_survive_a_killed_server(tmp_path):
    log = tmp_path / "server.log"
    process, url = start_app(tmp_path, log)
    try:
        assert call(url, "train", json.dumps(list(TRAIN.values())), session="d")[0] == "complete"
        kind, stream = call(url, "download", '[""]', session="d")
        assert kind == "complete", stream
        files = [f["path"] for f in completed(stream) if isinstance(f, dict)]
        assert files and all(Path(f).exists() for f in files), stream
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    process, url = start_app(tmp_path, log)
    try:
        assert not any(Path(f).exists() for f in files), files
        for f in files:
            assert httpx.get(f"{url}gradio_api/file={f}", timeout=30).status_code in (403, 404)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_memory_is_given_back_after_a_big_run(tmp_path):
    # An hour's time limit: the big run must be accepted however slow a step is on a busy machine.
    process, url = start_app(tmp_path, tmp_path / "server.log", JP_MAX_MEMORY_MB="8000", JP_MAX_SECONDS="3600")
    try:
        assert call(url, "train", json.dumps(list(TRAIN.values())), session="warm")[0] == "complete"
        time.sleep(7)  # the server hands memory back every 5 s while idle
        start = rss_mb(process.pid)
        # Over 1 GB above that at its peak here: a vit step on 128 images with 8 projections.
        big = {**TRAIN, "dataset": "synthetic", "arch": "vit", "batch_size": 128, "steps": 2,
               "num_projections": 8, "robustness": False, "num_classes": 10}
        peak, done = [start], threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak.append(rss_mb(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            kind, stream = call(url, "train", json.dumps(list(big.values())), session="big")
        finally:
            done.set()
            sampler.join()
        assert kind == "complete", stream
        assert max(peak) > start + 500, (start, max(peak))  # the run did hold a lot, for a while
        time.sleep(7)
        idle = rss_mb(process.pid)
        assert idle < 1.2 * start, (start, max(peak), idle)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_run_past_the_memory_ceiling_ends_alone_with_a_message(tmp_path):
    # The budget is set high, so the model lets the run through: the ceiling must catch it.
    process, url = start_app(tmp_path, tmp_path / "server.log", JP_MAX_MEMORY_MB="1000000",
                             JP_MEMORY_CEILING_MB="1500")
    try:
        big = {**TRAIN, "dataset": "synthetic", "arch": "resnet", "method": "exact", "batch_size": 64, "steps": 1,
               "num_classes": 100}
        kind, stream = call(url, "train", json.dumps(list(big.values())), session="big")
        assert kind == "complete" and "ran out of memory" in stream, stream[-1500:]  # the run's own status
        assert process.poll() is None
        assert call(url, "train", json.dumps(list(TRAIN.values())), session="after")[0] == "complete"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


if os.environ.get("JP_SKIP_SLOW_SERVER_TESTS"):  # pragma: no cover - a way to run the quick ones alone
    pytestmark = pytest.mark.skip("slow server tests skipped")


# ---------------------------------------------------------------------------------------------
# Stop, the time limit and run ids, against the real server (the handlers' own tests are in
# test_stop_and_pace.py; these show the same through the door a visitor uses)

ATTACKED = {**TRAIN, "dataset": "synthetic", "arch": "vit", "steps": 2, "robustness": True, "num_classes": 10}


def stop_events(url: str) -> list[tuple[int, int]]:
    """(fn_index, trigger id) of every private event a Stop button fires, from the page's config."""
    config = httpx.get(url + "config", timeout=30).json()
    stops = {c["id"] for c in config["components"] if c.get("type") == "button"
             and c.get("props", {}).get("value") == "Stop"}
    return [(d["id"], target[0]) for d in config["dependencies"] for target in d.get("targets", [])
            if target[0] in stops]


def press(url: str, fn_index: int, trigger: int, session: str) -> None:
    """What the page sends when Stop is pressed: a queue event of that session, listened to for a
    moment (Stop acts at once, outside the queue's limit; its own completion may be read by the
    session's other stream, which shares its messages)."""
    body = json.dumps({"data": [], "fn_index": fn_index, "trigger_id": trigger, "session_hash": session,
                       "event_data": None})
    answer = httpx.post(url + "gradio_api/queue/join", content=body, headers={"content-type": "application/json"},
                        timeout=30)
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    deadline = time.monotonic() + 5
    with contextlib.suppress(httpx.ReadTimeout), httpx.stream(
            "GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=10) as data:
        for line in data.iter_lines():
            if "process_completed" in line or time.monotonic() > deadline:
                return


def until(lines, wanted, seconds: float) -> str:
    """The first of a stream's lines that is `wanted`, within `seconds` (its heartbeats keep the
    stream alive, so a read timeout alone would never fire)."""
    deadline = time.monotonic() + seconds
    for line in lines:
        if wanted(line):
            return line
        if time.monotonic() > deadline:
            break
    pytest.fail(f"not seen within {seconds:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_stop_during_the_attacks_ends_the_work_so_one_worker_means_one(tmp_path):
    """Stop cycles during a vit run's attacks: once each event has ended, the server computes
    nothing (before, each stopped run's thread went on attacking, and after four cycles four
    trained at once against JP_CONCURRENCY=1)."""
    process, url = start_app(tmp_path, tmp_path / "server.log", JP_CONCURRENCY="1", JP_MAX_SECONDS="600")
    try:
        stops = stop_events(url)
        assert stops, "no Stop button in the page's config"
        for cycle in range(2):  # a thread left attacking shows at the first cycle already
            session = f"stopper-{cycle}"
            payload = json.dumps({"data": list(ATTACKED.values()), "session_hash": session})
            event = httpx.post(url + "gradio_api/call/train", content=payload,
                               headers={"content-type": "application/json"}, timeout=30).json()["event_id"]
            with httpx.stream("GET", f"{url}gradio_api/call/train/{event}", timeout=300) as stream:
                lines = stream.iter_lines()
                # Both steps trained: the attacks run now (over ten seconds on vit).
                until(lines, lambda line: line.startswith("data:") and "step 2 of 2" in line, 240)
                time.sleep(1)
                press(url, *stops[0], session)  # the Stop beside Train (the first in the page)
                ended = until(lines, lambda line: line in ("event: complete", "event: error"), 120)
            assert ended == "event: complete", ended
            before = cpu_seconds(process.pid)
            time.sleep(4)
            # A thread still attacking burns up to a core (4 s here; 1.3 s measured with the fix
            # reverted, on a loaded machine); an idle server, a few hundredths.
            assert cpu_seconds(process.pid) - before < 0.6, f"cycle {cycle}: work went on after Stop"
        assert call(url, "train", json.dumps(list(TRAIN.values())), session="after")[0] == "complete"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_the_time_limit_bounds_every_event_that_uses_the_accelerator(tmp_path):
    """JP_MAX_SECONDS = 4: a vit run with its attacks, a thread comparison with a long warm-up and
    a heavy cost measurement each end near the limit, in plain words (they took 79 s, 276 s and
    105 s before). The bound asserted is loose (the limit plus a step, an attack level and a busy
    machine's slack): what fails is an event that ignores the limit."""
    from test_hostile import COST, THREAD

    process, url = start_app(tmp_path, tmp_path / "server.log", JP_MAX_SECONDS="4", JP_MAX_MEMORY_MB="8000")
    heavy_cost = {**COST, "arch": "vit", "dataset": "cifar10", "classes": [10, 100],
                  "methods": ["exact", "projection", "fd"], "batch_size": 32}
    try:
        for api, values in (("train", {**ATTACKED, "steps": 200}), ("thread", {**THREAD, "warmup_steps": 3000}),
                            ("cost", heavy_cost)):
            started = time.monotonic()
            kind, message = call(url, api, json.dumps(list(values.values())), session=f"limit-{api}")
            took = time.monotonic() - started
            assert took < 45, f"/{api} held the worker {took:.0f} s against a 4 s limit"
            if kind == "complete":  # what finished in time, or what was measured by the limit, is kept
                if api == "train":  # the run as it stands, saying why
                    assert "time limit" in message or "time budget" in message, message[-500:]
            else:  # refused before it starts (its estimate), or ended at the limit, in plain words
                assert kind == "error" and "Traceback" not in message, message
                assert "limit" in message or "stops a run after" in message, message
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_two_trains_of_one_session_at_once_keep_two_runs_with_their_own_ids(tmp_path):
    """Two Trains of one page at once (JP_CONCURRENCY=2), sent as the page sends them: both
    /queue/join, results on the session's one stream. Before, both said "Run #1" and one was lost.
    (Two /call streams of one session would not do: gradio's /call streams of a session share its
    message queue, and each may take the other's messages.)"""
    process, url = start_app(tmp_path, tmp_path / "server.log", JP_CONCURRENCY="2",
                             JP_SESSION_ACCELERATOR_EVENTS="4")
    try:
        config = httpx.get(url + "config", timeout=30).json()
        train = next(d for d in config["dependencies"] if d.get("api_name") == "train")
        for seed in range(2):
            values = [None] + list({**TRAIN, "seed": seed}.values())  # the session's State comes first
            assert len(values) == len(train["inputs"])
            body = json.dumps({"data": values, "fn_index": train["id"], "trigger_id": train["targets"][0][0],
                               "session_hash": "twin", "event_data": None})
            joined = httpx.post(url + "gradio_api/queue/join", content=body,
                                headers={"content-type": "application/json"}, timeout=30)
            assert joined.status_code == 200, (joined.status_code, joined.text[:300])
        finished = []
        with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": "twin"},
                          timeout=300) as stream:
            lines = stream.iter_lines()
            while len(finished) < 2:
                line = until(lines, lambda line: "process_completed" in line, 240)
                finished.append(json.loads(line.split("data:", 1)[1]))
        assert all(f.get("success") for f in finished), [str(f)[:300] for f in finished]
        kind, stream = call(url, "runs", "[]", session="twin")
        assert kind == "complete", stream
        rows = completed(stream)[0]["data"]
        ids = [str(row[0]) for row in rows]
        assert len(rows) == 2 and len(set(ids)) == 2, rows
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_train_pressed_while_the_page_still_measures_is_queued_not_refused(tmp_path):
    """The estimate under Steps probes for seconds in the accelerator's line; a Train pressed
    meanwhile waits behind it. Before, the session's share counted the page's measurements as runs,
    and that Train met "a run or measurement waiting" (here: two estimates, the default share)."""
    process, url = start_app(tmp_path, tmp_path / "server.log")
    try:
        config = httpx.get(url + "config", timeout=30).json()
        hint = next(c["id"] for c in config["components"] if "jp-estimate" in str(c.get("props", {}).get("value")))
        estimate = next(d for d in config["dependencies"] if d["outputs"][:1] == [hint])  # (line, brief)
        train = next(d for d in config["dependencies"] if d.get("api_name") == "train")
        slow = {"dataset": "digits", "arch": "lenet", "penalty": 0.01, "method": "exact", "num_projections": 1,
                "target": "logits", "steps": 300, "batch_size": 32, "device": "cpu", "robustness": True,
                "num_classes": 100}  # duration.TIMED_FIELDS: a probe of seconds, taken twice (the first)

        def join(dependency, values):
            body = json.dumps({"data": values, "fn_index": dependency["id"], "session_hash": "hurried",
                               "trigger_id": dependency["targets"][0][0], "event_data": None})
            return httpx.post(url + "gradio_api/queue/join", content=body,
                              headers={"content-type": "application/json"}, timeout=30)

        for _ in range(2):  # a change of settings, and another while the first still measures
            assert join(estimate, list(slow.values())).status_code == 200
        trained = join(train, [None, *TRAIN.values()])
        assert trained.status_code == 200, trained.text[:300]
        third = join(estimate, list(slow.values()))  # measurements have their own share
        assert third.status_code == 429 and "measuring" in detail(third)
        with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": "hurried"},
                          timeout=300) as stream:
            lines = stream.iter_lines()
            done = []
            while len(done) < 3:
                line = until(lines, lambda line: "process_completed" in line, 240)
                done.append(json.loads(line.split("data:", 1)[1]))
        assert all(d.get("success") for d in done), [str(d)[:300] for d in done]
        assert any("Finished 20 steps" in str(d) for d in done), [str(d)[:300] for d in done]
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "server.log").read_text()
