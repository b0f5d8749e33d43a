"""Deprecated: moved to `demo.engine.config` (kept for one release as a re-export).

Earlier READMEs showed `from demo.config import ...` for RunConfig, ConfigError and the field limits; import them from
`demo.engine.config` instead. This module will be removed in the next release.
"""
import warnings

from demo.engine.config import *  # noqa: F403

warnings.warn("demo.config moved to demo.engine.config; the old path will be removed in the next release",
              DeprecationWarning, stacklevel=2)
