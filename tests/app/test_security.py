"""Security and isolation of the app.

- No module-level mutable state in demo/, models/ and app.py (an ast scan), and nothing is ever
  unpickled (no torch.load without weights_only=True, no pickle, no allow_pickle).
- No user-controlled file paths: every input is a name from a fixed list or a number; no
  component takes an upload; the data folder comes from the environment only.
- Downloads: a session gets the files the app wrote for it and nothing else; the file route
  refuses arbitrary paths, the sessions' own folders, the source and loopback URLs; the
  download endpoint refuses other sessions' runs and path-like run names.
- launch(): no share link, allowed_paths not widened, uploads refused beyond a small size.
- Sessions: two sessions never see each other's runs; an abandoned session's runs and folder are
  dropped after its time to live (gr.State time_to_live + delete_callback).
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
from apphelpers import served
from gradio_client import Client
from gradio_client.exceptions import AppError

from demo.app import session as sessions
from demo.app import ui
from demo.app.limits import Limits
from demo.app.ui import build_demo
from demo.engine.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SHORT = {"steps": 30, "robustness": False}
WAIT_S = 120

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


# ---------------------------------------------------------------------------------------------
# Static checks of our own code

SCANNED = sorted([*ROOT.glob("demo/**/*.py"), *ROOT.glob("models/**/*.py"), *ROOT.glob("jacobian_penalty/**/*.py"),
                  ROOT / "app.py"])
# Calls whose result is immutable (or a read-only view), fine as module-level constants.
IMMUTABLE_CALLS = {
    "MappingProxyType", "types.MappingProxyType", "tuple", "frozenset", "str", "int", "float", "bytes", "bool",
    "Path", "pathlib.Path", "TypeVar", "typing.TypeVar", "re.compile", "namedtuple", "collections.namedtuple",
    "object", "frozen",
}
# (file, name): module-level objects that are not per-user state, with the reason.
ALLOWED = {
    ("app.py", "demo"): "the Blocks itself: Spaces and gradio's reload mode look for a module-level `demo`",
}
MUTABLE_NODES = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)


def _module_level(body):
    """Statements that run at import: the module body and the bodies of its if/try/with blocks."""
    for node in body:
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            yield from _module_level(node.body)
            yield from _module_level(getattr(node, "orelse", []))
            yield from _module_level(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)
        else:
            yield node


def _targets(node) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names = []
    for target in targets:
        names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)] or [ast.unparse(target)]
    return names


def _frozen_classes() -> set[str]:
    """Our classes whose instances cannot change: frozen dataclasses and NamedTuples."""
    names = set()
    for path in SCANNED:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                bases = [ast.unparse(b) for b in node.bases]
                if any("frozen=True" in d for d in decorators) or "NamedTuple" in bases:
                    names.add(node.name)
    return names


FROZEN_CLASSES = _frozen_classes()


def _mutable(value: ast.expr) -> bool:
    """A value that can be changed in place: a list/dict/set display or comprehension, or a call
    to anything but a known immutable constructor (or one of our frozen classes, given immutable
    arguments). A MappingProxyType over a dict literal is fine: the dict is reachable only
    through the read-only view."""
    if isinstance(value, MUTABLE_NODES):
        return True
    if isinstance(value, ast.Call):
        name = ast.unparse(value.func)
        if name in IMMUTABLE_CALLS:
            return False
        arguments = [*value.args, *(k.value for k in value.keywords)]
        return name.split(".")[-1] not in FROZEN_CLASSES or any(_mutable(a) for a in arguments)
    if isinstance(value, ast.Tuple):
        return any(_mutable(element) for element in value.elts)
    return False


def module_level_state(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    found = []
    for node in _module_level(tree.body):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            names = [n for n in _targets(node) if n != "__all__" and (relative, n) not in ALLOWED]
            if names and (isinstance(node, ast.AugAssign) or _mutable(node.value)):
                found.append(f"{relative}:{node.lineno}: {ast.unparse(node)[:100]}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.append(f"{relative}:{node.lineno}: global {', '.join(node.names)} (module state set in a function)")
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("lru_cache", "cache"):
            found.append(f"{relative}:{node.lineno}: a module-level cache shared by every user")
        if isinstance(node, ast.Name) and node.id in ("lru_cache", "cache") and isinstance(node.ctx, ast.Load):
            found.append(f"{relative}:{node.lineno}: a module-level cache shared by every user")
    return found


def test_the_scan_finds_module_level_state(tmp_path):
    """The scanner itself can fail: each of these is caught, and constants are not."""
    sample = tmp_path / "sample.py"
    source = (
        "from types import MappingProxyType\n"
        "A = []\nB = {'x': 1}\nC: set = set()\nD = dict(a=1)\nE = [i for i in range(3)]\nF = ([],)\n"
        "G = Registry()\nif True:\n    H = {}\n__all__ = ['ok']\nK = (1, 2)\nL = MappingProxyType({'a': 1})\n"
        "M = frozenset({1})\nN = 'text'\ndef f():\n    global K\n"
    )
    sample.write_text(source)
    found = module_level_state(sample)
    flagged = {line.split(": ", 1)[1].split(" ")[0] for line in found}
    assert flagged == {"A", "B", "C:", "D", "E", "F", "G", "H", "global"}, found


def test_no_module_level_mutable_state():
    found = [line for path in SCANNED for line in module_level_state(path)]
    assert not found, "module-level mutable state (shared by every visitor):\n" + "\n".join(found)


UNSAFE_LOADS = re.compile(r"\bpickle\.loads?\(|\bcloudpickle\.|\bjoblib\.load\(|\bdill\.|allow_pickle\s*=\s*True")


def test_nothing_is_ever_unpickled():
    """No torch.load without weights_only=True, no pickle: weights travel as safetensors only."""
    found = []
    for path in [*SCANNED, *ROOT.glob("benchmarks/*.py")]:
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load"):
                safe = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
                if not safe:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
        found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in UNSAFE_LOADS.finditer(source)]
    assert not found, found


FILE_COMPONENTS = {"File", "Files", "UploadButton", "Image", "ImageEditor", "Audio", "Video", "Model3D", "Gallery",
                   "ImageSlider", "MultimodalTextbox", "Sketchpad", "Paint", "DownloadButton", "Dataset"}


def test_no_input_takes_a_file_or_a_path():
    """Every input of every event is a number, a name from a fixed list or the session: there
    is no upload (so no weights upload to unpickle) and no path a visitor could choose."""
    demo = build_demo(Limits())
    inputs = {type(block).__name__ for fn in demo.fns.values() for block in fn.inputs}
    assert not inputs & FILE_COMPONENTS, inputs
    # BrowserState carries only the visitor's token, drawn by the server (demo.app.visitors).
    allowed = {"State", "BrowserState", "Number", "Slider", "Dropdown", "Radio", "Checkbox", "CheckboxGroup", "Textbox"}
    assert inputs <= allowed, inputs
    # The data folder comes from the environment only: no run parameter is a path.
    assert not {f for f in RunConfig.__dataclass_fields__ if re.search("path|dir|root|file|folder", f)}
    # The one free-text input is the Sweep tab's list of strengths, which becomes numbers or a refusal.
    # The other is the copied link, read back after "Copy link" only as a URL's query of setting names.
    texts = {block.label for fn in demo.fns.values() for block in fn.inputs if type(block).__name__ == "Textbox"}
    assert texts <= {"Strengths (λ; ε for adversarial training)", "Link to these settings"}, \
        "a free-text input: is it ever used as a path?"
    from demo.app.visitors import PageHandlers, Visitors

    visitors = Visitors(ttl=60.0, capacity=10, on_drop=lambda session: None)
    page = PageHandlers(visitors, ("dataset", "seed"), lambda request: [])
    browser = {"visitor": visitors.restore(None)[0]}
    for hostile in ("../../etc/passwd", "/tmp?dataset=x&evil=1", "file:///etc/passwd?seed=1", 7, None, "x" * 5000):
        page.save_link(browser, hostile)
    _, _, controls = visitors.restore(browser)
    assert set(controls.get("_link", {})) <= {"dataset", "seed"}  # only setting names, as text, are kept
    from demo.app.views.sweep import parse_strengths

    assert parse_strengths("0, 0.01 1e-3") == [0.0, 0.01, 0.001]
    for hostile in ("../../etc/passwd", "/tmp", "0; rm -rf /", "~"):
        with pytest.raises(gr.Error):
            parse_strengths(hostile)


# ---------------------------------------------------------------------------------------------
# The launched app


@pytest.fixture(scope="module")
def server():
    with served(Limits(max_seconds=60.0, concurrency=2)) as app:
        yield app


@pytest.fixture(scope="module")
def owner(server):
    """A session with one finished run (#1)."""
    client = Client(server[1], verbose=False)
    client.predict(**SHORT, seed=7, api_name="/train")
    yield client
    client.close()


def raw_call(url: str, session_hash: str | None, api: str, *data) -> dict:
    """An endpoint called over plain HTTP for this session; the final SSE message as JSON."""
    with httpx.Client(base_url=url + "gradio_api", timeout=60) as http:
        answer = http.post(f"/call/{api}", json={"data": list(data), "session_hash": session_hash})
        assert answer.status_code == 200, answer.text
        stream = http.get(f"/call/{api}/{answer.json()['event_id']}").text
    event, payload = re.findall(r"event: (\w+)\ndata: (.*)\n", stream)[-1]
    return {"event": event, "data": json.loads(payload)}


def state_of(demo: gr.Blocks, client: Client) -> dict | None:
    """The session dict the server holds for this client (None once dropped)."""
    session_state = demo.state_holder.session_data.get(client.session_hash)
    values = list(session_state.state_data.values()) if session_state else []
    return values[0] if values else None


def fetch(url: str, path: str) -> httpx.Response:
    return httpx.get(f"{url}gradio_api/file={path}", timeout=30)


def test_a_session_downloads_its_own_files_and_the_file_route_refuses_everything_else(server, owner):
    demo, url = server
    answer = raw_call(url, owner.session_hash, "download", "")
    assert answer["event"] == "complete", answer
    json_file, weights_file = answer["data"]
    mine = fetch(url, json_file["path"])
    assert mine.status_code == 200 and json.loads(mine.text)["config"]["seed"] == 7  # the positive control
    assert fetch(url, weights_file["path"]).status_code == 200
    # gradio serves its cached copy from a folder named by a salted SHA-256 of the file's bytes:
    # a capability URL, which another session cannot guess (the record holds timings).
    assert re.fullmatch(r"[0-9a-f]{64}", Path(json_file["path"]).parent.name)

    folder = Path(state_of(demo, owner)["folder"])
    assert folder.name.startswith(sessions.FOLDER_PREFIX) and (folder / "run-1.json").exists()
    refused = [
        "/etc/passwd", "/proc/self/environ", str(ROOT / "app.py"), str(ROOT / "demo" / "ui.py"),
        str(folder / "run-1.json"), str(folder / "run-1.safetensors"), str(folder),
        str(Path(json_file["path"]).parent), str(Path(json_file["path"]).parent.parent),
        str(Path(json_file["path"]).parent) + "/../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd",
        "../../../../etc/passwd", "~/.bashrc", f"http://127.0.0.1:{url.rsplit(':', 1)[1]}",
        "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd",
    ]
    allowed = {path: fetch(url, path).status_code for path in refused}
    assert all(code in (403, 404) for code in allowed.values()), allowed


def test_another_session_cannot_reach_a_run_by_any_endpoint(server, owner):
    other = Client(server[1], verbose=False)
    try:
        assert other.predict(api_name="/runs")["data"] == []
        calls = [
            (("",), "/download"), (("1",), "/download"), (("#1",), "/download"),
            (("1", "", 0), "/jacobian"), ((["1"],), "/compare"), ((["1"],), "/robustness"),
            (("1", "fgsm", 0.1), "/perturbed"),
        ]
        for args, api in calls:
            try:
                result = other.predict(*args, api_name=api)
            except AppError as exc:  # refused: in plain words, about this session's runs
                assert "no run" in str(exc) and "Traceback" not in str(exc), (api, str(exc))
            else:  # or answered with nothing of the owner's: no run label, no file
                text = json.dumps(result, default=str)
                assert not re.search(r"#1\b|λ=|run-1", text), (api, text[:300])
        assert [row[0] for row in owner.predict(api_name="/runs")["data"]] == [1]
    finally:
        other.close()


@pytest.mark.parametrize("run", ["../../etc/passwd", "1/../../x", "/tmp", "0", "-1", "1e3", "#1; ls", str(10**30),
                                 "run-1.json", "~"])
def test_path_like_run_names_are_refused_in_plain_words(owner, run):
    with pytest.raises(AppError) as caught:
        owner.predict(run, api_name="/download")
    message = str(caught.value)
    assert "There is no run" in message and "Traceback" not in message


def test_launch_never_shares_and_never_widens_the_file_access(monkeypatch):
    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs))
    ui.launch(build_demo(Limits()), prevent_thread_lock=True)
    assert seen["share"] is False
    assert not seen.get("allowed_paths")
    assert seen["max_file_size"] == ui.MAX_UPLOAD, "uploads are unbounded: anyone can fill the disk"
    assert seen["state_session_capacity"] == Limits().max_sessions


def test_the_running_app_serves_no_extra_folders_and_refuses_uploads(server):
    demo, url = server
    from gradio.data_classes import _StaticFiles

    assert demo.allowed_paths == []
    # gradio registers its own icons as static files; nothing of ours is served that way.
    package = Path(gr.__file__).resolve().parent  # .venv may be a link
    assert all(Path(path).resolve().is_relative_to(package) for path in _StaticFiles.all_paths), _StaticFiles.all_paths
    assert demo.share is False
    big = httpx.post(f"{url}gradio_api/upload", files={"files": ("x.bin", b"\0" * 2**21)}, timeout=60)
    assert big.status_code == 403 and "no uploads" in big.text, (big.status_code, big.text[:200])


def test_gradio_keeps_records_of_at_most_max_sessions_sessions():
    """Every visitor (every API call without a session) leaves gradio a ~0.2 MB record of the
    page that time_to_live does not free; JP_MAX_SESSIONS bounds how many are kept."""
    with served(Limits(max_sessions=5)) as (demo, url):
        for _ in range(12):
            assert raw_call(url, None, "runs")["event"] == "complete"
        assert len(demo.state_holder.session_data) <= 5


def test_an_abandoned_session_is_dropped_with_its_folder_after_its_time_to_live():
    ttl = 2.0
    with served(Limits(session_ttl=ttl, max_seconds=60.0)) as (demo, url):
        client = Client(url, verbose=False)
        try:
            client.predict(**SHORT, api_name="/train")
            answer = raw_call(url, client.session_hash, "download", "")
            cached = [Path(f["path"]) for f in answer["data"]]
            assert all(fetch(url, str(path)).status_code == 200 for path in cached)
            session = state_of(demo, client)
            assert session and len(session["runs"]) == 1 and session["runs"][0]["weights"]
            folder = Path(session["folder"])
            assert (folder / "run-1.json").exists()
            del session
            deadline = time.monotonic() + ttl + 15
            def held():
                return state_of(demo, client) is not None or folder.exists() or any(p.exists() for p in cached)

            while held() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert state_of(demo, client) is None, "the session's runs (and weights) are still held"
            assert not folder.exists(), "delete_callback did not remove the session's folder"
            # gradio's cached copies (capability URLs) expire with the session too (delete_cache).
            assert not any(path.exists() for path in cached), cached
            assert all(fetch(url, str(path)).status_code in (403, 404) for path in cached)
            # A visitor who comes back later starts a fresh session; the app still works.
            assert client.predict(api_name="/runs")["data"] == []
        finally:
            client.close()
