"""Deprecated: moved to `demo.engine.train` (kept for one release as a re-export).

Earlier READMEs showed `from demo.train import ...` for build_model, train and the events; import them from
`demo.engine.train` instead. This module will be removed in the next release.
"""
import warnings

from demo.engine.train import *  # noqa: F403

warnings.warn("demo.train moved to demo.engine.train; the old path will be removed in the next release",
              DeprecationWarning, stacklevel=2)
