"""The CLI's output files: checked before a run starts, written atomically after it ends.

A run can take minutes, so a path that cannot be written is refused before training, and a write
that fails afterwards (a full disk, a vanished folder) must neither leave a truncated file nor lose
the run silently: each file goes to a temporary name in the same folder and is renamed into place
(atomic on POSIX), and the caller reports the error with the run's summary.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# Kernel filesystems: writing there either fails after the run or does something other than
# saving a file (/dev/full, /proc/sys/...).
_SPECIAL_ROOTS = (Path("/dev"), Path("/proc"), Path("/sys"))


def problem(path: Path | None) -> str | None:
    """Why `path` cannot take an output file, in plain words, or None if it can."""
    if path is None:
        return None
    resolved = path.expanduser().resolve()
    if any(resolved == root or root in resolved.parents for root in _SPECIAL_ROOTS):
        return f"cannot write {path}: it is on a system filesystem (/dev, /proc, /sys); give a file in a normal folder."
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}."
    length, limit = len(resolved.name.encode()), _name_max(resolved.parent)
    if length > limit:
        return f"cannot write {path}: the file name is {length} bytes long; the limit here is {limit}."
    if resolved.exists() and not resolved.is_file():
        kind = "a folder; give a file name" if resolved.is_dir() else "not a regular file"
        return f"cannot write {path}: it is {kind}."
    if not os.access(resolved.parent, os.W_OK):
        return f"cannot write {path}: its folder is not writable."
    return None


def clash(*paths: Path | None) -> str | None:
    """A plain-words refusal when two outputs name the same file."""
    named = [p for p in paths if p is not None]
    resolved = [p.expanduser().resolve() for p in named]
    for i, a in enumerate(resolved):
        for j in range(i):
            if a == resolved[j]:
                return f"--json and --weights name the same file ({named[i]}); give each its own."
    return None


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path via a temporary file and a rename: the old file or the whole new one."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255
