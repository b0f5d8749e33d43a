"""Imports point one way: each folder is one layer and imports only the layers below it.

    app.py -> demo.app -> demo.cli -> demo.budget -> demo.engine -> demo.evaluation -> models, jacobian_penalty

An AST scan of every module (module-level and function-level imports alike) against that order:
the library imports torch and the standard library only; models imports torch, torchvision and
itself; the engine, evaluation and budget never import gradio or the app; nothing outside
benchmarks/ imports benchmarks; and the graph of demo's modules has no cycle. The checker is
also run on a small tree with one forbidden import, so the test is seen to fail.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# Layers from the top down: a module may import its own layer and any layer further down.
ORDER = ("app", "demo.app", "demo.cli", "demo.budget", "demo.engine", "demo.evaluation", "models",
         "jacobian_penalty")
# Third-party packages each bottom layer may use; the layers above may use any installed one,
# except that only the app imports gradio.
ALLOWED_EXTERNAL = {
    "jacobian_penalty": {"torch"},
    "models": {"torch", "torchvision"},
}
NO_GRADIO = ("demo.cli", "demo.budget", "demo.engine", "demo.evaluation", "models", "jacobian_penalty")
SHARED_TOP = {"demo"}  # demo/__init__.py and demo/__main__.py: entry points, no layer of their own
# Deprecated re-exports of old paths: each sits in the layer of what it re-exports.
SHIMS = {"demo.config": "demo.engine", "demo.train": "demo.engine"}
VIEWS = "demo.app.views"  # one module per tab: a tab never imports another tab


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    if module in SHIMS:
        return SHIMS[module]
    for layer in ORDER:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                # A package's __init__ is its own package; a module's package is its parent.
                keep = len(module.split(".")) - node.level + (path.name == "__init__.py")
                package = module.split(".")[:keep]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            # `from demo.app import views` names a module too: count the submodule.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def violations(root: Path, files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        module = module_name(path, root)
        here = layer_of(module)
        rel = path.relative_to(root)
        reported = set()  # one problem per import statement (`from a import b` names a and a.b)
        for line, target in imports(path, module):
            if line in reported:
                continue
            before = len(problems)
            top = target.split(".")[0]
            if top == "benchmarks" and not module.startswith("benchmarks"):
                problems.append(f"{rel}:{line} imports {target}: nothing imports benchmarks/")
                reported.add(line)
                continue
            if here is None or module in SHARED_TOP or top in STDLIB:
                continue
            there = layer_of(target)
            if there is None:  # a third-party package
                if here in ALLOWED_EXTERNAL and top not in ALLOWED_EXTERNAL[here]:
                    problems.append(f"{rel}:{line} imports {target}: {here} uses only "
                                    f"{', '.join(sorted(ALLOWED_EXTERNAL[here]))} and the standard library")
                elif top == "gradio" and here in NO_GRADIO:
                    problems.append(f"{rel}:{line} imports gradio: only demo.app does")
                continue
            if top == "demo" and target == "demo":
                continue  # `from demo import x` is resolved through the submodule entry
            if ORDER.index(there) < ORDER.index(here):
                problems.append(f"{rel}:{line} imports {target}: {here} is below {there}")
            elif (module.startswith(VIEWS + ".") and target.startswith(VIEWS + ".")
                  and target.split(".")[3] != module.split(".")[3]):
                problems.append(f"{rel}:{line} imports {target}: a tab never imports another tab")
            if len(problems) > before:
                reported.add(line)
    return problems


def cycles(root: Path, files: list[Path]) -> list[list[str]]:
    names = {module_name(p, root): p for p in files}
    graph = {m: sorted({t for _, t in imports(p, m) if t in names and t != m}) for m, p in names.items()}
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    return found


def project_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in ("demo", "models", "jacobian_penalty", "tests"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [p for p in files if ".venv" not in p.parts]


def test_imports_point_down_the_layers():
    assert violations(ROOT, project_files()) == []


def test_demo_has_no_import_cycle():
    files = [p for p in project_files() if p.relative_to(ROOT).parts[0] == "demo"]
    # Every import counts, function-level ones too: a cycle through module-level imports breaks
    # importing, and one through function-level imports tangles two modules into one idea.
    assert cycles(ROOT, files) == []


def test_views_hold_only_tabs():
    views = ROOT / "demo" / "app" / "views"
    for path in views.glob("*.py"):
        if path.name == "__init__.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "gr.Tab(" in text or "def layout_tab(" in text, f"{path.name} in views/ is not a tab"


@pytest.mark.parametrize(("where", "line", "words"), [
    ("demo/engine/train.py", "import gradio as gr", "only demo.app"),
    ("demo/engine/train.py", "from demo.app import plots", "below demo.app"),
    ("demo/evaluation/robustness.py", "from demo.engine import train", "below demo.engine"),
    ("jacobian_penalty/penalty.py", "import numpy", "uses only torch"),
    ("jacobian_penalty/penalty.py", "from demo.engine import config", "below demo.engine"),
    ("models/mlp.py", "import pandas", "uses only torch, torchvision"),
    ("demo/cli/main.py", "from benchmarks import report", "nothing imports benchmarks"),
    ("demo/budget/memory.py", "from demo.cli import main", "below demo.cli"),
    ("demo/config.py", "from demo.app import ui", "below demo.app"),
    ("demo/app/views/sweep.py", "from demo.app.views import training", "never imports another tab"),
    ("demo/app/views/sweep.py", "from demo.app.views.training import run_stream", "never imports another tab"),
])
def test_a_forbidden_import_is_reported(tmp_path, where, line, words):
    target = tmp_path / where
    target.parent.mkdir(parents=True)
    target.write_text(f"from __future__ import annotations\nimport torch\n{line}\n")
    [problem] = violations(tmp_path, [target])
    assert problem.startswith(f"{where}:3 ") and words in problem


def test_a_cycle_is_reported(tmp_path):
    (tmp_path / "demo" / "engine").mkdir(parents=True)
    (tmp_path / "demo" / "engine" / "a.py").write_text("from demo.engine import b\n")
    (tmp_path / "demo" / "engine" / "b.py").write_text("import demo.engine.a\n")
    files = sorted((tmp_path / "demo").rglob("*.py"))
    assert cycles(tmp_path, files)
