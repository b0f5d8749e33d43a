"""The import paths earlier READMEs showed still work for one release, and say where things went."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(("old", "new", "names"), [
    ("demo.config", "demo.engine.config", ("RunConfig", "ConfigError", "MAX_STEPS")),
    ("demo.train", "demo.engine.train", ("build_model", "train", "resolve_device")),
])
def test_an_old_path_reexports_the_same_objects_with_a_deprecation_warning(old, new, names):
    sys.modules.pop(old, None)  # the warning is given on import: import it afresh
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    moved = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(moved, name)
