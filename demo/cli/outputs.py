"""The CLI's output files: checked before a run starts, written atomically after it ends.

A run can take minutes, so a path that cannot be written is refused before training, in a plain
sentence (a folder, a system filesystem, a name too long, a symlink loop, an unknown ~user), and
a write that fails afterwards (a full disk, a file size limit, a vanished folder) must neither
leave a truncated file nor cost the other outputs: each file goes to a temporary name in the same
folder and is renamed into place (atomic on POSIX), and the caller reports which file failed.
The temporary name is never longer than the folder allows (its part taken from the file name is
cut to fit, in bytes), and a new file gets the mode any program would give it (0666 less the
umask; an existing file keeps its own), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

# Kernel filesystems: writing there either fails after the run or does something other than
# saving a file (/dev/full, /proc/sys/...).
_SPECIAL_ROOTS = (Path("/dev"), Path("/proc"), Path("/sys"))
TEMP_RANDOM = 8  # hex digits that make a temporary name unique
TEMP_SUFFIX = ".tmp"


class PathProblem(ValueError):
    """A path that cannot name an output file; the message is one sentence for the person who gave it."""


def problem(path: Path | None) -> str | None:
    """Why `path` cannot take an output file, in plain words, or None if it can."""
    if path is None:
        return None
    try:
        resolved = resolve(path)
    except PathProblem as exc:
        return str(exc)
    if any(resolved == root or root in resolved.parents for root in _SPECIAL_ROOTS):
        return f"cannot write {path}: it is on a system filesystem (/dev, /proc, /sys); give a file in a normal folder."
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}."
    limit = _name_max(resolved.parent)
    length = len(resolved.name.encode("utf-8", "surrogateescape"))
    if length > limit:
        return f"cannot write {path}: the file name is {length} bytes long; the limit here is {limit}."
    temporary = len(temporary_name(resolved.name, limit).encode("utf-8", "surrogateescape"))
    if temporary > limit:  # only when the limit is shorter than a temporary name's fixed part
        return f"cannot write {path}: this folder's names are limited to {limit} bytes, too short for a temporary file."
    if resolved.exists() and not resolved.is_file():
        kind = "a folder; give a file name" if resolved.is_dir() else "not a regular file"
        return f"cannot write {path}: it is {kind}."
    if not os.access(resolved.parent, os.W_OK):
        return f"cannot write {path}: its folder is not writable."
    return None


def resolve(path: Path) -> Path:
    """path with ~ expanded and every link followed; PathProblem in plain words when it cannot be."""
    try:
        expanded = path.expanduser()
    except RuntimeError:
        user = re.match(r"~([^/]*)", str(path))
        who = user.group(1) if user and user.group(1) else "the current user"
        raise PathProblem(f"cannot write {path}: there is no home folder for {who} (the ~ at its start).") from None
    try:
        return expanded.resolve()
    except RuntimeError:
        raise PathProblem(f"cannot write {path}: its symbolic links go round in a loop.") from None
    except OSError as exc:
        raise PathProblem(f"cannot write {path}: {exc.strerror or exc}.") from None


def clash(*paths: Path | None, names: tuple[str, ...] = ("--json", "--weights")) -> str | None:
    """A plain-words refusal when two outputs name the same file."""
    named = [(p, n) for p, n in zip(paths, names, strict=False) if p is not None]
    try:
        resolved = [resolve(p) for p, _ in named]
    except PathProblem as exc:
        return str(exc)
    for i, a in enumerate(resolved):
        for j in range(i):
            if a == resolved[j]:
                return f"{named[j][1]} and {named[i][1]} name the same file ({named[i][0]}); give each its own."
    return None


def temporary_name(name: str, limit: int) -> str:
    """`.NAME.RANDOM.tmp`, with NAME cut (on a character boundary) so the whole fits in `limit` bytes."""
    room = max(0, limit - 2 - TEMP_RANDOM - len(TEMP_SUFFIX))
    short = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f".{short}.{secrets.token_hex(TEMP_RANDOM // 2)}{TEMP_SUFFIX}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path via a temporary file and a rename: the old file or the whole new one."""
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    tmp = path.parent / temporary_name(path.name, _name_max(path.parent))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(path: Path) -> int:
    """The existing file's permissions, or those a new file gets: 0666 less the umask."""
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o7777
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (Linux)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # the CLI is one thread: setting it back at once is safe there
    os.umask(mask)
    return mask


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255
