"""The Hugging Face Space's configuration (README.md front matter) against the code it deploys.

A Space reads the YAML front matter of README.md: `sdk_version` pins gradio there (a gradio line
in requirements.txt does not override it), `app_file` is run, and requirements.txt is installed.
Each check here is one way a push could build a Space that does not start, or starts another app.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import gradio as gr
import huggingface_hub
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# Python versions Hugging Face Spaces build and the pinned torch has wheels for.
SPACE_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
SPACE_COLOURS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
MAX_SHORT_DESCRIPTION = 60
# torchvision 0.N pairs with torch 2.(N - 15): 0.15 <-> 2.0, ..., 0.29 <-> 2.14.
TORCHVISION_MINOR_OFFSET = 15


def front_matter(text: str) -> dict:
    match = re.match(r"\A---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match, "README.md must start with YAML front matter between two '---' lines"
    return yaml.safe_load(match.group(1))


def requirements(path: Path) -> dict[str, Requirement]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            pins[requirement.name.lower()] = requirement
    return pins


def pinned(requirement: Requirement) -> Version:
    [spec] = requirement.specifier
    assert spec.operator == "==", f"{requirement} must be pinned with =="
    return Version(spec.version)


@pytest.fixture(scope="module")
def config() -> dict:
    return front_matter((ROOT / "README.md").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pins() -> dict[str, Requirement]:
    return requirements(ROOT / "requirements.txt")


def test_front_matter_has_what_a_gradio_space_needs(config):
    assert config["sdk"] == "gradio"
    for key in ("title", "emoji", "sdk_version", "python_version", "app_file", "short_description"):
        assert isinstance(config.get(key), str) and config[key].strip(), f"{key} must be a non-empty string"
    assert len(config["short_description"]) <= MAX_SHORT_DESCRIPTION
    assert not config["emoji"].isascii()
    assert {config.get("colorFrom", "red"), config.get("colorTo", "red")} <= set(SPACE_COLOURS)
    hardware = {h.value for h in huggingface_hub.SpaceHardware}
    assert config["suggested_hardware"] in hardware, f"choose one of {sorted(hardware)}"


def test_sdk_version_is_the_gradio_the_app_is_built_and_tested_with(config, pins):
    sdk = Version(config["sdk_version"])
    assert sdk.major == Version(gr.__version__).major, f"the Space would run gradio {sdk}, tests use {gr.__version__}"
    assert sdk == pinned(pins["gradio"]), "sdk_version and requirements.txt's gradio pin differ"


def test_python_version_is_one_spaces_and_the_project_support(config):
    version = config["python_version"]  # a string: unquoted, YAML reads 3.10 as the float 3.1
    assert re.fullmatch(r"3\.\d+(\.\d+)?", version), f"python_version must look like '3.11', got {version!r}"
    assert ".".join(version.split(".")[:2]) in SPACE_PYTHONS
    requires = SpecifierSet(
        re.search(r'requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    )
    assert Version(version) in requires


def test_requirements_pin_a_matching_torch_torchvision_pair_and_the_space_packages(pins):
    torch, torchvision = pinned(pins["torch"]), pinned(pins["torchvision"])
    assert (torchvision.major, torchvision.minor) == (0, torch.minor + TORCHVISION_MINOR_OFFSET), (
        f"torch {torch} and torchvision {torchvision} are not a pair"
    )
    assert {"gradio", "spaces", "plotly"} <= set(pins)
    installed = Version(importlib.metadata.version("spaces"))
    assert installed in pins["spaces"].specifier, "the tests ran another spaces than the Space installs"


def test_app_file_defines_a_module_level_demo_without_launching(config):
    path = ROOT / config["app_file"]
    assert path.is_file(), f"app_file {config['app_file']} does not exist"
    spec = importlib.util.spec_from_file_location("space_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    try:
        spec.loader.exec_module(module)  # as a Space imports it: not as __main__
    finally:
        sys.path.remove(str(ROOT))
    demo = module.demo
    assert isinstance(demo, gr.Blocks)
    assert not demo.is_running, "importing app_file must not start a server"
    named = {dep.get("api_name") for dep in demo.config["dependencies"]}
    assert "train" in named
