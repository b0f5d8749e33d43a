"""`pip install .` gives the library alone, and the README's snippet runs from outside the repository.

The wheel is built offline with the test environment's setuptools, installed with --no-deps into a
folder of its own, and imported from a temporary working directory with that folder alone added
to the path (torch comes from the environment): a hidden import of demo/ or models/ would fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What the README's snippet needs around it: a model, an optimizer and a loader.
PRELUDE = """
import torch
from torch import nn
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
optimizer = torch.optim.Adam(model.parameters())
loader = [(torch.rand(16, 1, 8, 8), torch.randint(10, (16,))) for _ in range(3)]
"""


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The penalty in your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` builds, built from a copy of what it needs, so the checkout stays clean
    (an in-tree build leaves build/ and *.egg-info behind)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copytree(ROOT / "jacobian_penalty", source / "jacobian_penalty",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (source / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "library.md", source / "docs")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = out.glob("jacobian_penalty-*.whl")
    return built


def test_the_wheel_holds_the_library_alone_with_torch_its_only_dependency(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"jacobian_penalty"}
    assert re.findall(r"^Requires-Dist: (.*)$", metadata, re.M) == ["torch>=2.3"]


def test_the_readme_snippet_runs_from_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    script = tmp_path / "snippet.py"
    script.write_text(PRELUDE + readme_snippet() + "\nprint('term', float(term))\n"
                      "import jacobian_penalty\nprint(jacobian_penalty.__file__)\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(target)!r}); exec(open({str(script)!r}).read())"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and "term" in result.stdout
